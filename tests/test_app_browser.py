"""The web app in a real, headless browser (slow suite).

Starts `python -m idjax.app` on a free port with a tiny random-weight
workdir and drives the system Chromium with Playwright (never a browser
Playwright downloads): upload a reference, generate, and check that the
video plays (non-zero duration), the FaceSim plot is shown, and the JSON
the page offers matches what sample.py writes for the same inputs; then a
text file given as a reference must show its one-sentence message while the
server keeps running.

Needs the app extra and a browser: `make install-app` and, on Debian or
Ubuntu, `apt-get install -y chromium`. Without them the test is skipped
with that sentence (`make test-app` prints it). `IDJAX_APP_SCREENSHOT=PATH`
also saves the finished page there.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import sample  # the entry point (the repository root is on pytest's pythonpath)

from helpers import ROOT, make_workdir

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HOW = (
    "install the app extra and a browser: make install-app, and apt-get install -y chromium "
    "(Debian/Ubuntu)"
)


def _browser_path():
  for name in BROWSERS:
    path = shutil.which(name)
    if path:
      return path
  return None


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  pytest.importorskip("gradio", reason=f"Gradio is missing; {HOW}.")
  pytest.importorskip("playwright.sync_api", reason=f"Playwright is missing; {HOW}.")
  browser = _browser_path()
  if browser is None:
    pytest.skip(f"No Chromium on PATH ({', '.join(BROWSERS)}); {HOW}.")
  root = tmp_path_factory.mktemp("browser")
  video = make_workdir(str(root / "runs"))
  url = f"http://127.0.0.1:{_free_port()}/"
  log = open(root / "server.log", "w")
  proc = subprocess.Popen(
      [sys.executable, "-m", "idjax.app", "--workdir", video, "--port", url.rsplit(":", 1)[1][:-1]],
      cwd=ROOT,
      stdout=log,
      stderr=subprocess.STDOUT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  deadline = time.time() + 240
  while True:
    try:
      urllib.request.urlopen(url, timeout=5)
      break
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        pytest.fail(f"the app did not start:\n{(root / 'server.log').read_text()[-3000:]}")
      time.sleep(1)
  yield dict(url=url, proc=proc, video=video, root=root, browser=browser)
  proc.terminate()
  proc.wait(timeout=60)
  log.close()


@pytest.fixture
def page(server):
  from playwright.sync_api import sync_playwright

  with sync_playwright() as p:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    browser = p.chromium.launch(executable_path=server["browser"], args=["--no-sandbox"])
    tab = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    tab.set_default_timeout(60_000)
    tab.goto(server["url"])
    tab.wait_for_selector("#generate")
    yield tab
    browser.close()


def _status(page, contains, timeout=300_000):
  page.wait_for_function(
      "text => (document.querySelector('#status')?.innerText || '').includes(text)",
      arg=contains,
      timeout=timeout,
  )
  return page.inner_text("#status").strip()


def test_upload_generate_play_and_download(server, page, tmp_path):
  ref = tmp_path / "face.png"
  Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(ref)
  page.set_input_files("#refs-0 input[type=file]", str(ref))
  page.wait_for_selector("#refs-0 >> text=face.png")
  page.fill("#prompt textarea", "a person with pale skin")
  page.fill("#seed input", "5")
  page.click("#generate")
  message = _status(page, "Made ")
  assert "FaceSim" in message, message
  # The clip plays: the browser decoded the MP4 and knows its length.
  page.wait_for_function("document.querySelector('#video video')?.duration > 0")
  assert page.eval_on_selector("#video video", "v => v.duration") > 0
  page.wait_for_function("document.querySelector('#facesim img')?.naturalWidth > 0")
  with page.expect_download() as download:
    page.click("#json a")
  shown = json.load(open(download.value.path()))

  # sample.py on the same inputs: the uploaded file, the page's box and numbers.
  a = shown["arguments"]
  out = str(tmp_path / "cli" / "clip.mp4")
  argv = [
      "--workdir",
      server["video"],
      "--prompt",
      a["prompt"],
      "--out",
      out,
      "--character",
      f"char1={ref}",
      "--seed",
      str(a["seed"]),
      "--frames",
      str(a["frames"]),
      "--steps",
      str(a["steps"]),
      "--identity-strength",
      repr(a["identity_strength"]),
      "--text-guidance",
      repr(a["text_guidance"]),
      "--identity-guidance",
      repr(a["identity_guidance"]),
      "--no-progress",
  ]
  for box in a["box"]:
    argv += ["--box", box]
  sample.main(argv)
  theirs = sample.output_paths(out)
  assert open(shown["files"]["png"], "rb").read() == open(theirs["png"], "rb").read()
  cli_json = json.load(open(theirs["json"]))
  for summary in (shown, cli_json):
    for key in ("files", "timings_s", "characters"):
      summary.pop(key)
    for key in ("out", "character", "no_progress"):
      summary["arguments"].pop(key)
  assert shown == cli_json
  assert shown["seed"] == 5 and shown["metrics"]["box_source"] == "layout"

  target = os.environ.get("IDJAX_APP_SCREENSHOT")
  for path in [str(tmp_path / "page.png")] + ([target] if target else []):
    page.screenshot(path=path, full_page=True)


def test_a_text_file_as_reference_shows_the_message(server, page, tmp_path):
  notes = tmp_path / "notes.txt"
  notes.write_text("this is not a face")
  page.set_input_files("#refs-0 input[type=file]", str(notes))
  page.wait_for_selector("#refs-0 >> text=notes.txt")
  page.fill("#prompt textarea", "a person")
  page.click("#generate")
  message = _status(page, "Error", timeout=60_000)
  assert message == (
      "Error: Character 1's reference 'notes.txt' is not an image that can be "
      "read (give a PNG, JPEG, GIF, BMP or WebP file)."
  ), message
  assert server["proc"].poll() is None
  assert urllib.request.urlopen(server["url"], timeout=10).status == 200
  # The page still works: an empty prompt is refused in words too.
  page.fill("#prompt textarea", "")
  page.click("#generate")
  assert "The prompt is empty" in _status(page, "prompt is empty", timeout=60_000)
