"""idjax.data.prepare on synthetic-world MP4s with a box sidecar (no dlib needed).

The folder: 6 videos of two 20-frame shots with a hard cut at frame 20,
3 identities (even videos keep one person across the cut, odd ones change
person at it), the world's exact boxes in boxes.jsonl, and 5 broken files.
Identities are embedded by a known-id embedder (the sidecar's identity of
the box it is given, as a one-hot vector): the clustering, split and
reference rules are checked against known truth; the embedding networks
have their own tests (test_prepare_dlib.py, and the --embedder path below).
"""

import json
import os
import sys

import ml_collections
import numpy as np
import pytest

from helpers import tiny_face_encoder
from idjax import video_io
from idjax.configlib import UsageError
from idjax.data import pipeline
from idjax.data.prepare import decode, identities, run, shots, sidecars, synthetic, tracks
from idjax.data.prepare.__main__ import main as prepare_main
from idjax.data.prepare.__main__ import make_embedder
from idjax.face.frozen import save_face_encoder

SHOT_FRAMES = 20
OPTS = run.Options(
    resolution=32,
    num_frames=8,
    num_references=2,
    reference_resolution=32,
    examples_per_shard=4,
    heldout_fraction=0.34,
)


class KnownIdEmbedder:
  """One-hot of the sidecar identity of each box (looked up by its coordinates)."""

  name = "known-ids"
  dim = 8
  distance_threshold = 0.5

  def __init__(self, boxes_path):
    self.label = {}
    for video in sidecars.read_boxes(boxes_path).values():
      for faces in video.values():
        for face in faces:
          self.label[self._key(face["box"])] = face["identity"]
    self.calls = 0

  @staticmethod
  def _key(box):
    return tuple(np.round(np.asarray(box, np.float64), 5))

  def __call__(self, frame, boxes):
    self.calls += 1
    out = np.zeros((len(boxes), self.dim), np.float32)
    for i, box in enumerate(boxes):
      out[i, self.label[self._key(box)]] = 1.0
    return out


def _no_faces():
  """A detector that finds nothing (the one video without sidecar boxes)."""
  return lambda frame: (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


def _prepare(folder, out, **kw):
  return run.run(
      str(folder),
      str(out),
      OPTS,
      embedder=KnownIdEmbedder(folder / "boxes.jsonl"),
      detector_factory=_no_faces,
      boxes=sidecars.read_boxes(folder / "boxes.jsonl"),
      progress=False,
      **kw,
  )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  truth = synthetic.make_folder(
      str(root),
      videos=6,
      identities=3,
      shots=2,
      shot_frames=SHOT_FRAMES,
      resolution=32,
      broken=5,
      min_side=64,
  )
  # Identity labels as 0..2 (the sidecar's), for the known-id embedder.
  ids = truth["identities"]
  lines = [json.loads(x) for x in (root / "boxes.jsonl").read_text().splitlines()]
  for line in lines:
    for face in line["faces"]:
      face["identity"] = ids.index(face["identity"])
  (root / "boxes.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  return root


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared")
  return out, _prepare(folder, out)


def _metas(out):
  caches = sorted((out / "cache").glob("*.npz"))
  return {
      run.load_meta(p)["video"]: (run.load_meta(p), np.load(p, allow_pickle=False)) for p in caches
  }


def _source(out, split, size):
  d = ml_collections.ConfigDict(
      dict(
          source="tfds",
          resolution=32,
          num_frames=8,
          max_characters=1,
          min_characters=1,
          num_references=2,
          reference_resolution=32,
          seed=0,
          split=split,
          size=size,
          tfds_data_dir=str(out),
      )
  )
  return pipeline.make_source(d)


# --- the units ---------------------------------------------------------------------


def test_cut_detector_on_hand_made_scores():
  """A cut is a lone jump over its neighbours; steady fast motion is not one,
  nor a jump closer than min_shot to the last cut."""
  scores = np.full(40, 0.02)
  scores[10] = 0.5  # a cut
  scores[20:30] = 0.2  # fast motion: high, but so are its neighbours
  scores[33], scores[35] = 0.6, 0.6  # two jumps 2 frames apart: the second is dropped
  assert shots.detect_cuts(scores) == [10, 33]
  assert shots.shots_from_cuts([10, 33], 40).tolist() == [[0, 10], [10, 33], [33, 40]]


def test_linking_keeps_two_crossing_people_apart():
  """Two faces cross; IoU alone would swap them where they overlap, the
  embeddings keep each track on its person."""
  dets = {}
  for f in range(12):
    a = np.array([0.3, 0.05 * f, 0.6, 0.05 * f + 0.3])  # moving right
    b = np.array([0.3, 0.55 - 0.05 * f, 0.6, 0.85 - 0.05 * f])  # moving left
    dets[f] = tracks.Detections(
        np.stack([b, a]).astype(np.float32),
        np.full(2, -1),
        np.array([1, 0]),
        np.array([[0.0, 1.0], [1.0, 0.0]], np.float32),
    )
  raw = tracks.link(dets, np.array([[0, 12]]), iou_min=0.1, max_distance=0.5)
  assert len(raw) == 2
  assert all(len(set(t["labels"])) == 1 and len(t["frames"]) == 12 for t in raw)


def test_clustering_respects_cannot_link():
  emb = np.array([[0.0, 0.0], [0.1, 0.0], [0.05, 0.05], [5.0, 5.0]])
  assert identities.cluster(emb, 0.5).tolist() == [0, 0, 0, 1]
  apart = np.zeros((4, 4), bool)
  apart[0, 1] = apart[1, 0] = True  # 0 and 1 share frames: two people
  labels = identities.cluster(emb, 0.5, apart)
  assert labels[0] != labels[1] and labels[3] not in labels[:3]
  p = identities.purity([0, 0, 1, 1, 2], [7, 7, 7, 8, 8])
  # Clusters {7,7} {7,8} {8}: 4 of 5 on their majority; people 7 -> {0,0,1}, 8 -> {1,2}: 3 of 5.
  assert p["purity"] == pytest.approx(4 / 5) and p["inverse_purity"] == pytest.approx(3 / 5)


# --- a prepared folder ---------------------------------------------------------------


def test_cuts_are_found_at_the_right_frame(prepared, folder):
  out, report = prepared
  truth = json.loads((folder / "truth.json").read_text())
  metas = _metas(out)
  assert len(metas) == 6 and report["shots"] == 12
  for name, (meta, _) in metas.items():
    assert meta["cuts"] == truth["videos"][name]["cuts"] == [SHOT_FRAMES]


def test_tracks_follow_the_sidecar_and_never_span_a_cut(prepared, folder):
  out, _ = prepared
  known = sidecars.read_boxes(folder / "boxes.jsonl")
  for name, (meta, arrays) in _metas(out).items():
    spans = [(t["first"], t["last"]) for t in meta["tracks"]]
    assert spans == [(0, SHOT_FRAMES - 1), (SHOT_FRAMES, 2 * SHOT_FRAMES - 1)]
    given = np.stack([known[name][f][0]["box"] for f in range(2 * SHOT_FRAMES)])
    overlap = [tracks.iou(a[None], b[None])[0, 0] for a, b in zip(arrays["track_boxes"], given)]
    assert min(overlap) > 0.95, min(overlap)  # equal up to the moving-average smoothing


def test_identities_are_clustered_and_split_by_identity(prepared, folder):
  out, report = prepared
  assert report["clustering"] == dict(
      tracks=12, purity=1.0, inverse_purity=1.0, clusters=3, identities=3
  )
  rows = json.loads((out / run.SPLITS_FILE).read_text())
  assert {r["split"] for r in rows} == {"heldout", "train"}
  assert report["heldout_identities"] == sum(r["split"] == "heldout" for r in rows)
  assert all(len(r["known_labels"]) == 1 for r in rows)


def test_references_come_from_other_videos(prepared):
  """Every identity appears in several videos, so no reference is taken from
  the clip's own video, let alone its frames."""
  _, report = prepared
  tiers = report["reference_tiers"]
  assert tiers["other_video"] == 2 * report["clips"] and tiers["same_clip"] == 0


def test_shards_read_back_through_the_pipeline(prepared):
  out, report = prepared
  sizes = {s: row["examples"] for s, row in report["splits"].items()}
  assert sum(sizes.values()) == report["clips"] == 6 * 2 * 2  # two 8-frame clips per shot
  seen = {}
  for split, size in sizes.items():
    assert f"--config.data.size={size}" in report["splits"][split]["train_flags"]
    source = _source(out, split, size)
    assert len(source) == size
    record = source[size - 1]
    assert record["index"] == size - 1 and record["prompt"] == "a person"
    assert record["frames"].shape == (8, 32, 32, 3)
    assert record["references"].shape == (1, 2, 32, 32, 3)
    assert record["masks"].shape == (1, 8, 32, 32)
    seen[split] = {int(source[i]["identity_ids"][0]) for i in range(size)}
    batches = pipeline.GlobalBatches(source, global_batch_size=4, seed=0, mesh=None, text_len=6)
    batch = batches.batch_at(0)
    assert batch["frames"].shape == (4, 8, 32, 32, 3)
    assert batch["reference_valid"].shape == (4, 1, 2)
    assert batch["text_tokens"].shape == (4, 6)
  assert not seen["train"] & seen["heldout"]


def test_broken_files_are_counted_not_fatal(prepared):
  _, report = prepared
  assert report["videos"] == dict(found=11, used=6, skipped=5)
  assert report["skipped_reasons"] == {"unreadable": 4, "no_face": 1}


def test_an_interrupted_run_resumes_without_rewriting_finished_shards(prepared, folder, tmp_path):
  done, report = prepared

  class Stop(Exception):
    pass

  def stop_after_first(path):
    raise Stop(path)

  with pytest.raises(Stop) as stopped:
    _prepare(folder, tmp_path, on_shard=stop_after_first)
  first = stopped.value.args[0]
  before = os.stat(first)
  again = _prepare(folder, tmp_path)
  assert os.stat(first).st_mtime_ns == before.st_mtime_ns and os.stat(first).st_ino == before.st_ino
  assert again["cached_videos"] == 11  # no file decoded twice, the 5 broken ones included
  assert again["splits"]["train"]["shards_skipped"] == 1
  # The same bytes as the run never interrupted.
  for row in report["splits"].values():
    here = row["directory"].replace(str(done), str(tmp_path))
    names = sorted(n for n in os.listdir(row["directory"]) if ".array_record-" in n)
    assert names == sorted(n for n in os.listdir(here) if ".array_record-" in n)
    for n in names:
      with (
          open(os.path.join(row["directory"], n), "rb") as a,
          open(os.path.join(here, n), "rb") as b,
      ):
        assert a.read() == b.read(), n


def test_captions_sidecar_and_other_settings(folder, tmp_path):
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps(dict(video="clip_0000.mp4", caption="a person waving")) + "\n")
  out = tmp_path / "out"
  report = run.run(
      str(folder),
      str(out),
      OPTS,
      embedder=KnownIdEmbedder(folder / "boxes.jsonl"),
      detector_factory=_no_faces,
      boxes=sidecars.read_boxes(folder / "boxes.jsonl"),
      captions=sidecars.read_captions(str(captions)),
      progress=False,
  )
  prompts = set()
  for split, row in report["splits"].items():
    source = _source(out, split, row["examples"])
    prompts |= {source[i]["prompt"] for i in range(len(source))}
  assert prompts == {"a person", "a person waving"}
  # The same --out with other settings is refused, and nothing there changes.
  listing = sorted(p for p in out.rglob("*"))
  other = run.Options(**{**OPTS.__dict__, "num_frames": 4})
  with pytest.raises(UsageError, match="other settings"):
    run.run(
        str(folder),
        str(out),
        other,
        embedder=KnownIdEmbedder(folder / "boxes.jsonl"),
        detector_factory=_no_faces,
        progress=False,
    )
  assert sorted(p for p in out.rglob("*")) == listing


@pytest.mark.parametrize("case", ["missing", "empty", "bad_boxes"])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, case):
  videos = tmp_path / "videos"
  args = ["--videos", str(videos), "--out", str(tmp_path / "out"), "--no-progress"]
  if case != "missing":
    videos.mkdir()
  if case == "bad_boxes":
    (videos / "a.gif").write_bytes(b"GIF89a")
    (tmp_path / "boxes.jsonl").write_text(
        '{"video": "a.gif", "frame": 0, "faces": ' '[{"box": [0.5, 0.5, 0.2, 0.2]}]}\n'
    )
    args += ["--boxes", str(tmp_path / "boxes.jsonl")]
  with pytest.raises(SystemExit) as e:
    prepare_main(args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  assert {"missing": "is not a folder", "empty": "holds no video files", "bad_boxes": "y1 > y0"}[
      case
  ] in err[0]
  assert not (tmp_path / "out").exists()


def test_cli_with_a_face_encoder_workdir(folder, tmp_path, capsys):
  """--embedder WORKDIR: the project encoder embeds the sidecar's faces (a
  random tiny one here: the path, not the clustering quality)."""
  videos = tmp_path / "videos"
  videos.mkdir()
  for name in ("clip_0000.mp4", "clip_0001.mp4"):
    (videos / name).write_bytes((folder / name).read_bytes())
  encoder = tiny_face_encoder()
  save_face_encoder(str(tmp_path / "face"), encoder.config, encoder.params)
  code = prepare_main(
      [
          "--videos",
          str(videos),
          "--out",
          str(tmp_path / "out"),
          "--boxes",
          str(folder / "boxes.jsonl"),
          "--embedder",
          str(tmp_path / "face"),
          "--resolution",
          "32",
          "--num-frames",
          "8",
          "--no-progress",
      ]
  )
  assert code == 0
  report = json.loads((tmp_path / "out" / run.REPORT).read_text())
  assert report["embedder"].startswith("encoder:") and report["clips"] == 8
  assert report["unknown_sidecar_videos"] == [f"clip_{v:04d}.mp4" for v in range(2, 6)]
  assert "train.py flags: --config.data.source=tfds" in capsys.readouterr().out


def test_decoding_gifs_and_refusing_huge_files(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  video_io.write_gif(str(tmp_path / "a.gif"), frames, min_side=16)
  got = [f for _, f in decode.frames(str(tmp_path / "a.gif"))]
  assert len(got) == 5 and got[0].shape == (16, 16, 3)
  with pytest.raises(decode.BadVideo) as e:
    list(decode.frames(str(tmp_path / "a.gif"), max_mb=1e-4))
  assert e.value.reason == decode.TOO_LARGE


def test_without_dlib_the_package_is_named(folder, tmp_path, monkeypatch):
  """With dlib unimportable, --embedder dlib is one sentence naming dlib-bin,
  and a video without sidecar boxes is skipped (not fatal), saying the same."""
  monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
  with pytest.raises(UsageError, match="dlib-bin"):
    make_embedder("dlib")
  videos = tmp_path / "videos"
  videos.mkdir()
  for name in ("clip_0000.mp4", "clip_0001.mp4", "noface.mp4"):
    (videos / name).write_bytes((folder / name).read_bytes())
  report = run.run(
      str(videos),
      str(tmp_path / "out"),
      OPTS,
      embedder=KnownIdEmbedder(folder / "boxes.jsonl"),
      boxes=sidecars.read_boxes(folder / "boxes.jsonl"),
      progress=False,
  )
  assert report["skipped_reasons"] == {"no_detector": 1} and report["clips"] == 8
  assert "dlib-bin" in report["skipped_files"][0]["message"]
