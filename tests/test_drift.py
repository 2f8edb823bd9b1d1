"""Drift and seam metrics (idjax.eval.drift) on hand-made series whose
answers are known: a constant clip, a linear fade, a step at a seam."""

import numpy as np
import pytest
from PIL import Image

from idjax.eval import drift


def test_constant_clip_has_no_drift():
  y = np.full(240, 0.61)
  assert drift.slope_per_100(y) == pytest.approx(0.0, abs=1e-12)
  assert drift.end_minus_start(y) == pytest.approx(0.0, abs=1e-12)
  report = drift.drift_report(y)
  assert report["first"] == pytest.approx(0.61) and report["last"] == pytest.approx(0.61)


def test_linear_fade_has_its_known_slope_and_end_minus_start():
  # FaceSim 0.8 at frame 0 falling 0.002 per frame: -0.2 per 100 frames.
  t = np.arange(240)
  y = 0.8 - 0.002 * t
  assert drift.slope_per_100(y) == pytest.approx(-0.2, rel=1e-9)
  # First 10% = frames 0..23 (mean at frame 11.5), last = 216..239 (227.5).
  assert drift.end_minus_start(y) == pytest.approx(-0.002 * 216, rel=1e-9)
  # Noise symmetric about the line leaves the least-squares slope alone.
  wiggle = np.where(t % 2 == 0, 0.05, -0.05)
  assert drift.slope_per_100(y + wiggle - wiggle.mean()) == pytest.approx(-0.2, abs=2e-3)


def test_edges_take_at_least_one_frame_and_short_clips_do_not_fail():
  assert drift.edge_frames(5) == 1 and drift.edge_frames(10) == 1 and drift.edge_frames(11) == 2
  assert drift.edge_frames(240) == 24
  assert drift.end_minus_start([0.2, 0.5]) == pytest.approx(0.3)
  assert drift.slope_per_100([0.4]) == 0.0
  with pytest.raises(ValueError, match="empty"):
    drift.end_minus_start([])
  with pytest.raises(ValueError, match="finite"):
    drift.slope_per_100([0.1, np.nan])


def test_chunk_starts_follow_chunks_and_context():
  assert drift.chunk_starts(240, 30) == list(range(30, 240, 30))
  # 30-frame chunks whose first 8 frames are the previous chunk's last 8:
  # 22 new frames each.
  assert drift.chunk_starts(96, 30, 8) == [30, 52, 74]
  with pytest.raises(ValueError, match="adds no frame"):
    drift.chunk_starts(96, 8, 8)


def _rotating(num_frames, step, jumps=()):
  """Unit 2-d embeddings turning by `step` radians per frame, and by `jump`
  more between frames b-1 and b for (b, jump) in jumps."""
  angle = np.arange(num_frames) * step
  for b, jump in jumps:
    angle[b:] += jump
  return np.stack([np.cos(angle), np.sin(angle)], -1)


def test_seams_equal_within_chunks_when_the_motion_is_smooth():
  emb = _rotating(40, 0.05)
  out = drift.seam_consistency(emb, drift.chunk_starts(40, 10))
  assert out["num_seams"] == 3
  assert out["seam"] == pytest.approx(np.cos(0.05)) and out["within"] == pytest.approx(np.cos(0.05))
  assert out["seam_gap"] == pytest.approx(0.0, abs=1e-12)


def test_a_jump_at_each_seam_shows_as_the_known_gap():
  starts = [10, 20, 30]
  emb = _rotating(40, 0.05, [(b, 0.45) for b in starts]) * 3.0  # norm does not matter
  out = drift.seam_consistency(emb, starts)
  assert out["seam"] == pytest.approx(np.cos(0.5))
  assert out["within"] == pytest.approx(np.cos(0.05))
  assert out["seam_gap"] == pytest.approx(np.cos(0.05) - np.cos(0.5))
  # Without seams only the within-chunk number exists.
  report = drift.drift_report(np.zeros(40), emb, starts=())
  assert report["seam"] is None and report["num_seams"] == 0
  with pytest.raises(ValueError, match="seam frames"):
    drift.seam_consistency(emb, [40])


def test_drift_plot_is_a_png_with_one_line_per_variant(tmp_path):
  t = np.arange(120)
  series = {"one-shot": 0.6 + 0 * t, "chunked": 0.6 - 0.001 * t, "naive": 0.6 - 0.002 * t}
  path = str(tmp_path / "drift.png")
  drift.write_drift_plot(path, series, starts=drift.chunk_starts(120, 30))
  with Image.open(path) as image:
    assert image.size == drift.SIZE
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
  for colour in [(31, 119, 180), (255, 127, 14), (148, 103, 189)]:  # tab: blue, orange, purple
    assert (np.abs(pixels - colour).max(-1) <= 10).sum() > 100
  with pytest.raises(ValueError, match="no series"):
    drift.drift_figure({})


def test_frame_jumps_find_a_cut_the_face_would_hide():
  # A slow fade (1 level per frame) with a cut of 40 levels at every seam.
  t = np.arange(12, dtype=np.float64)
  level = t + 40.0 * (t >= 4) + 40.0 * (t >= 8)
  frames = np.broadcast_to(level[:, None, None, None], (12, 3, 5, 3))
  got = drift.frame_jumps(frames.astype(np.uint8), [4, 8])
  assert got["seam"] == pytest.approx(41.0) and got["within"] == pytest.approx(1.0)
  assert got["ratio"] == pytest.approx(41.0)
  # No seams: all pairs are within; a constant clip changes by nothing.
  assert drift.frame_jumps(frames, [])["seam"] is None
  still = drift.frame_jumps(np.zeros((5, 2, 2, 3)), [2])
  assert still["seam"] == 0.0 and still["within"] == 0.0 and still["ratio"] is None
  with pytest.raises(ValueError, match="seam frames must lie in 1..11"):
    drift.frame_jumps(frames, [12])
