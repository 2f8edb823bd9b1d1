"""The screenshot of the web app in docs/app.md, taken in a headless browser.

  python scripts/app_screenshot.py --workdir runs/demo/video --out docs/app_screenshot.png

Starts `python -m idjax.app` on a free port, opens it in the system Chromium
through Playwright, picks held-out identity --index for character 1 (its
prompt fills the prompt box), generates with --seed and saves the whole page
once the clip plays. Needs `make install-app` and `apt-get install -y chromium`.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default=os.path.join(ROOT, "docs", "app_screenshot.png"))
  p.add_argument("--index", type=int, default=0, help="held-out identity number")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"))
  args = p.parse_args()
  if not args.browser:
    sys.exit("error: no Chromium found; apt-get install -y chromium, or pass --browser PATH.")
  from playwright.sync_api import sync_playwright  # the app extra's test tool

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/"
  server = subprocess.Popen(
      [sys.executable, "-m", "idjax.app", "--workdir", args.workdir, "--port", str(port)], cwd=ROOT
  )
  try:
    deadline = time.time() + 300
    while True:
      try:
        urllib.request.urlopen(url, timeout=5)
        break
      except OSError:
        if server.poll() is not None or time.time() > deadline:
          sys.exit("error: the app did not start (its output is above).")
        time.sleep(1)
    with sync_playwright() as pw:
      # --no-sandbox: Chromium's sandbox refuses to start as root (containers).
      browser = pw.chromium.launch(executable_path=args.browser, args=["--no-sandbox"])
      page = browser.new_page(viewport={"width": 1400, "height": 1000})
      page.set_default_timeout(300_000)
      page.goto(url)
      page.fill("#heldout-0 input", str(args.index))
      page.click("#pick-0")
      page.wait_for_function("document.querySelector('#info-0')?.innerText.includes('Held-out')")
      page.fill("#seed input", str(args.seed))
      page.click("#generate")
      page.wait_for_function("document.querySelector('#video video')?.duration > 0")
      page.wait_for_function("document.querySelector('#facesim img')?.naturalWidth > 0")
      page.screenshot(path=args.out, full_page=True)
      print(f"wrote {args.out}: {page.inner_text('#status').strip()}")
      browser.close()
  finally:
    server.terminate()
    server.wait(timeout=60)


if __name__ == "__main__":
  main()
