"""The evaluation's PNG plots (idjax.eval.plots): drawn from hand-made result
dicts (no model), they are PNGs of the promised size whose lines and bars are
the result's numbers; evaluate() records the per-frame FaceSim they read; the
CLI refuses an existing PNG before any evaluation."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from idjax.eval import __main__ as cli
from idjax.eval import benchmark, plots

from helpers import (
    RealClipGenerator,
    make_workdir,
    run_module,
    tiny_face_encoder,
    tiny_sample_config,
    write_random_probe,
)

STRENGTHS = (0.0, 0.4, 0.8, 1.0)
FRAMES = 6
# Matplotlib's tab:blue (curves, bars), tab:green (ceiling), tab:red (floor).
BLUE, GREEN, RED = (31, 119, 180), (44, 160, 44), (214, 39, 40)


def _result(gain=1.0):
  """A result as evaluate() returns it, the parts the plots read: a strength
  sweep, a 1-reference ablation, text only, ceiling and floor. `gain` scales
  the generated FaceSims, so two gains give two different results."""
  sims = {
      "generated (refs+text)": 0.49,
      "generated (text only)": -0.026,
      **{f"refs+text, strength {s:g}": 0.5 * s - 0.02 for s in STRENGTHS},
      "refs+text, 1 reference(s)": 0.44,
  }
  variants = {
      "generated (refs+text)": {},
      "generated (text only)": {"num_references": 0},
      **{f"refs+text, strength {s:g}": {"identity_strength": s} for s in STRENGTHS},
      "refs+text, 1 reference(s)": {"num_references": 1},
  }
  rows = {"ceiling": dict(face_sim=0.87, diversity=0.12)}
  for i, (name, sim) in enumerate(sims.items()):
    rows[name] = dict(face_sim=gain * sim, diversity=0.17 - 0.01 * i * gain)
  rows["floor"] = dict(face_sim=-0.04, diversity=0.13)
  ceiling, floor = rows["ceiling"]["face_sim"], rows["floor"]["face_sim"]
  t = np.arange(FRAMES)
  return dict(
      rows=rows,
      position={n: (rows[n]["face_sim"] - floor) / (ceiling - floor) for n in variants},
      face_sim_per_frame={
          n: (r["face_sim"] + 0.02 * np.cos(t + i) - 0.01 * gain * t).tolist()
          for i, (n, r) in enumerate(rows.items())
      },
      variants=variants,
      identities=list(range(8)),
  )


def _png(tmp_path, kind, result, name="plot"):
  """The plot `kind` of `result` written and read back: uint8 [H, W, 3]."""
  path = str(tmp_path / f"{name}_{kind}.png")
  assert plots.write(result, {kind: path}) == [path]
  with Image.open(path) as image:
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _near(image, colour, tol=12):
  """How many pixels are within `tol` of `colour` in every channel."""
  return int(np.sum(np.all(np.abs(image.astype(int) - colour) <= tol, axis=-1)))


@pytest.mark.parametrize("kind", list(plots.FIGURES))
def test_each_plot_is_a_png_of_its_size_showing_data_and_marks(tmp_path, kind):
  image = _png(tmp_path, kind, _result())
  width, height = plots.SIZES[kind]
  assert image.shape == (height, width, 3)
  # Blue curves or bars, green ceiling and red floor lines are drawn.
  assert _near(image, BLUE) > 200 and _near(image, GREEN) > 100 and _near(image, RED) > 100
  assert not list(tmp_path.glob(".*"))  # the atomic write leaves no temporary file


@pytest.mark.parametrize("kind", list(plots.FIGURES))
def test_images_follow_the_data(tmp_path, kind):
  first = _png(tmp_path, kind, _result(), "a")
  again = _png(tmp_path, kind, _result(), "b")
  other = _png(tmp_path, kind, _result(gain=0.5), "c")
  np.testing.assert_array_equal(first, again)  # deterministic
  assert np.mean(np.any(first != other, axis=-1)) > 0.002


def _ydata(line):
  return np.asarray(line.get_ydata(), float)


def _constant(line):
  y = _ydata(line)
  assert np.all(y == y[0])
  return float(y[0])


def test_strength_plot_draws_the_sweep_and_marks_text_only_floor_and_ceiling():
  result = _result()
  rows = result["rows"]
  sweep = [f"refs+text, strength {s:g}" for s in STRENGTHS]
  # Sorted by strength; the default and the 1-reference variants are not in it.
  result["variants"] = dict(reversed(result["variants"].items()))
  assert plots.strength_points(result) == list(zip(STRENGTHS, sweep))
  fig = plots.strength_figure(result)
  for ax, key in zip(fig.axes[:2], ("face_sim", "diversity")):
    curve, ceiling, floor, text = ax.lines
    np.testing.assert_allclose(curve.get_xdata(), STRENGTHS)
    np.testing.assert_allclose(_ydata(curve), [rows[n][key] for n in sweep])
    assert _constant(ceiling) == rows["ceiling"][key]
    assert _constant(floor) == rows["floor"][key]
    assert _constant(text) == rows["generated (text only)"][key]
    lo, hi = ax.get_ylim()
    shown = [rows[n][key] for n in (*sweep, "ceiling", "floor", "generated (text only)")]
    assert lo < min(shown) and max(shown) < hi
    assert ax.get_xlabel() == "identity_strength"


def test_over_time_plot_draws_every_rows_frames():
  result = _result()
  fig = plots.over_time_figure(result)
  ax = fig.axes[0]
  per_frame = result["face_sim_per_frame"]
  assert [line.get_label() for line in ax.lines][1:-1] == list(per_frame)[1:-1]
  assert "ceiling" in ax.lines[0].get_label() and "floor" in ax.lines[-1].get_label()
  for line, values in zip(ax.lines, per_frame.values()):
    np.testing.assert_array_equal(line.get_xdata(), np.arange(FRAMES))
    np.testing.assert_allclose(_ydata(line), values)
  lo, hi = ax.get_ylim()
  values = np.concatenate(list(per_frame.values()))
  assert lo < values.min() and values.max() < hi
  # Variants are told apart: no two share both colour and line style.
  styles = [(line.get_color(), line.get_linestyle()) for line in ax.lines]
  assert len(set(styles)) == len(styles)


def test_variant_bars_are_the_face_sims_between_floor_and_ceiling():
  result = _result()
  rows, names = result["rows"], list(result["position"])
  fig = plots.variants_figure(result)
  ax = fig.axes[0]
  np.testing.assert_allclose(
      [p.get_width() for p in ax.patches], [rows[n]["face_sim"] for n in names]
  )
  assert [t.get_text() for t in ax.get_yticklabels()] == names
  marks = [float(line.get_xdata()[0]) for line in ax.lines]
  assert rows["ceiling"]["face_sim"] in marks and rows["floor"]["face_sim"] in marks
  labels = [t.get_text() for t in ax.texts]
  assert labels[0] == f"0.490 (position {result['position'][names[0]]:.2f})"
  lo, hi = ax.get_xlim()
  shown = [rows[n]["face_sim"] for n in (*names, "ceiling", "floor")]
  assert lo < min(shown) and max(shown) < hi
  # A position that could not be measured (ceiling == floor) leaves the label short.
  result["position"] = {n: None for n in names}
  assert plots.variants_figure(result).axes[0].texts[0].get_text() == "0.490"


def test_missing_inputs_are_named():
  result = _result()
  result["variants"] = {"generated (refs+text)": {}}
  with pytest.raises(ValueError, match="--strengths"):
    plots.strength_figure(result)
  del result["face_sim_per_frame"]
  with pytest.raises(ValueError, match="face_sim_per_frame"):
    plots.over_time_figure(result)


@pytest.mark.slow  # about 15 s on 2 shared cores, mostly compiling the face encoder
def test_evaluate_records_face_sim_per_frame_and_its_plots_draw(tmp_path):
  cfg = tiny_sample_config()
  variants = {
      "generated (refs+text)": {},
      "generated (text only)": {"num_references": 0},
      "refs+text, strength 0.5": {"identity_strength": 0.5},
  }
  result = benchmark.evaluate(
      RealClipGenerator(cfg), tiny_face_encoder(seed=3), 2, seed=1, variants=variants
  )
  per_frame = result["face_sim_per_frame"]
  assert list(per_frame) == list(result["rows"])
  for name, values in per_frame.items():
    assert len(values) == result["num_frames"]
    # Mean over frames of the mean over identities = the row's FaceSim.
    assert np.mean(values) == pytest.approx(result["rows"][name]["face_sim"], abs=1e-6), name
  # The stand-in generator returns the real clips: refs+text is the ceiling, frame by frame.
  np.testing.assert_allclose(per_frame["generated (refs+text)"], per_frame["ceiling"], atol=1e-6)
  targets = cli.plot_targets(str(tmp_path / "eval.json"), strengths=True)
  for path in plots.write(json.loads(json.dumps(result)), targets):
    with Image.open(path) as image:
      assert image.size == plots.SIZES[os.path.basename(path)[len("eval_") : -len(".png")]]


def test_plot_targets_sit_beside_the_json():
  assert cli.plot_targets("runs/x/eval.json", strengths=True) == {
      "strength": "runs/x/eval_strength.png",
      "over_time": "runs/x/eval_over_time.png",
      "variants": "runs/x/eval_variants.png",
  }
  assert list(cli.plot_targets("out/table", strengths=False)) == ["over_time", "variants"]
  assert set(cli.plot_targets("a.json", True)) == set(plots.FIGURES)


@pytest.mark.parametrize(
    "png, flags, refused",
    [
        ("eval_strength.png", "--strengths 0,1", True),
        ("eval_over_time.png", "", True),
        ("eval_variants.png", "", True),
        ("eval_strength.png", "", False),  # no sweep, so no strength plot
        ("eval_over_time.png", "--no-plots", False),
        ("eval_over_time.png", "--overwrite", False),
    ],
)
def test_an_existing_plot_is_refused_before_any_work(tmp_path, capsys, png, flags, refused):
  """The workdir does not exist: an error about it means the plot check let the run through."""
  out, png = tmp_path / "eval.json", tmp_path / png
  png.write_bytes(b"mine")
  args = ["--workdir", str(tmp_path / "none"), "--out", str(out), "--no-progress", *flags.split()]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: "), err
  if refused:
    assert f"{png} exists; pass --overwrite" in err
  else:
    assert "config.json" in err and "exists" not in err, err
  assert png.read_bytes() == b"mine" and not out.exists()


@pytest.mark.slow
def test_the_cli_writes_the_plots_and_prints_their_paths(tmp_path):
  runs = tmp_path / "runs"
  video = make_workdir(str(runs))
  write_random_probe(str(runs / "probe"))
  out = tmp_path / "eval.json"
  args = ["--workdir", video, "--out", str(out), "--num-identities", "1", "--strengths", "0,1"]
  proc = run_module("idjax.eval", *args, "--steps", "1", "--no-progress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  targets = cli.plot_targets(str(out), strengths=True)
  lines = proc.stdout.rstrip().splitlines()
  assert lines[-4:] == [f"wrote {p}" for p in (*targets.values(), out)]
  for kind, path in targets.items():
    with Image.open(path) as image:
      assert image.size == plots.SIZES[kind]
  result = json.loads(out.read_text())
  for name, values in result["face_sim_per_frame"].items():
    assert np.mean(values) == pytest.approx(result["rows"][name]["face_sim"], abs=1e-6), name
  assert list(result["face_sim_per_frame"]) == [
      "ceiling",
      "generated (refs+text)",
      "generated (text only)",
      "refs+text, strength 0",
      "refs+text, strength 1",
      "floor",
  ]
