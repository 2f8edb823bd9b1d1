"""How much memory sampling a clip needs, checked before sampling starts.

An estimate, not a measurement: it counts the tensors that dominate one
sampler step of VideoDiT (parameters, the clips and the guidance passes'
velocities, the block activations, and the largest attention score matrix,
which grows with the square of the frames in temporal attention). It errs
high, so a clip it accepts fits, and it is cheap enough to run before the
model loads. The parameters are counted exactly, at their size on one device
of the mesh: an abstract init (no FLOPs, no memory) laid out by the rules
table, as `Generator.from_workdir` restores them.
"""

import functools
import math
import os

import jax

from idjax import models
from idjax import restore
from idjax import sharding
from idjax.configlib import UsageError
from idjax.models.wan.identity_dit import dummy_text_embeddings

_F32 = 4


def guidance_passes(text_guidance: float, identity_guidance: float) -> int:
  """Model evaluations per step: what the Generator and chunked extension run."""
  if text_guidance == 1.0 and identity_guidance == 1.0:
    return 1
  return 2 if text_guidance == 1.0 else 3


def param_bytes_per_device(config, mesh=None) -> int:
  """Bytes of the video model's params on the device holding the most of
  them, each param sharded over `mesh` (default: config.mesh over every
  device) as config.sharding.rules place it.

  The face encoder's sizes, which set two small input projections, are not
  in the video config; `dummy_inputs`' stand-ins are used (a few thousand
  parameters' difference at the shipped widths).
  """
  m = config.model
  mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
  pt, ph, pw = (int(v) for v in m.patch_size)
  args = models.dummy_inputs(m, batch=1, frames=pt, height=ph, width=pw, text_len=1,
                             num_chars=int(m.max_characters))
  model = models.build_model(m)
  init = functools.partial(model.init, **dummy_text_embeddings(model, 1, 1))
  boxed = jax.eval_shape(init, jax.random.key(0), *args)["params"]
  per_device = {}
  for a in jax.tree.leaves(restore.abstract_params(boxed, mesh, config.sharding.rules)):
    shard = math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
    for device in a.sharding.device_set:
      per_device[device] = per_device.get(device, 0) + shard
  return max(per_device.values())


def model_frames(num_frames: int, temporal_factor: int = 1) -> int:
  """Frames of the grid the model diffuses: the clip's, or the latent frames of
  an autoencoder that encodes frame 0 alone and then `temporal_factor` frames
  per latent frame (rounded down for other counts, which sampling refuses)."""
  if temporal_factor == 1:
    return num_frames
  return 1 + max(num_frames - 1, 0) // temporal_factor


def sampling_bytes(config, num_frames: int, batch: int, passes: int = 3,
                   side: int | None = None, *, params: int | None = None,
                   temporal_factor: int = 1) -> int:
  """Peak bytes of one sampler step on `batch` clips of `num_frames` frames
  (one device's share), for a video config (`model`, `data` sections).
  `side`: of the grid the model diffuses (the frame in pixel space, the
  latent grid in latent space; default data.resolution). `params`: the
  params' bytes per device (default: `param_bytes_per_device(config)`).
  `temporal_factor`: the autoencoder's frames per latent frame."""
  m, d = config.model, config.data
  pt, ph, pw = (int(v) for v in m.patch_size)
  height = width = int(d.resolution if side is None else side)
  act = 2 if str(m.dtype) in ("bfloat16", "float16") else _F32
  grid_frames = model_frames(num_frames, temporal_factor)
  t, p = math.ceil(grid_frames / pt), (height // ph) * (width // pw)
  tokens = batch * t * p
  w, heads, ratio = int(m.width), int(m.num_heads), float(m.mlp_ratio)
  params = param_bytes_per_device(config) if params is None else params
  clip = batch * grid_frames * height * width * _F32
  clips = clip * (int(m.channels) * (3 + passes) + int(d.max_characters))  # x, v's, masks
  clips += batch * num_frames * int(d.resolution) ** 2 * 3 * _F32          # decoded frames
  hidden = tokens * w * act * (8 + 2 * ratio)
  spatial = batch * t * heads * p * p * _F32 * 2        # scores and probabilities
  temporal = batch * p * heads * t * t * _F32 * 2
  return int(params + clips + hidden + max(spatial, temporal))


def available_bytes() -> tuple[int, str]:
  """(bytes one device may use, where that figure comes from)."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return free, f"free memory of one {device.device_kind}"
  # CPU devices (simulated ones too) share the host's memory.
  count = jax.local_device_count()
  available = _host_available_bytes()
  where = "available host memory" + (f" shared by {count} devices" if count > 1 else "")
  return available // count, where


def _host_available_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return 1 << 62  # unknown: do not refuse


def _gib(n: int) -> str:
  return f"{n / 2**30:.1f} GiB"


def check_fits(config, num_frames: int, passes: int = 3, side: int | None = None,
               flag: str = "--frames", mesh=None, temporal_factor: int = 1) -> None:
  """UsageError, with the estimate, the limit and the longest clip that fits,
  when sampling `num_frames` frames would not fit on a device (arguments as
  `sampling_bytes`; the batch is config.sample.per_device_batch; `mesh`: where
  the params are sharded, default config.mesh)."""
  batch = int(config.sample.per_device_batch)
  params = param_bytes_per_device(config, mesh)
  estimate = lambda frames: sampling_bytes(config, frames, batch, passes, side, params=params,
                                           temporal_factor=temporal_factor)
  need = estimate(num_frames)
  limit, where = available_bytes()
  if need <= limit:
    return
  lo, hi = 0, num_frames  # the longest length that fits (estimates grow with length)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    fits = estimate(mid) <= limit
    lo, hi = (mid, hi) if fits else (lo, mid - 1)
  pt = int(config.model.patch_size[0])
  longest = lo - lo % pt
  if temporal_factor > 1:  # 1 + f k frames, whose latent frames the patch divides
    latent = model_frames(lo, temporal_factor)
    latent -= latent % pt
    longest = 1 + temporal_factor * (latent - 1) if latent >= 1 else 0
  raise UsageError(
      f"{flag} {num_frames} needs about {_gib(need)} per device to sample (an estimate), more "
      f"than the {_gib(limit)} of {where}; "
      + (f"at most {longest} frames fit." if longest >= 1 else "not even one frame fits."))
