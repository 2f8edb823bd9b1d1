"""The evaluation protocol: FaceSim of generated clips between a floor and a ceiling.

For N held-out identities (never seen in training), one real clip each is
rendered with `render_clip(split="heldout")`; it supplies the prompt, the K
reference portraits and the face-box trajectory (used as the layout). Then:

  ceiling    the real clip vs its own references (what a perfect model gets)
  floor      a real clip of ANOTHER held-out identity vs these references
             (what ignoring the references gets, at best)
  variants   generated clips, one generate call per variant over all N
             identities, e.g. refs + text and text only.

All FaceSim values use the evaluation encoder and the real clip's boxes, so
real and generated clips are scored on the same face regions. "identified" is
top-1 identification among the N identities: whether the clip's face is
closer to its own identity's references than to any other's. FaceSim is
computed twice: on the clip at its own resolution (`face_sim`) and on the
clip first resized to 32x32 (`face_sim_32`, comparable with 32-px runs).

Realism (`realism.py`, `probe.py`), beside identity, for every generated set
and a real one ("real (other renders)": other clips of the same identities,
as many frames):

  fd_face, fd_frame   Fréchet distance of the evaluation encoder's embeddings
                      of face crops / whole frames to those of a third real
                      set of the same identities (a set no row shares its
                      layout with); the real row's value is the floor and
                      each row also gives FD / floor. All sets hold N x T.
  hf_*                high-frequency energy over that of a pool of
                      4096 real frames (whole clips, at least N) of the same
                      identities, for the whole frame, the background
                      outside the boxes, the backdrop (the background beyond
                      H/16 px of every box: not the hair and shoulders
                      around the face) and the face box. The real row shows
                      the spread at N clips: real backgrounds differ a lot
                      (a backdrop disc's edge in view or not), so at N = 8
                      even real renders land in 0.7-1.4 for the background
                      only about 2 times in 3 (at N = 32, 9 in 10).
  backdrop_spread     ("bd spread") how much the backdrop varies inside a
                      frame, over the same pool's: its gradient and disc
                      (low frequencies, unseen by hf_*); 0 is a flat field.
  attributes          accuracy of the attribute probe (trained on real
                      crops of training identities) per attribute and mean,
                      against chance (the majority class among the N).

A "real, PxP patch means" row (the real set with each patch replaced by its
mean colour, P = resolution / 8) shows what a colour layout alone scores.
"""

import time

import numpy as np

from idjax.data import world
from idjax.eval import drift, metrics
from idjax.eval import probe as probe_lib
from idjax.eval import realism

# name -> generate kwargs. `num_references` (special): 0 = text only,
# k = the first k references, None = all K.
DEFAULT_VARIANTS = {
    "generated (refs+text)": {},
    "generated (text only)": {"num_references": 0},
}


def world_config(config, num_frames=None) -> world.WorldConfig:
  """The data world of a video config, one character per clip."""
  d = config.data
  return world.WorldConfig(
      resolution=int(d.resolution), num_frames=int(num_frames or config.sample.num_frames),
      max_characters=1, min_characters=1, num_references=int(d.num_references),
      reference_resolution=int(d.reference_resolution))


def heldout_identities(count: int, seed=None) -> np.ndarray:
  """The first `count` held-out identity ids; with `seed`, in the order
  `evaluate` pairs them with clips (a permutation seeded by `seed`)."""
  ids = world.split_identities("heldout", count)
  if seed is None:
    return ids
  return ids[np.random.default_rng([seed, 0xE7A1]).permutation(len(ids))]


def heldout_clips(cfg: world.WorldConfig, ids, seed: int = 0) -> list[dict]:
  """Clip i of the held-out world seeded `seed`, showing identity ids[i], as
  the eval renders them (scripts and benches that look at the protocol's
  clips take them from here)."""
  return [world.render_clip(cfg, seed, i, split="heldout", identity_ids=[int(ident)])
          for i, ident in enumerate(ids)]


def _score(scorer, frames, boxes, ref_emb):
  """frames [T, H, W, 3], boxes [T, 4], ref_emb [K, D] -> (metric row, frame embeddings)."""
  c, emb = metrics.character_metrics(scorer, np.asarray(frames), np.asarray(boxes, np.float32),
                                     ref_emb)
  return dict(face_sim=c["face_sim"], temporal_consistency=c["temporal_consistency"],
              drift=c["drift"], diversity=c["diversity"]["embedding"]), emb


def _face_sim_at(scorer, frames, boxes, ref_emb, size: int, own: float) -> float:
  """FaceSim of frames [T, H, W, 3] first resized to size x size; `own` (the
  clip's FaceSim) when it already is that size, so both columns agree exactly."""
  small = realism.resize_frames(frames, size)
  if small is frames:
    return own
  return float(metrics.face_sim(scorer.clip_embeddings(small, boxes), ref_emb).mean())


def _average(rows):
  keys = rows[0].keys()
  return {k: float(np.mean([r[k] for r in rows])) for k in keys}


REAL_ROW = "real (other renders)"
# Real frames in the denominator of the energy ratios (whole clips, at least
# N): one clip's background energy varies 10-fold, so a pool of 64 clips of
# 8 frames still put real renders anywhere in 0.7-1.15 of the mean of 1024.
HF_POOL_FRAMES = 4096
# The resolution of the second FaceSim column: the demo's clips before 64 px.
COMPARE_RESOLUTION = 32
# Main-variant criteria of issue 10 ("done when"), checked by `done_when`.
HF_RANGE = (0.7, 1.4)
ATTRIBUTE_SHARE = 0.8
FD_FACTOR = 3.0
POSITION_MIN = 0.7


def evaluate(generator, eval_encoder, num_identities: int, seed: int = 0,
             variants=None, num_frames=None, progress=False, probe=None) -> dict:
  """Runs the protocol; returns a JSON-ready dict.

  Args:
    generator: a `Generator` (anything whose `generate` returns uint8 frames).
    eval_encoder: the evaluation FrozenFaceEncoder.
    num_identities: N held-out identities (>= 1).
    seed: world seed of the real clips and base seed of the samples.
    variants: dict name -> generate kwargs (see DEFAULT_VARIANTS).
    num_frames: T (default config.sample.num_frames).
    probe: an attribute `probe.Probe`, or None to skip attribute accuracy.

  Returns:
    dict(rows: {name: {face_sim, face_sim_32, identified,
    temporal_consistency, drift, diversity}} for "ceiling", every variant and
    "floor" (identified: the fraction of clips a face-recognition system
    names correctly among the N identities; for "floor" it is how often
    someone else is taken for the person); per_identity: lists of FaceSim;
    face_sim_per_frame: {row name: [T] FaceSim of frame t, mean over the
    identities} (in the order of rows); seams: when a variant is made in
    chunks (its `generate` returns `chunk_starts`, the first new frame of
    every chunk after the first), {row name: dict(seam_frames,
    drift.seam_consistency's numbers and pixel_jump_seam / pixel_jump_within
    (drift.frame_jumps), means over the identities)} for every row: a
    chunked row at its own seams, the others at the first chunked row's
    (one-shot and real clips at the same frames, for comparison); else {};
    position / position_32: {variant: (FaceSim - floor) / (ceiling - floor)}
    at the clip's resolution / at 32x32; realism (see `_realism`);
    done_when (see `done_when`); identities, prompts, timings).
  """
  if num_identities < 1:
    raise ValueError(f"num_identities must be >= 1, got {num_identities}.")
  variants = DEFAULT_VARIANTS if variants is None else variants
  cfg = world_config(generator.config, num_frames)
  taken = {"ceiling", "floor", REAL_ROW, _layout_row(cfg.resolution)} & set(variants)
  if taken:
    raise ValueError(f"variant names {sorted(taken)} are taken by the protocol's own rows.")
  scorer = metrics.FaceScorer(eval_encoder)
  # One more identity than evaluated, so every floor clip shows someone else
  # even when N = 1; the pairing is a seeded cyclic shift.
  ids = heldout_identities(num_identities + 1, seed)
  clips = heldout_clips(cfg, ids, seed)
  n = num_identities
  refs = [clips[i]["references"][0] for i in range(n)]           # [K, R, R, 3] each
  # The generator gets them as RGBA, their head mattes as alpha (read by a
  # model with model.canvas_alpha, ignored by others); they are scored as RGB.
  rgba = [world.references_rgba(clips[i]) for i in range(n)]
  boxes = [clips[i]["boxes"][0] for i in range(n)]               # [T, 4]
  prompts = [clips[i]["prompt"] for i in range(n)]

  # name -> per identity, (frames, boxes) of the clip scored against refs[i].
  scored = {"ceiling": [(clips[i]["frames"], boxes[i]) for i in range(n)],
            "floor": [(clips[i + 1]["frames"], clips[i + 1]["boxes"][0]) for i in range(n)]}
  timings, chunk_starts = {}, {}
  for name, kwargs in variants.items():
    kwargs = dict(kwargs)
    k = kwargs.pop("num_references", None)
    references = [[list(r if k is None else r[:k])] if k != 0 else [] for r in rgba]
    start = time.perf_counter()
    out = generator.generate(prompts, references, num_frames=cfg.num_frames, seed=seed,
                             layout=[[b] if r else [] for b, r in zip(boxes, references)],
                             progress=progress, **kwargs)
    timings[name] = time.perf_counter() - start
    if "chunk_starts" in out:
      chunk_starts[name] = list(out["chunk_starts"])
    scored[name] = [(np.asarray(out["frames"][i]), boxes[i]) for i in range(n)]

  ref_embs = [scorer.embed_references(r) for r in refs]
  ref_means = np.stack([metrics.reference_mean(e) for e in ref_embs])
  per_identity, per_frame, seams = {}, {}, {}
  for name, pairs in scored.items():
    rows_i, embs = zip(*[_score(scorer, frames, b, ref_embs[i])
                         for i, (frames, b) in enumerate(pairs)])
    if chunk_starts:  # a row made in chunks at its seams, every other row at the first one's
      starts = chunk_starts.get(name, next(iter(chunk_starts.values())))
      per_clip = [drift.seam_consistency(e, starts) for e in embs]
      jumps = [drift.frame_jumps(frames, starts) for frames, _ in pairs]
      seams[name] = dict({k: float(np.mean([c[k] for c in per_clip]))
                          for k in ("seam", "within", "seam_gap")},
                         seam_frames=starts, num_seams=len(starts),
                         pixel_jump_seam=float(np.mean([j["seam"] for j in jumps])),
                         pixel_jump_within=float(np.mean([j["within"] for j in jumps])))
    per_frame[name] = np.mean([metrics.face_sim(e, r) for e, r in zip(embs, ref_embs)],
                              axis=0).tolist()
    for row, hit in zip(rows_i, metrics.identification(np.stack(embs), ref_means)):
      row["identified"] = float(hit)
    for row, (frames, b), ref_emb in zip(rows_i, pairs, ref_embs):
      row["face_sim_32"] = _face_sim_at(scorer, frames, b, ref_emb, COMPARE_RESOLUTION,
                                        row["face_sim"])
    per_identity[name] = list(rows_i)

  rows = {name: _average(per_identity[name]) for name in ["ceiling", *variants, "floor"]}

  def positions(key):
    ceiling, floor = rows["ceiling"][key], rows["floor"][key]
    span = ceiling - floor
    return {name: (rows[name][key] - floor) / span if abs(span) > 1e-9 else None
            for name in variants}

  result = dict(
      rows=rows, position=positions("face_sim"), position_32=positions("face_sim_32"),
      per_identity={k: [r["face_sim"] for r in v] for k, v in per_identity.items()},
      face_sim_per_frame={name: per_frame[name] for name in rows},
      seams={name: seams[name] for name in rows if name in seams},
      realism=_realism(scorer, probe, *_real_sets(cfg, seed, ids[:n], len(ids)),
                       {name: (np.stack([f for f, _ in scored[name]]), np.stack(boxes))
                        for name in variants}, ids[:n]),
      identities=[int(i) for i in ids[:n]], prompts=prompts, seed=seed,
      num_frames=cfg.num_frames, resolution=cfg.resolution, timings_s=timings,
      variants={k: {kk: vv for kk, vv in v.items()} for k, v in variants.items()})
  result["done_when"] = done_when(result)
  return result


def _layout_row(resolution: int) -> str:
  patch = _layout_patch(resolution)
  return f"real, {patch}x{patch} patch means"


def _layout_patch(resolution: int) -> int:
  # An 8x8 grid of mean colours at any resolution: the token grid of the
  # 32-px pixel model (4x4 patches), and of a 64-px latent model (8x down).
  return max(resolution // 8, 1)


def _real_sets(cfg, seed, ids, first_index):
  """Real renders of the N identities `ids` for the realism measures.

  At world indices from `first_index` on (past every clip of the protocol):
    other      [N clips] the real row (its FD is the floor);
    reference  [N clips] what every FD is measured against. Generated clips
               share the ceiling clips' layout, so measuring them against
               those would favour them; no set shares this one's;
    pool       the denominator of the energy ratios: `realism.pooled_energy`
               of max(N, HF_POOL_FRAMES / T) clips (`hf_pool_clips`), rendered
               one at a time; the background energy of one clip varies 10-fold
               (a backdrop disc's edge in view or not), so N clips against N
               clips would be mostly noise.
  other and reference are (frames uint8 [n, T, H, W, 3], boxes [n, T, 4]).
  """
  n = len(ids)

  def render(index):
    clip = world.render_clip(cfg, seed, first_index + index, split="heldout",
                             identity_ids=[ids[index % n]])
    return clip["frames"], clip["boxes"][0]

  def renders(first):
    frames, boxes = zip(*[render(first + i) for i in range(n)])
    return np.stack(frames), np.stack(boxes)

  clips = max(n, -(-HF_POOL_FRAMES // cfg.num_frames))
  pool = realism.pooled_energy((f, b[:, None, :]) for f, b in map(render, range(2 * n, 2 * n + clips)))
  return renders(0), renders(n), (pool, clips)


def _realism(scorer, probe, other, reference, pool, generated, identity_ids) -> dict:
  """Realism of each frame set.

  Args:
    scorer: FaceScorer of the evaluation encoder.
    probe: attribute Probe or None.
    other, reference: real sets, pool: (pooled energy, clips) (see `_real_sets`).
    generated: variant name -> (frames [N, T, H, W, 3], boxes [N, T, 4]).
    identity_ids: [N] who is in clip i.

  Returns:
    dict(features, samples, hf_pool_clips, floor: {fd_face, fd_frame},
    rows: {name: {fd_face, fd_face_ratio, fd_frame, fd_frame_ratio, hf_frame,
    hf_background, hf_backdrop, hf_face, backdrop_spread, attributes: {attribute:
    accuracy, mean} or None}}, chance: {attribute: majority-class accuracy, mean} or None, probe:
    probe facts or None). FD values are None when N x T < 2.
  """
  def flat(frames, boxes):
    return frames.reshape((-1,) + frames.shape[-3:]), boxes.reshape(-1, 4)

  def features(frames, boxes):
    """Embeddings of the face crops and of the whole frames."""
    frames, boxes = flat(frames, boxes)
    whole = np.tile(np.array([[0, 0, 1, 1]], np.float32), (len(frames), 1))
    return scorer.embed_crops(frames, boxes), scorer.embed_crops(frames, whole)

  patch = _layout_patch(other[0].shape[-2])
  sets = {REAL_ROW: other, **generated,
          _layout_row(other[0].shape[-2]): (realism.block_mean(other[0], patch), other[1])}
  ref_face, ref_frame = features(*reference)
  # A covariance needs two samples; one identity of one frame has no FD.
  fd = realism.frechet_distance if len(ref_face) >= 2 else lambda a, b: None
  labels = np.repeat(probe_lib.attribute_labels(identity_ids), reference[0].shape[1], axis=0)
  rows = {}
  for name, (frames, boxes) in sets.items():
    face, frame = features(frames, boxes)
    row = dict(fd_face=fd(face, ref_face), fd_frame=fd(frame, ref_frame))
    floor = rows[REAL_ROW] if rows else row
    for key in ("fd_face", "fd_frame"):
      row[key + "_ratio"] = row[key] / floor[key] if row[key] is not None and floor[key] else None
    ratios = realism.energy_ratios(realism.laplacian_energy(frames, boxes[..., None, :]), pool[0])
    row.update({f"hf_{k}": ratios[k] for k in realism.REGIONS})
    row["backdrop_spread"] = ratios[realism.SPREAD]
    row["attributes"] = (probe_lib.accuracy(probe.predict_frames(*flat(frames, boxes)), labels)
                         if probe is not None else None)
    rows[name] = row
  return dict(
      features=f"evaluation-encoder embeddings ({scorer.encoder.embed_dim}-d unit vectors)",
      samples=int(len(ref_face)), hf_pool_clips=int(pool[1]), rows=rows,
      floor={k: rows[REAL_ROW][k] for k in ("fd_face", "fd_frame")},
      chance=probe_lib.chance(labels) if probe is not None else None,
      probe=None if probe is None else dict(crop_size=probe.crop_size, report=probe.report))


def _main_variant(result):
  names = list(result["position"])
  return "generated (refs+text)" if "generated (refs+text)" in names else (names or [None])[0]


def done_when(result) -> list:
  """Issue 10's criteria on the main variant ("generated (refs+text)").

  Returns:
    list of dict(criterion, passed: bool or None (not measured), detail).
  """
  name = _main_variant(result)
  if name is None:
    return []
  row = result["realism"]["rows"][name]
  real = result["realism"]["rows"][REAL_ROW]
  checks = []

  def check(criterion, passed, detail):
    checks.append(dict(criterion=criterion, passed=passed, detail=detail, variant=name))

  lo, hi = HF_RANGE
  bg, face = row["hf_background"], row["hf_face"]
  check(f"HF energy ratio background and face in {lo}-{hi}",
        lo <= bg <= hi and lo <= face <= hi,
        f"background {bg:.2f}, face {face:.2f} (whole frame {row['hf_frame']:.2f}, backdrop "
        f"{row['hf_backdrop']:.2f}, backdrop spread {row['backdrop_spread']:.2f}; real renders "
        f"at this N: background {real['hf_background']:.2f}, face {real['hf_face']:.2f}, "
        f"backdrop {real['hf_backdrop']:.2f}, backdrop spread {real['backdrop_spread']:.2f})")

  share = ATTRIBUTE_SHARE
  if row["attributes"] is None:
    check(f"attribute accuracy >= {share} x real", None, "no probe")
  else:
    gen, ref = row["attributes"]["mean"], real["attributes"]["mean"]
    check(f"attribute accuracy >= {share} x real", gen >= share * ref,
          f"{gen:.3f} vs {share} x {ref:.3f} = {share * ref:.3f} "
          f"(chance {result['realism']['chance']['mean']:.3f})")

  # Face crops decide: whole frames through a 32-px face encoder hardly
  # separate patch noise or a colour layout from real frames.
  fd_face, fd_frame = row["fd_face_ratio"], row["fd_frame_ratio"]
  check(f"FD of face crops <= {FD_FACTOR:g} x real-vs-real floor",
        None if fd_face is None else fd_face <= FD_FACTOR,
        _fmt(fd_face, ".2f") + "x"
        + ("" if fd_frame is None else f" (whole frames {fd_frame:.2f}x)"))

  pos = result["position"][name]
  text = result["position"].get("generated (text only)")
  check(f"FaceSim position >= {POSITION_MIN} (at {result['resolution']} px) and above text only",
        None if pos is None else pos >= POSITION_MIN and (text is None or pos > text),
        _fmt(pos, ".3f") + ("" if text is None else f" (text only {text:.3f})"))
  return checks


def _fmt(v, spec):
  """format(v, spec), or "n/a" as wide as the spec says for None."""
  return f"{'n/a':>{spec.split('.')[0]}s}" if v is None else format(v, spec)


def format_table(result) -> str:
  """The identity rows as a fixed-width text table plus the floor-to-ceiling
  positions, then the realism table, the attribute table and the done-when checks."""
  cols = ("face_sim", "face_sim_32", "identified", "temporal_consistency", "drift")
  res = result.get("resolution")
  head = f"{'':28s}" + "".join(f"{c:>22s}" for c in (
      f"FaceSim ({res} px)" if res else "FaceSim", f"FaceSim (resized {COMPARE_RESOLUTION})",
      f"identified (of {len(result['identities'])})", "temporal consistency", "drift"))
  lines = [head]
  for name, row in result["rows"].items():
    lines.append(f"{name:28s}" + "".join(f"{_fmt(row.get(c), '22.4f')}" for c in cols))
  for name, pos in result["position"].items():
    where = "n/a (ceiling == floor)" if pos is None else f"{pos:.3f}"
    pos32 = result.get("position_32", {}).get(name)
    at32 = "" if pos32 is None else f" ({pos32:.3f} at {COMPARE_RESOLUTION} px)"
    lines.append(f"{name}: FaceSim lies at {where} of the way from floor (0) to ceiling (1){at32}")
  if "realism" in result:
    lines += ["", format_realism(result["realism"])]
  for c in result.get("done_when", []):
    mark = {True: "PASS", False: "FAIL", None: "n/a "}[c["passed"]]
    lines.append(f"done-when check [{mark}] {c['criterion']}: {c['detail']}")
  return "\n".join(lines)


def format_realism(r) -> str:
  """The realism dict of `evaluate` as two tables: distances and texture, attributes."""
  lines = [f"realism ({r['samples']} frames per set; FD to other real renders, in "
           f"{r['features']};",
           f"  HF = mean squared Laplacian / that of {r['hf_pool_clips']} real clips; bd spread = "
           "the backdrop's variance inside a frame / theirs)"]
  heads = ("FD face", "x floor", "FD frame", "x floor", "HF frame", "HF background",
           "HF backdrop", "HF face", "bd spread", "attributes")
  lines.append(f"{'':32s}" + "".join(f"{h:>14s}" for h in heads))
  for name, row in r["rows"].items():
    attrs = row["attributes"]["mean"] if row["attributes"] else None
    values = (row["fd_face"], row["fd_face_ratio"], row["fd_frame"], row["fd_frame_ratio"],
              row["hf_frame"], row["hf_background"], row["hf_backdrop"], row["hf_face"],
              row["backdrop_spread"], attrs)
    lines.append(f"{name:32s}" + "".join(_fmt(v, "14.3f") for v in values))
  if r["chance"] is not None:
    chance = f"{'chance (majority class)':32s}"
    lines.append(chance + " " * 14 * (len(heads) - 1) + f"{r['chance']['mean']:14.3f}")
    lines += ["", f"attribute accuracy (probe on {r['probe']['crop_size']} px face crops; "
                  f"mean over {', '.join(probe_lib.MEAN_ATTRIBUTES)})"]
    names = (*probe_lib.ATTRIBUTES, "mean")
    lines.append(f"{'':32s}" + "".join(f"{a:>12s}" for a in names))
    for name, row in r["rows"].items():
      lines.append(f"{name:32s}" + "".join(f"{row['attributes'][a]:12.3f}" for a in names))
    lines.append(chance + "".join(f"{r['chance'][a]:12.3f}" for a in names))
  return "\n".join(lines)
