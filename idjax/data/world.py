"""A procedural world of cartoon faces in which identity is known exactly.

Every identity id (a non-negative integer) deterministically defines a face:
face width and jaw, skin tone, hair colour, style (bald, short, long, bangs,
curly) and volume, eye colour, size and spacing, nose and mouth size, brows,
and marks (glasses with their colour, beard or moustache, freckles). Identity
is carried mostly by large colour regions (skin, hair) and medium features
(eyes, glasses, beard), so it stays visible at 32x32.

A clip shows 1..`max_characters` such faces over `num_frames` frames while
*nuisance* changes smoothly: position and motion, scale, head turn, smile,
mouth opening, blinks, lighting (brightness, colour cast, side light) and the
background (gradient plus a disc). Each character also gets K reference
portraits rendered with other nuisance draws, framed exactly like a crop of
its face box. The prompt names quantised attributes only ("a person with pale
skin, short black hair, blue eyes and glasses"), so many identities share it.

Identities split into train and held-out sets by a crc32 hash of the id
(`is_heldout`), so evaluation on held-out ids is zero-shot. Everything is a
pure function of (seed, index): `np.random.default_rng([seed, index, purpose])`
with no global state, and pixel maths restricted to correctly rounded float32
operations, so the same call gives the same bytes on any machine.
"""

import dataclasses
import functools
import zlib

import numpy as np

from idjax.data import prompts
from idjax.data import render

F32 = np.float32

# Purposes of the NumPy generators (the third word of every rng seed).
_IDENTITY = 1
_CHARACTERS = 2
_NUISANCE = 3
_REFERENCE = 4
_SCENE = 5

SKIN_TONES = (
    ("pale", (0.98, 0.87, 0.80)),
    ("light", (0.93, 0.75, 0.60)),
    ("tan", (0.80, 0.58, 0.40)),
    ("brown", (0.56, 0.38, 0.24)),
    ("dark", (0.34, 0.22, 0.15)),
)
HAIR_COLOURS = (
    ("black", (0.08, 0.07, 0.07)),
    ("brown", (0.42, 0.25, 0.12)),
    ("blond", (0.93, 0.80, 0.42)),
    ("red", (0.78, 0.28, 0.10)),
    ("grey", (0.58, 0.58, 0.60)),
    ("white", (0.96, 0.96, 0.94)),
    ("blue", (0.18, 0.35, 0.88)),
    ("pink", (0.96, 0.45, 0.72)),
    ("green", (0.22, 0.66, 0.30)),
    ("purple", (0.50, 0.24, 0.72)),
)
HAIR_STYLES = ("bald", "short", "long", "bangs", "curly")
_HAIR_STYLE_P = (0.10, 0.25, 0.25, 0.20, 0.20)
EYE_COLOURS = (
    ("brown", (0.42, 0.24, 0.10)),
    ("blue", (0.15, 0.45, 0.95)),
    ("green", (0.15, 0.70, 0.30)),
    ("grey", (0.55, 0.60, 0.62)),
    ("amber", (0.90, 0.60, 0.10)),
    ("violet", (0.60, 0.25, 0.85)),
)
_GLASSES_COLOURS = ((0.05, 0.05, 0.05), (0.85, 0.10, 0.10), (0.10, 0.25, 0.85), (0.85, 0.70, 0.15),
                    (0.95, 0.95, 0.95))
BEARDS = ("none", "moustache", "beard")
_BEARD_P = (0.6, 0.15, 0.25)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  resolution: int = 64            # H = W, 32..128
  num_frames: int = 16            # T
  max_characters: int = 1         # C (arrays are padded to C)
  min_characters: int = 1
  num_references: int = 3         # K reference portraits per character
  reference_resolution: int = 64  # references are R x R
  heldout_fraction: float = 0.2

  def __post_init__(self):
    if not 8 <= self.resolution <= 512:
      raise ValueError(f"resolution must be in 8..512, got {self.resolution}.")
    if self.num_frames < 1 or self.num_references < 1 or self.reference_resolution < 8:
      raise ValueError("num_frames and num_references must be >= 1 and reference_resolution >= 8.")
    if not 1 <= self.min_characters <= self.max_characters <= 8:
      raise ValueError(f"Need 1 <= min_characters <= max_characters <= 8, got "
                       f"{self.min_characters}, {self.max_characters}.")
    if not 0.0 < self.heldout_fraction < 1.0:
      raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}.")


@dataclasses.dataclass(frozen=True)
class IdentityParams:
  """Everything that makes a face itself. Lengths are in head units (box side = 1)."""
  identity_id: int
  face_width: float        # half-width of the face oval
  face_height: float       # half-height of the face oval
  jaw: float               # lower half width / upper half width
  skin_level: float        # 0 = palest .. 1 = darkest
  skin_rgb: tuple[float, float, float]
  skin_name: str
  hair_rgb: tuple[float, float, float]
  hair_colour_name: str
  hair_style: str
  hair_volume: float
  hairline: float          # v of the hair's lower edge over the forehead
  eye_rgb: tuple[float, float, float]
  eye_colour_name: str
  eye_spacing: float
  eye_size: float
  eye_y: float
  brow_thickness: float
  nose_size: float
  mouth_width: float
  mouth_y: float
  glasses: bool
  glasses_rgb: tuple[float, float, float]
  beard: str
  freckles: bool
  freckle_offsets: tuple[tuple[float, float], ...]

  def attributes(self) -> dict[str, str | bool]:
    """The quantised, nameable attributes (what a prompt may say)."""
    return dict(skin=self.skin_name, hair_colour=self.hair_colour_name,
                hair_style=self.hair_style, eyes=self.eye_colour_name,
                glasses=self.glasses, beard=self.beard, freckles=self.freckles)


def _jitter(rng, rgb, amount):
  return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0.0, 1.0)) for c in rgb)


def identity_params(identity_id: int) -> IdentityParams:
  """The face of `identity_id`: a pure function of the id."""
  return _identity_params(int(identity_id))


@functools.lru_cache(maxsize=8192)  # pure and frozen, so caching is safe
def _identity_params(identity_id: int) -> IdentityParams:
  if identity_id < 0:
    raise ValueError(f"identity ids are non-negative, got {identity_id}.")
  rng = np.random.default_rng([identity_id, _IDENTITY])
  skin_level = float(rng.uniform(0.0, 1.0))
  pos = skin_level * (len(SKIN_TONES) - 1)
  lo = min(int(pos), len(SKIN_TONES) - 2)
  frac = pos - lo
  skin = [a + frac * (b - a) for a, b in zip(SKIN_TONES[lo][1], SKIN_TONES[lo + 1][1])]
  skin_name = SKIN_TONES[int(round(pos))][0]
  hair_i = int(rng.integers(len(HAIR_COLOURS)))
  eye_i = int(rng.integers(len(EYE_COLOURS)))
  style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=_HAIR_STYLE_P))]
  glasses = bool(rng.uniform() < 0.3)
  glasses_rgb = _jitter(rng, _GLASSES_COLOURS[int(rng.integers(len(_GLASSES_COLOURS)))], 0.08)
  beard = BEARDS[int(rng.choice(len(BEARDS), p=_BEARD_P))]
  freckles = bool(rng.uniform() < 0.25)
  freckle_offsets = tuple(
      (float(s * rng.uniform(0.09, 0.2)), float(rng.uniform(0.08, 0.17)))
      for s in (-1, -1, -1, -1, 1, 1, 1, 1))
  eye_size = float(rng.uniform(0.040, 0.062))
  return IdentityParams(
      identity_id=identity_id,
      face_width=float(rng.uniform(0.23, 0.31)),
      face_height=float(rng.uniform(0.30, 0.34)),
      jaw=float(rng.uniform(0.72, 1.0)),
      skin_level=skin_level,
      skin_rgb=_jitter(rng, skin, 0.03),
      skin_name=skin_name,
      hair_rgb=_jitter(rng, HAIR_COLOURS[hair_i][1], 0.06),
      hair_colour_name=HAIR_COLOURS[hair_i][0],
      hair_style=style,
      hair_volume=float(rng.uniform(0.92, 1.1)),
      hairline=float(rng.uniform(-0.06, -0.02) if style == "bangs" else rng.uniform(-0.19, -0.11)),
      eye_rgb=_jitter(rng, EYE_COLOURS[eye_i][1], 0.06),
      eye_colour_name=EYE_COLOURS[eye_i][0],
      eye_spacing=float(rng.uniform(0.085, 0.125)),
      eye_size=eye_size,
      eye_y=float(rng.uniform(0.01, 0.05)),
      brow_thickness=float(rng.uniform(0.010, 0.022)),
      nose_size=float(rng.uniform(0.025, 0.05)),
      mouth_width=float(rng.uniform(0.07, 0.12)),
      mouth_y=float(rng.uniform(0.23, 0.27)),
      glasses=glasses,
      glasses_rgb=glasses_rgb,
      beard=beard,
      freckles=freckles,
      freckle_offsets=freckle_offsets,
  )


def is_heldout(identity_id: int, heldout_fraction: float = 0.2) -> bool:
  """Stable split: crc32 of the id, the same in every process and Python version."""
  h = zlib.crc32(f"idjax-identity-{int(identity_id)}".encode())
  return h < heldout_fraction * 2**32


def _check_split(split):
  if split not in ("train", "heldout"):
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}.")


def split_identities(split: str, count: int, start: int = 0,
                     heldout_fraction: float = 0.2) -> np.ndarray:
  """The ids number start..start+count-1 of `split`, in increasing id order (int64 [count]).

  A face-encoder training set of N classes is `split_identities("train", N)`;
  held-out evaluation ids come from `split_identities("heldout", M)`.
  """
  _check_split(split)
  want = split == "heldout"
  out = []
  seen = 0
  i = 0
  while len(out) < count:
    if is_heldout(i, heldout_fraction) == want:
      if seen >= start:
        out.append(i)
      seen += 1
    i += 1
  return np.asarray(out, np.int64)


def _draw_identities(rng, n, split, heldout_fraction):
  """n distinct ids of `split` drawn uniformly from [0, 2**31) by rejection."""
  want = split == "heldout"
  ids = []
  while len(ids) < n:
    i = int(rng.integers(0, 2**31 - 1))
    if is_heldout(i, heldout_fraction) == want and i not in ids:
      ids.append(i)
  return ids


def _smoothstep(t):
  return t * t * (3.0 - 2.0 * t)


def _layout(rng, n, num_frames):
  """Per-character box trajectories: centres [n, T, 2] (y, x) and sides [n, T]."""
  t = np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1)
  s = _smoothstep(t)
  if n == 1:
    cols, rows, side_range = 1, 1, (0.50, 0.78)
  else:
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    cell = 1.0 / cols
    side_range = (0.85 * cell, min(1.1 * cell, 0.46))
  slots = rng.permutation(cols * rows)[:n]
  centres = np.empty((n, num_frames, 2))
  sides = np.empty((n, num_frames))
  for c in range(n):
    side0 = rng.uniform(*side_range)
    zoom = rng.uniform(-0.1, 0.1)
    side = side0 * (1.0 + zoom * (t - 0.5))
    half = side.max() / 2
    row, col = divmod(int(slots[c]), cols)
    # Start inside the character's grid cell, then drift a little (overlap allowed).
    cell_y = (row + 0.5) / rows
    cell_x = (col + 0.5) / cols
    jitter = 0.25 / max(cols, rows) if n > 1 else 0.18
    p0 = np.array([cell_y, cell_x]) + rng.uniform(-jitter, jitter, 2)
    p1 = p0 + rng.uniform(-0.12, 0.12, 2) / max(cols, rows)
    p0 = np.clip(p0, half, 1 - half)
    p1 = np.clip(p1, half, 1 - half)
    centres[c] = p0 + (p1 - p0) * s[:, None]
    sides[c] = side
  return centres, sides


def _pose(rng, num_frames, *, static=False):
  """Smooth per-frame turn, smile, mouth opening and blinks: dict of [T] float64."""
  t = np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1)
  s = _smoothstep(t)
  turn0, turn1 = rng.uniform(-0.6, 0.6, 2)
  smile0, smile1 = rng.uniform(-0.3, 1.0, 2)
  open_amp = rng.uniform(0.2, 1.0) if rng.uniform() < 0.4 else 0.0
  open_t = rng.uniform(0.0, 1.0)
  # Portraits are taken with open eyes (mostly), like good reference photos.
  blink_frame = rng.uniform(0, num_frames - 1) if rng.uniform() < (0.1 if static else 0.5) else -100.0
  if static:  # a portrait: one pose
    s = np.zeros_like(t)
  frame = np.arange(num_frames, dtype=np.float64)
  return dict(
      turn=turn0 + (turn1 - turn0) * s,
      smile=smile0 + (smile1 - smile0) * s,
      mouth_open=open_amp * np.maximum(0.0, 1.0 - ((t - open_t) / 0.3) ** 2),
      eye_open=np.minimum(1.0, np.abs(frame - blink_frame) / 1.5),
  )


def _scene(rng, num_frames, *, independent=False):
  """Background and lighting, arrays with a leading frame axis [T].

  One scene drifting slowly over a clip, or (independent=True) an unrelated
  scene per frame, as for a set of portraits.
  """
  n = num_frames if independent else 1

  def draw(low, high, shape):
    x = rng.uniform(low, high, (n,) + shape)
    return x if independent else np.broadcast_to(x, (num_frames,) + shape)

  top = draw(0.1, 0.9, (3,))
  bottom = draw(0.1, 0.9, (3,))
  blob_centre = draw(0.0, 1.0, (2,))
  blob_radius = draw(0.08, 0.3, ())
  blob_rgb = draw(0.1, 0.9, (3,))
  brightness = draw(0.85, 1.12, ())
  cast = draw(0.92, 1.08, (3,))
  slope = draw(-0.15, 0.15, ())
  if not independent:  # lighting drifts slowly across the clip
    t = np.arange(num_frames, dtype=np.float64) / max(num_frames - 1, 1)
    brightness = brightness * (1.0 + rng.uniform(-0.06, 0.06) * (t - 0.5))
  as32 = lambda x: np.ascontiguousarray(x, F32)
  return dict(top=as32(top), bottom=as32(bottom), blob_centre=as32(blob_centre),
              blob_radius=as32(blob_radius), blob_rgb=as32(blob_rgb), brightness=as32(brightness),
              cast=as32(cast), slope=as32(slope))


def _render(resolution, scene, heads):
  """Draws heads (back to front) over the scene.

  heads: list of (IdentityParams, centres [T,2] float64, sides [T], pose dict).
  Returns frames uint8 [T,H,W,3] and visible-head masks uint8 [n,T,H,W].
  """
  num_frames = scene["top"].shape[0]
  canvas = render.background(resolution, resolution, scene["top"], scene["bottom"],
                             scene["blob_centre"], scene["blob_radius"], scene["blob_rgb"])
  masks = np.zeros((len(heads), num_frames, resolution, resolution), np.uint8)
  coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution
  for c, (ident, centres, sides, pose) in enumerate(heads):
    # Work only on the window that the box covers over the whole clip.
    y0 = max(int(np.floor((centres[:, 0] - sides / 2).min() * resolution)), 0)
    y1 = min(int(np.ceil((centres[:, 0] + sides / 2).max() * resolution)), resolution)
    x0 = max(int(np.floor((centres[:, 1] - sides / 2).min() * resolution)), 0)
    x1 = min(int(np.ceil((centres[:, 1] + sides / 2).max() * resolution)), resolution)
    inv = (1.0 / sides)[:, None, None]
    u = ((coords[None, None, x0:x1] - centres[:, 1, None, None]) * inv).astype(F32)
    v = ((coords[None, y0:y1, None] - centres[:, 0, None, None]) * inv).astype(F32)
    pixel = (inv / resolution).astype(F32)
    pose32 = {k: p.astype(F32)[:, None, None] for k, p in pose.items()}
    cover = render.draw_head(canvas[:, :, y0:y1, x0:x1], u, v, pixel, ident, pose32)
    head = cover >= F32(0.5)
    masks[c, :, y0:y1, x0:x1] = head
    masks[:c, :, y0:y1, x0:x1] &= ~head  # masks are the *visible* head regions
  render.light(canvas, scene["brightness"], scene["cast"], scene["slope"])
  return render.to_uint8(canvas), masks


def _references(cfg, seed, index, c, ident):
  """K portraits of `ident` with fresh nuisance, framed like its face box:
  (uint8 [K,R,R,3], their head mattes uint8 [K,R,R], 1 on the head)."""
  k = cfg.num_references
  rng = np.random.default_rng([seed, index, _REFERENCE, c])
  pose = _pose(rng, 1, static=True)
  poses = [pose] + [_pose(rng, 1, static=True) for _ in range(k - 1)]
  pose = {key: np.concatenate([p[key] for p in poses]) for key in pose}
  # The box of a portrait is the whole image: centre 0.5, side 1.
  centres = np.full((k, 2), 0.5)
  sides = np.ones(k)
  scene = _scene(rng, k, independent=True)
  frames, masks = _render(cfg.reference_resolution, scene, [(ident, centres, sides, pose)])
  return frames, masks[0]


def render_clip(cfg: WorldConfig, seed: int, index: int, *, split: str = "train",
                identity_ids=None) -> dict:
  """Renders example `index` of the world seeded with `seed`.

  Args:
    cfg: the world's sizes.
    seed, index: the example's address; the same pair gives the same bytes.
    split: "train" or "heldout": where identities are drawn from.
    identity_ids: optional sequence of 1..max_characters ids to show instead.

  Returns:
    dict with frames uint8 [T,H,W,3], boxes float32 [C,T,4] (y0, x0, y1, x1)
    frame fractions, masks uint8 [C,T,H,W] (visible head, 1 inside), identity_ids
    int32 [C] (-1 absent), character_valid bool [C], references uint8
    [C,K,R,R,3], reference_mattes uint8 [C,K,R,R] (each portrait's head, 1
    inside), prompt str. C = max_characters, padded.
  """
  _check_split(split)
  seed, index = int(seed), int(index)
  if seed < 0 or index < 0:
    raise ValueError(f"seed and index must be non-negative, got {seed}, {index}.")
  rng = np.random.default_rng([seed, index, _CHARACTERS])
  if identity_ids is None:
    n = int(rng.integers(cfg.min_characters, cfg.max_characters + 1))
    ids = _draw_identities(rng, n, split, cfg.heldout_fraction)
  else:
    ids = [int(i) for i in np.asarray(identity_ids).reshape(-1)]
    if not 1 <= len(ids) <= cfg.max_characters:
      raise ValueError(f"Need 1..{cfg.max_characters} identity ids, got {len(ids)}.")
  n = len(ids)
  idents = [identity_params(i) for i in ids]

  T, H, C = cfg.num_frames, cfg.resolution, cfg.max_characters
  k, r = cfg.num_references, cfg.reference_resolution
  centres, sides = _layout(np.random.default_rng([seed, index, _NUISANCE]), n, T)
  pose_rng = np.random.default_rng([seed, index, _NUISANCE, 1])
  heads = [(idents[c], centres[c], sides[c], _pose(pose_rng, T)) for c in range(n)]
  scene = _scene(np.random.default_rng([seed, index, _SCENE]), T)
  frames, masks = _render(H, scene, heads)

  boxes = np.zeros((C, T, 4), F32)
  half = sides / 2
  boxes[:n] = np.stack([centres[..., 0] - half, centres[..., 1] - half,
                        centres[..., 0] + half, centres[..., 1] + half], axis=-1)
  all_masks = np.zeros((C, T, H, H), np.uint8)
  all_masks[:n] = masks
  identity = np.full((C,), -1, np.int32)
  identity[:n] = ids
  valid = np.zeros((C,), bool)
  valid[:n] = True
  references = np.zeros((C, k, r, r, 3), np.uint8)
  reference_mattes = np.zeros((C, k, r, r), np.uint8)
  for c in range(n):
    references[c], reference_mattes[c] = _references(cfg, seed, index, c, idents[c])

  return dict(frames=frames, boxes=boxes, masks=all_masks, identity_ids=identity,
              character_valid=valid, references=references, reference_mattes=reference_mattes,
              prompt=prompts.describe([p.attributes() for p in idents]))


def references_rgba(clip: dict, character: int = 0) -> np.ndarray:
  """A character's reference portraits as RGBA uint8 [K, R, R, 4]: the colours,
  and the head matte as alpha (255 on the head), as users give a matte."""
  alpha = clip["reference_mattes"][character].astype(np.uint8) * np.uint8(255)
  return np.concatenate([clip["references"][character], alpha[..., None]], axis=-1)


def render_record(cfg: WorldConfig, seed: int, index: int, split: str = "train") -> dict:
  """A dataset record: `render_clip(cfg, seed, index, split=split)` plus `index` (int64 scalar)."""
  record = render_clip(cfg, seed, index, split=split)
  record["index"] = np.int64(index)
  return record
