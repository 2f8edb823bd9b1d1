"""The web app: `python -m idjax.app --workdir runs/demo/video [--port 7860]`.

Loads the video model once, then serves the page on http://HOST:PORT (only
this machine by default: --host 0.0.0.0 serves the network). Files of
requests and Gradio's upload cache live in one temporary folder, removed on
exit. Needs the app extra: `pip install -e '.[app]'`. Nothing is fetched
from the network.
"""

import atexit
import os
import shutil
import signal
import sys
import tempfile

from idjax import configlib
from idjax.app import folders as folders_lib
from idjax.app import validate
from idjax.sampling import cli


def parse_args(argv):
  p = configlib.ArgumentParser(prog="python -m idjax.app", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="trained video workdir")
  p.add_argument("--port", type=int, default=7860)
  p.add_argument("--host", default="127.0.0.1", help="address to serve on")
  p.add_argument("--max-queue", type=int, default=16, help="requests that may wait at once")
  p.add_argument("--keep", type=int, default=32, help="finished requests whose files are kept")
  args = p.parse_args(argv)
  if not 1 <= args.port <= 65535:
    raise configlib.UsageError(f"--port must be in 1..65535, got {args.port}.")
  if args.max_queue < 1 or args.keep < 1:
    raise configlib.UsageError("--max-queue and --keep must be >= 1.")
  return args


@configlib.exit_on_usage_error
def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  generator = cli.load_generator(args.workdir)
  root = tempfile.mkdtemp(prefix="idjax-app-")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  # A plain `kill` exits through Python, so the folder above is removed.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  # Gradio reads these when it is imported: its upload cache goes under the
  # app's folder, and it sends no usage statistics.
  os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, "gradio")
  os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
  try:
    # Gradio is the optional `app` extra, imported only once it is needed.
    from idjax.app import ui
  except ImportError as e:
    raise configlib.UsageError(
        f"The app needs Gradio ({e}); install it with "
        "pip install -e '.[app]' (or make install-app)."
    ) from None
  page = ui.build(
      generator,
      args.workdir,
      folders_lib.RequestFolders(root, keep=args.keep),
      max_queue=args.max_queue,
  )
  print(
      f"idjax app: model {args.workdir}; one clip at a time, up to {args.max_queue} waiting; "
      f"request files under {root}",
      flush=True,
  )
  try:
    page.launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[root],
        max_file_size=validate.MAX_UPLOAD_BYTES,
        ssr_mode=False,
        theme=ui.THEME,
        css=ui.CSS,
        footer_links=[],
    )
  except OSError as e:
    raise configlib.UsageError(f"Cannot serve on {args.host}:{args.port} ({e}).") from None


if __name__ == "__main__":
  main()
