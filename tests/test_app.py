"""The web app without a browser: input checks, layout presets, held-out picks,
request folders, and the same files as sample.py for the same inputs."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import sample  # the entry point (the repository root is on pytest's pythonpath)
from idjax.app import facesim, folders, heldout, layouts, request, validate
from idjax.data import references as references_cli
from idjax.layout import validate_box
from idjax.sampling import cli

from helpers import make_workdir

LIMITS = validate.Limits(max_characters=2, max_references=2, max_frames=8)


def _png_header(width, height):
  """A PNG whose header claims width x height (and holds almost no pixel data)."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", header)
      + chunk(b"IDAT", zlib.compress(b"\0" * 64))
      + chunk(b"IEND", b"")
  )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("uploads")
  rng = np.random.default_rng(0)
  out = {}
  for name in ("a.png", "b.jpg"):
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name)
    out[name] = str(root / name)
  (root / "notes.txt").write_text("not an image")
  good = (root / "a.png").read_bytes()
  (root / "cut.png").write_bytes(good[: len(good) // 2])  # corrupt: truncated
  (root / "empty.png").write_bytes(b"")
  (root / "huge.png").write_bytes(_png_header(10_000, 10_000))  # 100 megapixels claimed
  with open(root / "big.png", "wb") as f:  # 11 MB on disk
    f.truncate(11 * 2**20)
  for name in ("notes.txt", "cut.png", "empty.png", "huge.png", "big.png"):
    out[name] = str(root / name)
  return out


def _one_sentence(message):
  text = str(message)
  assert "\n" not in text and "Traceback" not in text and text.endswith((".", ")")), text
  return text


# --- layouts -------------------------------------------------------------------


@pytest.mark.parametrize("preset", layouts.PRESETS)
@pytest.mark.parametrize("count", range(1, 9))
def test_presets_are_valid_boxes_that_read_back_exactly(preset, count):
  for i in range(count):
    boxes = layouts.preset_boxes(preset, i, count)
    assert boxes.shape == (2, 4)
    for box in boxes:
      validate_box(box)
      np.testing.assert_array_equal(validate.parse_box(layouts.box_text(box), "box"), box)


def test_presets_move_as_named():
  np.testing.assert_array_equal(
      layouts.preset_boxes("centre", 0, 1), [[0.25, 0.25, 0.75, 0.75]] * 2
  )
  start, end = layouts.preset_boxes("left-right", 0, 1)
  assert start[1] == 0.0 and end[3] == 1.0 and start[0] == end[0]  # slides right, same row
  for count in range(1, 9):
    rows = [layouts.preset_boxes("centre", i, count)[0] for i in range(count)]
    for a, b in zip(rows, rows[1:]):
      assert a[3] <= b[1]  # side by side, no overlap
    for i in range(count):
      start, end = layouts.preset_boxes("walking across", i, count)
      left, right = (start, end) if i % 2 == 0 else (end, start)
      assert left[1] == 0.0 and right[3] == pytest.approx(1.0)  # edge to edge
      assert start[0] == end[0]  # in its own lane
  with pytest.raises(ValueError):
    layouts.preset_boxes("spiral", 0, 1)


# --- input checks ----------------------------------------------------------------


def test_a_good_form_passes(files):
  chars = [
      validate.Character((files["a.png"], files["b.jpg"]), "centre"),
      validate.Character((files["a.png"],), validate.TYPED, "0.1, 0.1, 0.6, 0.6", ""),
  ]
  checked = validate.check_form("a person", chars, 0.8, 1.0, 2.5, 4, 3, 7, LIMITS)
  assert checked.references == [[files["a.png"], files["b.jpg"]], [files["a.png"]]]
  np.testing.assert_array_equal(checked.boxes[0], layouts.preset_boxes("centre", 0, 2))
  np.testing.assert_array_equal(checked.boxes[1], [[0.1, 0.1, 0.6, 0.6]] * 2)
  assert (checked.frames, checked.steps, checked.seed) == (4, 3, 7)
  assert checked.identity_guidance == 2.5


BAD_FORMS = {
    "empty prompt": (dict(prompt="   "), "prompt is empty"),
    "no prompt": (dict(prompt=None), "prompt is empty"),
    "not an image": (dict(refs=("notes.txt",)), "'notes.txt' is not an image"),
    "corrupt image": (dict(refs=("cut.png",)), "'cut.png' is not an image"),
    "empty file": (dict(refs=("empty.png",)), "'empty.png' is"),
    "too many pixels": (dict(refs=("huge.png",)), "'huge.png' has too many pixels"),
    "too many bytes": (dict(refs=("big.png",)), "'big.png' is 11.0 MB; the limit is 10 MB"),
    "too many references": (dict(refs=("a.png", "a.png", "a.png")), "has 3 reference images"),
    "no references": (dict(refs=()), "has no reference image"),
    "too many characters": (dict(count=3), "number of characters must be 1 to 2"),
    "box out of range": (dict(start="0, 0, 1.5, 0.5"), "must satisfy 0 <= y0 < y1 <= 1"),
    "box upside down": (dict(start="0.6, 0.1, 0.2, 0.5"), "must satisfy"),
    "box not numbers": (dict(start="centre please"), "must be four numbers"),
    "box three numbers": (dict(start="0.1, 0.1, 0.5"), "must be four numbers"),
    "end box out of range": (dict(end="-0.1, 0, 0.5, 0.5"), "end box"),
    "unknown trajectory": (dict(trajectory="spiral"), "trajectory must be one of"),
    "strength above 1": (dict(strength=1.5), "Identity strength must be a number from 0 to 1"),
    "guidance not finite": (dict(text_guidance=float("nan")), "Text guidance"),
    "zero frames": (dict(frames=0), "Frames must be a whole number from 1 to 8"),
    "too many frames": (dict(frames=9), "Frames must be"),
    "fractional steps": (dict(steps=2.5), "Steps must be a whole number"),
    "negative seed": (dict(seed=-1), "Seed must be a whole number from 0 to 4294967295"),
    "seed beyond 32 bits": (dict(seed=2**40), "Seed must be"),
    "empty seed": (dict(seed=None), "Seed is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_FORMS))
def test_bad_input_gives_one_sentence(files, case):
  changes, expected = BAD_FORMS[case]
  form = dict(
      prompt="a person",
      refs=("a.png",),
      count=1,
      trajectory=validate.TYPED,
      start="0.2, 0.2, 0.7, 0.7",
      end="",
      strength=0.8,
      text_guidance=1.0,
      frames=2,
      steps=1,
      seed=0,
  )
  form.update(changes)
  char = validate.Character(
      tuple(files[r] for r in form["refs"]), form["trajectory"], form["start"], form["end"]
  )
  with pytest.raises(validate.InputError) as e:
    validate.check_form(
        form["prompt"],
        [char] * form["count"],
        form["strength"],
        form["text_guidance"],
        1.0,
        form["frames"],
        form["steps"],
        form["seed"],
        LIMITS,
    )
  assert expected in _one_sentence(e.value)
  assert os.path.dirname(files["a.png"]) not in str(e.value)  # names, not server paths


def test_limits_follow_the_model():
  limits = validate.Limits.for_model(max_characters=12, num_references=3, default_frames=8)
  assert (limits.max_characters, limits.max_references, limits.max_frames) == (8, 3, 32)
  assert validate.Limits.for_model(1, 9, 2).max_references == 5


# --- held-out identities, folders, the plot ---------------------------------------------


def test_heldout_pick_is_what_the_references_cli_writes(tmp_path):
  paths, prompt, identity = heldout.pick(4, 2, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["heldout_4_ref_0.png", "heldout_4_ref_1.png"]
  references_cli.main(
      [
          "--out",
          str(tmp_path / "cli"),
          "--index",
          "4",
          "--count",
          "2",
          "--frames",
          "1",
          "--no-progress",
      ]
  )
  for k, path in enumerate(paths):
    np.testing.assert_array_equal(
        np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "cli" / f"ref_{k}.png"))
    )
  assert prompt == (tmp_path / "cli" / "prompt.txt").read_text().strip()
  assert identity >= 0
  with pytest.raises(validate.InputError):
    heldout.pick(-1, 2, str(tmp_path))


def test_request_folders_keep_the_newest(tmp_path):
  made = folders.RequestFolders(str(tmp_path / "root"), keep=2)
  a, b, c = (made.new() for _ in range(3))
  assert not os.path.exists(a) and os.path.isdir(b) and os.path.isdir(c)
  assert os.path.dirname(c) == made.root


def test_facesim_plot_has_a_panel_per_character(tmp_path):
  metrics = dict(
      box_source="layout",
      characters={
          "char1": dict(face_sim=0.5, face_sim_per_frame=[0.4, 0.6]),
          "char2": dict(face_sim=0.1, face_sim_per_frame=[0.0, 0.2]),
      },
  )
  assert len(facesim.figure(metrics).axes) == 2
  path = facesim.write(metrics, str(tmp_path / "f.png"))
  assert Image.open(path).size == (2 * facesim.PANEL[0], facesim.PANEL[1])


# --- the same files as sample.py --------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  video = make_workdir(str(tmp_path_factory.mktemp("app") / "runs"))
  return video, cli.load_generator(video)


def _tree(folder):
  out = {}
  for base, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(base, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out


# Two samplings (about 25 s on 2 cores): in the slow set, which CI runs.
@pytest.mark.slow
def test_same_files_as_sample_py(model, files, tmp_path):
  video, generator = model
  chars = [
      validate.Character(
          (files["a.png"], files["b.jpg"]),
          validate.TYPED,
          "0.1, 0.1, 0.6, 0.6",
          "0.3, 0.3, 0.9, 0.9",
      )
  ]
  checked = validate.check_form(
      "a person with pale skin", chars, 0.7, 1.0, 1.5, 2, 2, 11, validate.Limits.for_model(1, 2, 2)
  )
  runs = os.path.dirname(video)
  before = _tree(runs)
  folder = folders.RequestFolders(str(tmp_path / "app")).new()
  result = request.run(generator, video, checked, folder, progress=False)
  assert _tree(runs) == before  # the workdir is untouched
  written = [os.path.join(b, n) for b, _, ns in os.walk(tmp_path) for n in ns]
  assert written and all(p.startswith(folder + os.sep) for p in written)

  out = str(tmp_path / "cli" / "clip.mp4")
  sample.main(
      [
          "--workdir",
          video,
          "--prompt",
          "a person with pale skin",
          "--out",
          out,
          "--character",
          f"char1={files['a.png']},{files['b.jpg']}",
          "--box",
          "char1=0.1,0.1,0.6,0.6:0.3,0.3,0.9,0.9",
          "--seed",
          "11",
          "--frames",
          "2",
          "--steps",
          "2",
          "--identity-strength",
          "0.7",
          "--identity-guidance",
          "1.5",
          "--text-guidance",
          "1",
          "--no-progress",
      ]
  )
  theirs = sample.output_paths(out)
  for ext, path in (
      ("mp4", result.video),
      ("gif", result.summary["files"]["gif"]),
      ("png", result.sheet),
  ):
    assert open(path, "rb").read() == open(theirs[ext], "rb").read(), ext
  ours, cli_json = json.load(open(result.json)), json.load(open(theirs["json"]))
  assert ours == json.loads(json.dumps(result.summary))
  for summary in (ours, cli_json):
    for key in ("files", "timings_s", "characters"):
      summary.pop(key)
    for key in ("out", "character", "no_progress", "box"):
      summary["arguments"].pop(key)
  assert ours == cli_json
  assert cli_json["metrics"]["box_source"] == "layout"
  assert os.path.isfile(result.plot) and result.plot.startswith(folder)
  assert "python sample.py" in result.command and "--seed 11" in result.command
  assert result.message().startswith("Made 2 frames") and "FaceSim" in result.message()


def test_what_only_the_model_refuses_is_a_usage_error(model, files, tmp_path):
  video, generator = model
  checked = validate.check_form(
      "a person",
      [validate.Character((files["a.png"],), "centre")],
      0.8,
      1.0,
      1.0,
      2,
      1,
      0,
      validate.Limits(max_characters=1, max_references=5, max_frames=8),
  )
  checked = validate.Checked(**{**checked.__dict__, "references": [[files["a.png"]] * 3]})
  with pytest.raises(cli.configlib.UsageError) as e:  # the model takes 2
    request.run(generator, video, checked, str(tmp_path), progress=False)
  assert "expected 1 to 2" in _one_sentence(e.value)


def test_the_page_builds(model, tmp_path):
  gr = pytest.importorskip("gradio", reason="the app extra is not installed: make install-app")
  from idjax.app import ui

  video, generator = model
  page = ui.build(generator, video, folders.RequestFolders(str(tmp_path)))
  assert isinstance(page, gr.Blocks)
  ids = {getattr(b, "elem_id", None) for b in page.blocks.values()}
  assert {
      "prompt",
      "refs-0",
      "generate",
      "status",
      "video",
      "sheet",
      "facesim",
      "json",
      "seed",
      "randomise",
      "strength",
  } <= ids
