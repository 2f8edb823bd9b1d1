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
closer to its own identity's references than to any other's.
"""

import time

import numpy as np

from idjax.data import world
from idjax.eval import metrics

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


def _score(scorer, frames, boxes, ref_emb):
  """frames [T, H, W, 3], boxes [T, 4], ref_emb [K, D] -> (metric row, frame embeddings)."""
  c, emb = metrics.character_metrics(scorer, np.asarray(frames), np.asarray(boxes, np.float32),
                                     ref_emb)
  return dict(face_sim=c["face_sim"], temporal_consistency=c["temporal_consistency"],
              drift=c["drift"], diversity=c["diversity"]["embedding"]), emb


def _average(rows):
  keys = rows[0].keys()
  return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def evaluate(generator, eval_encoder, num_identities: int, seed: int = 0,
             variants=None, num_frames=None, progress=False) -> dict:
  """Runs the protocol; returns a JSON-ready dict.

  Args:
    generator: a `Generator`.
    eval_encoder: the evaluation FrozenFaceEncoder.
    num_identities: N held-out identities (>= 1).
    seed: world seed of the real clips and base seed of the samples.
    variants: dict name -> generate kwargs (see DEFAULT_VARIANTS).
    num_frames: T (default config.sample.num_frames).

  Returns:
    dict(rows: {name: {face_sim, identified, temporal_consistency, drift,
    diversity}} for "ceiling", every variant and "floor" (identified: the
    fraction of clips a face-recognition system names correctly among the N
    identities; for "floor" it is how often someone else is taken for the
    person); per_identity: lists of FaceSim;
    position: {variant: (FaceSim - floor) / (ceiling - floor)}; identities,
    prompts, timings).
  """
  if num_identities < 1:
    raise ValueError(f"num_identities must be >= 1, got {num_identities}.")
  variants = DEFAULT_VARIANTS if variants is None else variants
  cfg = world_config(generator.config, num_frames)
  scorer = metrics.FaceScorer(eval_encoder)
  # One more identity than evaluated, so every floor clip shows someone else
  # even when N = 1; the pairing is a seeded cyclic shift.
  ids = world.split_identities("heldout", num_identities + 1)
  order = np.random.default_rng([seed, 0xE7A1]).permutation(len(ids))
  ids = ids[order]
  clips = [world.render_clip(cfg, seed, i, split="heldout", identity_ids=[ids[i]])
           for i in range(len(ids))]
  n = num_identities
  refs = [clips[i]["references"][0] for i in range(n)]           # [K, R, R, 3] each
  boxes = [clips[i]["boxes"][0] for i in range(n)]               # [T, 4]
  prompts = [clips[i]["prompt"] for i in range(n)]

  # name -> per identity, (frames, boxes) of the clip scored against refs[i].
  scored = {"ceiling": [(clips[i]["frames"], boxes[i]) for i in range(n)],
            "floor": [(clips[i + 1]["frames"], clips[i + 1]["boxes"][0]) for i in range(n)]}
  timings = {}
  for name, kwargs in variants.items():
    kwargs = dict(kwargs)
    k = kwargs.pop("num_references", None)
    references = [[list(r if k is None else r[:k])] if k != 0 else [] for r in refs]
    start = time.perf_counter()
    out = generator.generate(prompts, references, num_frames=cfg.num_frames, seed=seed,
                             layout=[[b] if r else [] for b, r in zip(boxes, references)],
                             progress=progress, **kwargs)
    timings[name] = time.perf_counter() - start
    scored[name] = [(out["frames"][i], boxes[i]) for i in range(n)]

  ref_embs = [scorer.embed_references(r) for r in refs]
  ref_means = np.stack([metrics.reference_mean(e) for e in ref_embs])
  per_identity = {}
  for name, pairs in scored.items():
    rows_i, embs = zip(*[_score(scorer, frames, b, ref_embs[i])
                         for i, (frames, b) in enumerate(pairs)])
    for row, hit in zip(rows_i, metrics.identification(np.stack(embs), ref_means)):
      row["identified"] = float(hit)
    per_identity[name] = list(rows_i)

  rows = {name: _average(per_identity[name]) for name in ["ceiling", *variants, "floor"]}
  ceiling, floor = rows["ceiling"]["face_sim"], rows["floor"]["face_sim"]
  span = ceiling - floor
  position = {name: (rows[name]["face_sim"] - floor) / span if abs(span) > 1e-9 else None
              for name in variants}
  return dict(
      rows=rows, position=position,
      per_identity={k: [r["face_sim"] for r in v] for k, v in per_identity.items()},
      identities=[int(i) for i in ids[:n]], prompts=prompts, seed=seed,
      num_frames=cfg.num_frames, timings_s=timings,
      variants={k: {kk: vv for kk, vv in v.items()} for k, v in variants.items()})


def format_table(result) -> str:
  """The rows as a fixed-width text table plus the floor-to-ceiling positions."""
  cols = ("face_sim", "identified", "temporal_consistency", "drift")
  head = f"{'':28s}" + "".join(f"{c:>22s}" for c in (
      "FaceSim", f"identified (of {len(result['identities'])})", "temporal consistency", "drift"))
  lines = [head]
  for name, row in result["rows"].items():
    lines.append(f"{name:28s}" + "".join(f"{row[c]:22.4f}" for c in cols))
  for name, pos in result["position"].items():
    where = "n/a (ceiling == floor)" if pos is None else f"{pos:.3f}"
    lines.append(f"{name}: FaceSim lies at {where} of the way from floor (0) to ceiling (1)")
  return "\n".join(lines)
