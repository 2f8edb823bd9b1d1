"""The preparation run: videos -> per-video analyses -> identities -> shards.

Stage 1, per video (cached in DATA_DIR/cache/, one atomic .npz per video and
settings, so a resumed run skips finished videos). Pass 1 decodes every
frame once: frame statistics for the shot detector, boxes (sidecar or
detector), embeddings on every `embed_every`-th frame; then cuts, tracks
and clip plans. Pass 2 decodes again and keeps only what the plans name:
the clips' square windows at the training resolution and the tracks'
reference candidates.

Stage 2, over all videos: tracks cluster into identities, identities split
into train / held-out, every clip gets K references per character from
other videos, else other shots, else other clips of its track (and only
then its own frames, which the report counts), and the records are written
as TFDS shards (`shards.py`), skipping shards already written by a
run with the same plan.
"""

import dataclasses
import hashlib
import json
import os
import re
import sys
import time

import numpy as np
from tqdm import tqdm

from idjax import paths
from idjax.configlib import UsageError
from idjax.data import pipeline, world
from idjax.data.prepare import clips as clips_lib
from idjax.data.prepare import decode, dlib_faces, identities, shards, shots, sidecars, tracks

CACHE_VERSION = 1
REPORT = "prepare_report.json"
SPLITS_FILE = "identities.json"
PLAN_FILE = pipeline.PREPARE_PLAN  # also read by the training pipeline
TIERS = ("other_video", "other_shot", "other_clip", "same_clip")


@dataclasses.dataclass(frozen=True)
class Options:
  resolution: int = 64
  num_frames: int = 16
  frame_step: int = 1
  stride: int = 0  # 0: clips do not overlap
  max_characters: int = 1
  num_references: int = 3
  reference_resolution: int = 64
  face_scale: float = 0.0  # 0: the largest square of the frame
  seed: int = 0
  heldout_fraction: float = 0.2
  examples_per_shard: int = 256
  detector: str = "hog"  # when a video has no sidecar boxes
  detector_threshold: float = 0.3
  upsample: int = 1
  detect_every: int = 1
  embed_every: int = 4
  iou_min: float = 0.3
  max_gap: int = 4
  smooth_window: int = 5
  min_track_frames: int = 0  # 0: one clip's span
  min_face_px: float = 24.0
  bank_size: int = 8
  cluster_threshold: float = 0.0  # 0: the embedder's own
  max_side: int = 640
  max_frames: int = 20000
  max_file_mb: float = 4096.0
  caption_template: str = "{people}"

  def world_config(self) -> world.WorldConfig:
    return world.WorldConfig(
        resolution=self.resolution,
        num_frames=self.num_frames,
        max_characters=self.max_characters,
        min_characters=1,
        num_references=self.num_references,
        reference_resolution=self.reference_resolution,
    )

  @property
  def span(self) -> int:
    return (self.num_frames - 1) * self.frame_step + 1


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_path(out, rel, key):
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rel)[-80:]
  return os.path.join(out, "cache", f"{stem}.{key}.npz")


# --- stage 1: one video ------------------------------------------------------------


def _detections(frame, i, opts, boxes_of_video, detector, embedder):
  if boxes_of_video is not None:
    faces = boxes_of_video.get(i, [])
    boxes = np.array([f["box"] for f in faces], np.float32).reshape(-1, 4)
    hints = np.array([-1 if f["track"] is None else f["track"] for f in faces], np.int64)
    labels = np.array([-1 if f["identity"] is None else f["identity"] for f in faces], np.int64)
  elif i % opts.detect_every == 0:
    boxes, _ = detector(frame)
    hints = labels = np.full(len(boxes), -1, np.int64)
  else:
    return None
  if not len(boxes):
    return None
  emb = embedder(frame, boxes) if i % opts.embed_every == 0 else None
  return tracks.Detections(boxes, hints, labels, emb)


def analyse_video(path, rel, opts: Options, boxes_of_video, detector, embedder) -> dict:
  """Both passes over one video; returns the arrays cached for it (see `_save`)."""
  scores, dets, previous = [], {}, None
  height = width = 0
  for i, frame in decode.frames(
      path, max_side=opts.max_side, max_frames=opts.max_frames, max_mb=opts.max_file_mb
  ):
    height, width = frame.shape[:2]
    thumb, hist = shots.frame_features(frame)
    # score[i] = change from frame i - 1 to i; streamed, so memory stays flat.
    scores.append(0.0 if previous is None else shots.change(previous, (thumb, hist)))
    previous = (thumb, hist)
    found = _detections(frame, i, opts, boxes_of_video, detector, embedder)
    if found is not None:
      dets[i] = found
  num_decoded = len(scores)
  cuts = shots.detect_cuts(np.array(scores))
  shot_ranges = shots.shots_from_cuts(cuts, num_decoded)
  raw = tracks.link(
      dets,
      shot_ranges,
      iou_min=opts.iou_min,
      max_gap=opts.max_gap,
      max_distance=getattr(embedder, "distance_threshold", np.inf) * 1.5,
  )
  kept, dropped = tracks.finish(
      raw,
      height,
      width,
      smooth_window=opts.smooth_window,
      min_frames=opts.min_track_frames or opts.span,
      min_face_px=opts.min_face_px,
      embed_dim=embedder.dim,
  )
  plans = clips_lib.plan(
      kept,
      height,
      width,
      num_frames=opts.num_frames,
      frame_step=opts.frame_step,
      stride=opts.stride or None,
      max_characters=opts.max_characters,
      face_scale=opts.face_scale,
  )
  banks = [(k, f) for k, t in enumerate(kept) for f in clips_lib.bank_frames(t, opts.bank_size)]

  # Pass 2: what each frame index is needed for.
  wanted: dict[int, list] = {}
  for c, p in enumerate(plans):
    for t, f in enumerate(p.frames):
      wanted.setdefault(int(f), []).append(("clip", c, t))
  for b, (k, f) in enumerate(banks):
    wanted.setdefault(int(f), []).append(("bank", b, k))
  T, S, R = opts.num_frames, opts.resolution, opts.reference_resolution
  clip_frames = np.zeros((len(plans), T, S, S, 3), np.uint8)
  bank_crops = np.zeros((len(banks), R, R, 3), np.uint8)
  last = max(wanted) if wanted else -1
  if wanted:
    for i, frame in decode.frames(
        path, max_side=opts.max_side, max_frames=last + 1, max_mb=opts.max_file_mb
    ):
      for kind, a, b in wanted.get(i, ()):
        if kind == "clip":
          clip_frames[a, b] = clips_lib.crop(frame, plans[a].window, S)
        else:
          box = kept[b].boxes[i - kept[b].first]
          bank_crops[a] = clips_lib.crop(frame, clips_lib.face_square(box, *frame.shape[:2]), R)

  C = opts.max_characters
  clip_boxes = np.zeros((len(plans), C, T, 4), np.float32)
  clip_tracks = np.full((len(plans), C), -1, np.int64)
  for c, p in enumerate(plans):
    clip_boxes[c, : len(p.tracks)] = p.boxes
    clip_tracks[c, : len(p.tracks)] = p.tracks
  meta = dict(
      video=rel,
      height=height,
      width=width,
      decoded_frames=num_decoded,
      cuts=cuts,
      detections=int(sum(len(d.boxes) for d in dets.values())),
      tracks=[
          dict(
              shot=t.shot,
              first=t.first,
              last=t.last,
              side_px=t.side_px,
              label=t.label,
              num_embedded=t.num_embedded,
          )
          for t in kept
      ],
      dropped_tracks=dropped,
  )
  return dict(
      meta=np.array(json.dumps(meta)),
      track_embeddings=np.stack([t.embedding for t in kept]).astype(np.float32)
      if kept
      else np.zeros((0, embedder.dim), np.float32),
      track_boxes=np.concatenate([t.boxes for t in kept]) if kept else np.zeros((0, 4), np.float32),
      clip_frames=clip_frames,
      clip_boxes=clip_boxes,
      clip_tracks=clip_tracks,
      clip_first=np.array([int(p.frames[0]) for p in plans], np.int64),
      bank_crops=bank_crops,
      bank_track=np.array([k for k, _ in banks], np.int64),
      bank_frame=np.array([f for _, f in banks], np.int64),
  )


def _save(path, arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)

  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)

  paths.atomic_write(path, write)


def load_meta(path) -> dict:
  with np.load(path, allow_pickle=False) as z:
    return json.loads(str(z["meta"]))


# --- stage 2: identities, references, shards ------------------------------------------------


def _cannot_link(metas) -> np.ndarray:
  """bool [N, N] over all tracks: two tracks of one video that share a frame."""
  spans = [(v, t["first"], t["last"]) for v, m in enumerate(metas) for t in m["tracks"]]
  n = len(spans)
  out = np.zeros((n, n), bool)
  for a in range(n):
    for b in range(a + 1, n):
      va, fa, la = spans[a]
      vb, fb, lb = spans[b]
      if va == vb and fa <= lb and fb <= la:
        out[a, b] = out[b, a] = True
  return out


def _references(
    opts, record_key, char_track, clip_first, video, metas, offsets, banks, members_of, identity
):
  """K bank entries (video, index) for one character, best tier first; and the tiers used."""
  meta = metas[video]
  track = meta["tracks"][char_track]
  span_lo, span_hi = clip_first, clip_first + opts.span - 1
  candidates = []
  for g in members_of[identity]:
    v = int(np.searchsorted(offsets, g, side="right") - 1)
    k = g - offsets[v]
    bank_track, bank_frame = banks[v]
    for b in np.flatnonzero(bank_track == k):
      f = int(bank_frame[b])
      if v != video:
        tier = 0
      elif metas[v]["tracks"][k]["shot"] != track["shot"]:
        tier = 1
      elif not span_lo <= f <= span_hi:
        tier = 2
      else:
        tier = 3
      rank = hashlib.sha256(f"{opts.seed}/{record_key}/{v}/{b}".encode()).digest()
      candidates.append((tier, rank, v, int(b)))
  candidates.sort()
  chosen = [candidates[i % len(candidates)] for i in range(opts.num_references)]
  return [(v, b) for _, _, v, b in chosen], [TIERS[t] for t, *_ in chosen]


class _Banks:
  """Reference crops of every video, loaded once."""

  def __init__(self, cache_paths):
    self.crops, self.index = [], []
    for path in cache_paths:
      with np.load(path, allow_pickle=False) as z:
        self.crops.append(z["bank_crops"])
        self.index.append((z["bank_track"], z["bank_frame"]))


def plan_records(opts, videos, metas, cache_paths, embedder_threshold, captions):
  """Clusters, split and the ordered records of each split (without pixels)."""
  embeddings, offsets = [], [0]
  for path, meta in zip(cache_paths, metas):
    with np.load(path, allow_pickle=False) as z:
      embeddings.append(z["track_embeddings"])
    offsets.append(offsets[-1] + len(meta["tracks"]))
  offsets = np.array(offsets[:-1], np.int64)
  all_emb = np.concatenate(embeddings) if embeddings else np.zeros((0, 1), np.float32)
  apart = _cannot_link(metas)
  no_embedding = [
      g for g, t in enumerate(t for m in metas for t in m["tracks"]) if t["num_embedded"] == 0
  ]
  apart[no_embedding, :] = True  # a track never embedded is its own person
  apart[:, no_embedding] = True
  threshold = opts.cluster_threshold or embedder_threshold
  ids = identities.cluster(all_emb, threshold, apart)
  keys = {}
  for g in range(len(ids)):
    v = int(np.searchsorted(offsets, g, side="right") - 1)
    keys.setdefault(int(ids[g]), f"{videos[v]}#{g - offsets[v]}")
  num_ids = len(keys)
  held = identities.split([keys[i] for i in range(num_ids)], opts.heldout_fraction)
  members_of = {i: [] for i in range(num_ids)}
  for g, i in enumerate(ids):
    members_of[int(i)].append(g)
  banks = _Banks(cache_paths)
  records = {"train": [], "heldout": []}
  tiers = dict.fromkeys(TIERS, 0)
  mixed = 0
  for v, path in enumerate(cache_paths):
    with np.load(path, allow_pickle=False) as z:
      clip_tracks, clip_first = z["clip_tracks"], z["clip_first"]
    for c in range(len(clip_tracks)):
      members = [int(k) for k in clip_tracks[c] if k >= 0]
      who = [int(ids[offsets[v] + k]) for k in members]
      sides = {bool(held[i]) for i in who}
      if len(sides) > 1:
        mixed += 1
        continue
      split = "heldout" if sides.pop() else "train"
      refs = []
      for k, i in zip(members, who):
        chosen, used = _references(
            opts,
            f"{videos[v]}/{c}",
            k,
            int(clip_first[c]),
            v,
            metas,
            offsets,
            banks.index,
            members_of,
            i,
        )
        refs.append(chosen)
        for t in used:
          tiers[t] += 1
      records[split].append(
          dict(
              video=v,
              clip=c,
              identities=who,
              references=refs,
              prompt=sidecars.caption_for(
                  captions, videos[v], int(clip_first[c]), opts.caption_template, len(members)
              ),
          )
      )
  truth = [t["label"] for m in metas for t in m["tracks"]]
  identity_rows = [
      dict(
          identity=i,
          split="heldout" if held[i] else "train",
          key=keys[i],
          tracks=[
              f"{videos[int(np.searchsorted(offsets, g, side='right') - 1)]}"
              f"#{g - offsets[int(np.searchsorted(offsets, g, side='right') - 1)]}"
              for g in members_of[i]
          ],
          known_labels=sorted({truth[g] for g in members_of[i] if truth[g] >= 0}),
      )
      for i in range(num_ids)
  ]
  stats = dict(
      identities=num_ids,
      heldout_identities=int(held.sum()),
      mixed_split_clips=mixed,
      reference_tiers=tiers,
      clustering=identities.purity(ids, truth),
      cluster_threshold=threshold,
  )
  return records, banks, identity_rows, stats


def _record(opts, rec, index, frames, boxes, banks):
  C, K, R = opts.max_characters, opts.num_references, opts.reference_resolution
  n = len(rec["identities"])
  ids = np.full(C, -1, np.int32)
  ids[:n] = rec["identities"]
  valid = np.zeros(C, bool)
  valid[:n] = True
  references = np.zeros((C, K, R, R, 3), np.uint8)
  for c, chosen in enumerate(rec["references"]):
    references[c] = np.stack([banks.crops[v][b] for v, b in chosen])
  return dict(
      frames=frames,
      boxes=boxes,
      masks=clips_lib.masks_from_boxes(boxes, opts.resolution),
      identity_ids=ids,
      character_valid=valid,
      references=references,
      # No head mattes from footage: all ones, "the whole crop may be head".
      reference_mattes=np.ones(references.shape[:-1], np.uint8),
      prompt=rec["prompt"],
      index=np.int64(index),
  )


def write_split(opts, out, split, records, cache_paths, banks, *, progress, on_shard=None):
  """Writes (or skips, if present) every shard of a split; returns (written, skipped)."""
  b = shards.builder(opts.world_config(), opts.seed, split, len(records), out)
  per = opts.examples_per_shard
  lengths = [min(per, len(records) - s) for s in range(0, len(records), per)]
  targets = shards.shard_paths(b.data_dir, split, len(lengths))
  os.makedirs(b.data_dir, exist_ok=True)
  written = skipped = 0
  loaded = (None, None)
  start = time.perf_counter()
  bar = tqdm(
      total=len(records), desc=f"{split} shards", unit="clip", disable=not progress, leave=False
  )
  for s, target in enumerate(targets):
    chunk = records[s * per : (s + 1) * per]
    if os.path.exists(target):
      skipped += 1
      bar.update(len(chunk))
      continue
    rows = []
    for i, rec in enumerate(chunk):
      if loaded[0] != rec["video"]:
        with np.load(cache_paths[rec["video"]], allow_pickle=False) as z:
          loaded = (rec["video"], (z["clip_frames"], z["clip_boxes"]))
      frames, boxes = loaded[1]
      rows.append(_record(opts, rec, s * per + i, frames[rec["clip"]], boxes[rec["clip"]], banks))
    shards.write_shard(target, b.info.features, rows)
    written += 1
    bar.update(len(chunk))
    bar.set_postfix(clips_per_s=f"{bar.n / max(time.perf_counter() - start, 1e-9):.1f}")
    if on_shard is not None:
      on_shard(target)
  bar.close()
  if lengths and not shards.is_finalized(b):
    shards.finalize(b, split, lengths)
  return written, skipped, b.data_dir


def _analysed(videos_dir, rel, out, opts, settings, boxes, detector, embedder):
  """(cache path, failure dict or None, 1 if it was cached before) of one video,
  analysing it unless a finished analysis (or failure) is cached."""
  path = os.path.join(videos_dir, rel)
  stat = os.stat(path)
  sidecar = {
      str(f): [dict(box=d["box"].tolist(), track=d["track"], identity=d["identity"]) for d in faces]
      for f, faces in sorted(boxes.get(rel, {}).items())
  }
  cache = _cache_path(out, rel, _digest([settings, rel, stat.st_size, stat.st_mtime_ns, sidecar]))
  bad = cache[: -len(".npz")] + ".bad.json"
  if os.path.exists(bad):
    with open(bad) as f:
      return cache, json.load(f), 1
  if os.path.exists(cache):
    return cache, None, 1
  if isinstance(detector, dlib_faces.MissingPackage):  # not cached: retried once installed
    return cache, dict(reason="no_detector", message=f"{rel} has no sidecar boxes: {detector}"), 0
  try:
    arrays = analyse_video(path, rel, opts, boxes.get(rel), detector, embedder)
  except decode.BadVideo as e:
    failure = dict(reason=e.reason, message=str(e))
  else:
    meta = json.loads(str(arrays["meta"]))
    if not meta["detections"]:
      failure = dict(reason="no_face", message=f"{rel}: no face found.")
    elif not meta["tracks"]:
      failure = dict(reason="no_track", message=f"{rel}: no face track long and large enough.")
    elif not len(arrays["clip_first"]):
      failure = dict(reason="no_clip", message=f"{rel}: no track holds a whole clip.")
    else:
      _save(cache, arrays)
      return cache, None, 0
  os.makedirs(os.path.dirname(bad), exist_ok=True)
  paths.write_text(bad, json.dumps(failure))
  return cache, failure, 0


def run(
    videos_dir,
    out,
    opts: Options,
    *,
    embedder,
    detector_factory=None,
    boxes=None,
    captions=None,
    progress=True,
    on_shard=None,
) -> dict:
  """The whole preparation; returns the report (also written to out/prepare_report.json).

  embedder: callable (frame uint8 [H, W, 3], boxes [n, 4]) -> float32 [n, D],
    with attributes `name`, `dim` and `distance_threshold`.
  detector_factory: () -> callable frame -> (boxes [n, 4], scores [n]), made
    only if some video has no sidecar boxes (None: dlib's `opts.detector`).
  on_shard: called with each shard path written (tests stop a run with it).
  """
  started = time.perf_counter()
  videos = decode.list_videos(videos_dir)
  if not videos:
    raise UsageError(
        f"--videos {videos_dir} holds no video files ({', '.join(decode.VIDEO_EXTENSIONS)})."
    )
  boxes, captions = boxes or {}, captions or {}
  unknown = sorted(set(boxes) - set(videos))
  settings = dataclasses.asdict(opts) | dict(embedder=embedder.name, cache=CACHE_VERSION)
  plan_file = os.path.join(out, PLAN_FILE)
  if os.path.exists(plan_file):
    with open(plan_file) as f:
      previous = json.load(f)
    if previous.get("settings") != json.loads(json.dumps(settings)):
      raise UsageError(
          f"--out {out} holds a preparation made with other settings; choose a "
          "new --out (nothing there was changed)."
      )
  skipped_reasons: dict[str, int] = {}
  skipped_files: list[dict] = []
  detector = None
  kept_videos, metas, cache_paths = [], [], []
  counts = dict(
      decoded_frames=0,
      detections=0,
      shots=0,
      tracks=0,
      clips=0,
      dropped_short_tracks=0,
      dropped_small_tracks=0,
      cached_videos=0,
  )
  clock = time.perf_counter()
  bar = tqdm(videos, desc="videos", unit="video", disable=not progress, leave=False)
  for rel in bar:
    if rel not in boxes and detector is None:
      try:
        if detector_factory is None:
          detector = dlib_faces.make_detector(opts.detector, opts.upsample, opts.detector_threshold)
        else:
          detector = detector_factory()
      except dlib_faces.MissingPackage as e:
        detector = e
    cache, failure, cached = _analysed(
        videos_dir, rel, out, opts, settings, boxes, detector, embedder
    )
    counts["cached_videos"] += cached
    if failure is not None:
      if progress:
        tqdm.write(f"skipped {failure['message']}", file=sys.stderr)
      skipped_reasons[failure["reason"]] = skipped_reasons.get(failure["reason"], 0) + 1
      skipped_files.append(dict(video=rel, **failure))
      continue
    meta = load_meta(cache)
    kept_videos.append(rel)
    metas.append(meta)
    cache_paths.append(cache)
    counts["decoded_frames"] += meta["decoded_frames"]
    counts["detections"] += meta["detections"]
    counts["shots"] += len(meta["cuts"]) + 1
    counts["tracks"] += len(meta["tracks"])
    counts["dropped_short_tracks"] += meta["dropped_tracks"]["short"]
    counts["dropped_small_tracks"] += meta["dropped_tracks"]["small"]
    with np.load(cache, allow_pickle=False) as z:
      counts["clips"] += len(z["clip_first"])
    bar.set_postfix(clips_per_s=f"{counts['clips'] / max(time.perf_counter() - clock, 1e-9):.1f}")
  bar.close()
  analyse_s = time.perf_counter() - clock
  if not kept_videos:
    raise UsageError(
        f"No video in --videos {videos_dir} gave a clip "
        f"(skipped: {json.dumps(skipped_reasons)}); see the messages above."
    )

  records, banks, identity_rows, stats = plan_records(
      opts, kept_videos, metas, cache_paths, embedder.distance_threshold, captions
  )
  plan = dict(
      settings=settings,
      videos=kept_videos,
      fingerprint=_digest(
          [
              [
                  (
                      kept_videos[r["video"]],
                      r["clip"],
                      r["identities"],
                      r["references"],
                      r["prompt"],
                  )
                  for r in records[s]
              ]
              for s in ("train", "heldout")
          ]
      ),
  )
  if os.path.exists(plan_file):
    with open(plan_file) as f:
      previous = json.load(f)
    if previous.get("fingerprint") != plan["fingerprint"]:
      raise UsageError(
          f"--out {out} holds shards of a different set of videos; choose a new "
          "--out (nothing there was changed)."
      )
  else:
    paths.write_text(plan_file, json.dumps(plan, indent=1))
  clock = time.perf_counter()
  written = {}
  for split in ("train", "heldout"):
    if records[split]:
      w, s, directory = write_split(
          opts, out, split, records[split], cache_paths, banks, progress=progress, on_shard=on_shard
      )
      written[split] = dict(
          examples=len(records[split]),
          shards_written=w,
          shards_skipped=s,
          directory=directory,
          train_flags=shards.train_flags(
              opts.world_config(), opts.seed, out, split, len(records[split])
          ),
      )
  write_s = time.perf_counter() - clock
  total_clips = sum(len(r) for r in records.values())
  report = dict(
      videos=dict(found=len(videos), used=len(kept_videos), skipped=len(skipped_files)),
      skipped_reasons=skipped_reasons,
      skipped_files=skipped_files,
      unknown_sidecar_videos=unknown,
      **counts,
      **stats,
      splits=written,
      seconds=dict(analyse=analyse_s, write=write_s, total=time.perf_counter() - started),
      clips_per_second=total_clips / max(time.perf_counter() - started, 1e-9),
      embedder=embedder.name,
  )
  paths.write_text(os.path.join(out, SPLITS_FILE), json.dumps(identity_rows, indent=1))
  paths.write_text(os.path.join(out, REPORT), json.dumps(report, indent=1))
  return report
