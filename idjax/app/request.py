"""A checked request -> sample.py's arguments -> the files sample.py writes.

The page does not sample by itself: it copies the uploads into the request's
folder, writes the command line that sample.py would get for the same inputs
(`sample_argv`), and runs it through idjax.sampling.cli (sample.py's code)
with the Generator the app loaded once. So the same inputs and seed give the
same clip, contact sheet and JSON as

  python sample.py <the command the page shows>

and nothing is written outside the request's folder.
"""

import dataclasses
import os
import re
import shlex
import shutil

from idjax.app import facesim
from idjax.app.validate import Checked
from idjax.sampling import cli


def character_name(index: int) -> str:
  return f"char{index + 1}"


def stage(checked: Checked, folder: str) -> list[list[str]]:
  """Copies each reference into folder/refs/ under a plain name (no commas,
  so sample.py's NAME=a,b syntax holds); returns the copies' paths."""
  refs = os.path.join(folder, "refs")
  os.makedirs(refs, exist_ok=True)
  staged = []
  for i, files in enumerate(checked.references):
    paths = []
    for k, path in enumerate(files):
      ext = os.path.splitext(str(path))[1].lower()
      ext = ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ""
      target = os.path.join(refs, f"{character_name(i)}_{k}{ext}")
      shutil.copyfile(path, target)
      paths.append(target)
    staged.append(paths)
  return staged


def sample_argv(checked: Checked, staged, workdir: str, out: str, progress: bool = True) -> list:
  """sample.py's arguments for the request (floats as repr: they read back exactly)."""
  argv = ["--workdir", workdir, "--prompt", checked.prompt, "--out", out]
  for i, paths in enumerate(staged):
    argv += ["--character", f"{character_name(i)}=" + ",".join(paths)]
  for i, boxes in enumerate(checked.boxes):
    spec = ":".join(",".join(repr(float(v)) for v in box) for box in boxes)
    argv += ["--box", f"{character_name(i)}={spec}"]
  argv += [
      "--seed",
      str(checked.seed),
      "--frames",
      str(checked.frames),
      "--steps",
      str(checked.steps),
      "--identity-strength",
      repr(checked.identity_strength),
      "--text-guidance",
      repr(checked.text_guidance),
      "--identity-guidance",
      repr(checked.identity_guidance),
  ]
  return argv + ([] if progress else ["--no-progress"])


@dataclasses.dataclass
class Result:
  folder: str
  video: str  # the MP4
  sheet: str  # the contact sheet PNG (references, then every frame)
  plot: str | None  # per-frame FaceSim PNG; None without an evaluation encoder
  json: str  # sample.py's JSON
  summary: dict  # its content
  command: str  # the sample.py command line that makes the same files

  def message(self) -> str:
    s = self.summary
    line = (
        f"Made {s['num_frames']} frames at {s['resolution'][0]}x{s['resolution'][1]} "
        f"(seed {s['seed']}) in {s['timings_s']['sampling_s']:.1f} s of sampling"
    )
    m = s["metrics"]
    if m:
      line += f"; FaceSim {m['face_sim']:.3f} (boxes: {m['box_source']})"
    return line + "."


def run(generator, workdir: str, checked: Checked, folder: str, progress: bool = True) -> Result:
  """Samples `checked` into `folder` through sample.py's code path.

  Raises configlib.UsageError (one sentence) for what only the model can
  refuse (e.g. frames that do not fit in memory).
  """
  staged = stage(checked, folder)
  out = os.path.join(folder, "clip.mp4")
  argv = sample_argv(checked, staged, workdir, out, progress)
  request = cli.prepare(cli.parse_args(argv))
  summary = cli.write_clip(generator, request)
  files = request.outputs
  plot = None
  if summary["metrics"]:
    plot = facesim.write(summary["metrics"], os.path.join(folder, "facesim.png"))
  command = shlex.join(["python", "sample.py", *argv])
  return Result(folder, files["mp4"], files["png"], plot, files["json"], summary, command)
