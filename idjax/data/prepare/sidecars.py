"""The JSON-lines sidecars: face boxes annotated elsewhere, and captions.

boxes.jsonl, one line per annotated frame of a video:

    {"video": "shots/a.mp4", "frame": 12,
     "faces": [{"box": [y0, x0, y1, x1], "track": 3, "identity": 17}, ...]}

`video` is the path relative to --videos; `frame` counts decoded frames from
0; `box` is in fractions of the frame (as the synthetic world writes them).
`track` (optional) links the faces of one person within a shot, so no
tracking is needed; `identity` (optional) is a known label, used only to
report clustering purity, never to cluster. A video with lines in the
sidecar is not run through a detector; one without is.

captions.jsonl, one line per video (or per frame range of it):

    {"video": "shots/a.mp4", "caption": "a woman talking", "start": 0, "stop": 120}

A clip takes the caption of the first line of its video whose [start, stop)
holds the clip's first frame (no start/stop: the whole video).
"""

import json
import math

import numpy as np

from idjax.configlib import UsageError


def _lines(path: str, flag: str):
  try:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise UsageError(f"{flag} {path}, line {number}: not JSON ({e.msg}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("video"), str):
          raise UsageError(
              f"{flag} {path}, line {number}: expected an object with a " '"video" path.'
          )
        yield number, row
  except OSError as e:
    raise UsageError(f"{flag} {path} cannot be read ({e.strerror}).") from None


def _box(value, where) -> np.ndarray:
  try:
    box = np.array(value, np.float64)
  except (TypeError, ValueError):
    box = np.zeros(0)
  if box.shape != (4,) or not all(math.isfinite(v) for v in box):
    raise UsageError(f"{where}: a box must be 4 numbers [y0, x0, y1, x1], got {value!r}.")
  if not (box[2] > box[0] and box[3] > box[1] and box.min() >= -0.5 and box.max() <= 1.5):
    raise UsageError(
        f"{where}: box {value!r} is not (y0, x0, y1, x1) fractions of the frame "
        "with y1 > y0 and x1 > x0."
    )
  return box.astype(np.float32)


def read_boxes(path: str) -> dict[str, dict[int, list[dict]]]:
  """video -> frame -> [dict(box float32 [4], track int or None, identity int or None)]."""
  out: dict[str, dict[int, list[dict]]] = {}
  for number, row in _lines(path, "--boxes"):
    where = f"--boxes {path}, line {number}"
    frame = row.get("frame")
    if not isinstance(frame, int) or frame < 0:
      raise UsageError(f'{where}: "frame" must be an integer >= 0.')
    faces = row.get("faces", [])
    if not isinstance(faces, list):
      raise UsageError(f'{where}: "faces" must be a list.')
    parsed = []
    for face in faces:
      if not isinstance(face, dict):
        raise UsageError(f'{where}: each face must be an object with a "box".')
      track, identity = face.get("track"), face.get("identity")
      for name, value in (("track", track), ("identity", identity)):
        if value is not None and not isinstance(value, int):
          raise UsageError(f'{where}: "{name}" must be an integer.')
      parsed.append(dict(box=_box(face.get("box"), where), track=track, identity=identity))
    out.setdefault(row["video"], {}).setdefault(frame, []).extend(parsed)
  return out


def read_captions(path: str) -> dict[str, list[tuple[int, float, str]]]:
  """video -> [(start, stop, caption)] in file order."""
  out: dict[str, list] = {}
  for number, row in _lines(path, "--captions"):
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
      raise UsageError(
          f'--captions {path}, line {number}: "caption" must be a non-empty ' "string."
      )
    start, stop = row.get("start", 0), row.get("stop", math.inf)
    out.setdefault(row["video"], []).append((start, stop, caption.strip()))
  return out


def caption_for(captions, video: str, first_frame: int, template: str, count: int) -> str:
  """The sidecar's caption of a clip, else the template ({video}: file stem,
  {people}: "a person" / "two people" ...)."""
  for start, stop, caption in captions.get(video, ()):
    if start <= first_frame < stop:
      return caption
  numbers = (
      "a person",
      "two people",
      "three people",
      "four people",
      "five people",
      "six people",
      "seven people",
      "eight people",
  )
  stem = video.rsplit("/", 1)[-1].rsplit(".", 1)[0]
  return template.format(video=stem, people=numbers[min(count, 8) - 1])
