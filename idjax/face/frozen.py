"""A trained face encoder, loaded for frozen use by other parts of idjax.

A face-encoder workdir holds `config.json` (the face-encoder config) and
`params/` (an orbax checkpoint of the encoder's params, no optimizer state).
Both encoder families load through here: the project's ResNet
(`config.architecture == "resnet"`) and converted public IResNet weights
(`"iresnet"`).
"""

import einops
import jax
import jax.numpy as jnp
import numpy as np

from idjax import restore
from idjax.face.crop import crop_and_resize
from idjax.face.encoder import encoder_from_config

CONFIG_FILE = restore.CONFIG_FILE
PARAMS_DIR = restore.PARAMS_DIR


def build_encoder(config):
  """The Flax module a face-encoder config describes (`architecture` picks
  the family; configs/face_encoder.py and iresnet.iresnet_config set it)."""
  architecture = config.architecture
  if architecture == "resnet":
    return encoder_from_config(config)
  if architecture == "iresnet":
    # Imported here: `python -m idjax.face.iresnet` (the converter) would
    # otherwise be imported once by this package and again as __main__.
    from idjax.face.iresnet import IResNet

    return IResNet(depth=config.depth, embed_dim=config.embed_dim, widths=tuple(config.widths))
  # A saved config.json is not run through config_rules: this is its check.
  raise ValueError(
      f"Unknown face-encoder architecture {architecture!r}; expected 'resnet' or 'iresnet'."
  )


def save_face_encoder(workdir, config, params):
  """Writes `config.json` and the params checkpoint into `workdir`."""
  restore.save_params(workdir, config, params)


class FrozenFaceEncoder:
  """Config + params + pure apply of a trained face encoder.

  Attributes:
    config: the face-encoder ConfigDict it was trained (or converted) with.
    params: the encoder's params pytree.
    input_size: S, side of the square crops `apply` takes.
    embed_dim: D.
    feature_dim: F, channels of the feature map.
    feature_cells: h * w, cells of the feature map.
  """

  def __init__(self, config, params):
    self.config = config
    self.params = params
    self.module = build_encoder(config)
    self.input_size = int(config.input_size)
    probe = jax.ShapeDtypeStruct((1, self.input_size, self.input_size, 3), jnp.float32)
    emb, fmap = jax.eval_shape(self.apply, params, probe)
    self.embed_dim = int(emb.shape[-1])
    self.feature_cells, self.feature_dim = map(int, fmap.shape[1:])
    self._embed_batch = jax.jit(self._embed_images)

  @classmethod
  def from_workdir(cls, workdir) -> "FrozenFaceEncoder":
    """Loads a workdir written by `save_face_encoder` (params on one device;
    users replicate them over their mesh); ValueError if none."""
    config = restore.read_frozen_config(
        workdir,
        "face_encoder",
        label="a face-encoder",
        holds="face encoder",
        advice="train one with a face_encoder config first",
    )
    module = build_encoder(config)
    size = int(config.input_size)
    abstract = jax.eval_shape(
        module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    )
    return cls(config, restore.restore_params(workdir, abstract["params"]))

  def apply(self, params, crops):
    """Pure and jit-able.

    Args:
      params: encoder params (`self.params`, or a traced copy of them).
      crops: float [N, S, S, 3] in [-1, 1].

    Returns:
      emb float32 [N, D] unit norm, fmap float32 [N, h * w, F].
    """
    emb, fmap = self.module.apply({"params": params}, crops)
    return emb, einops.rearrange(fmap, "n h w f -> n (h w) f")

  def _embed_images(self, params, images):
    full = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0, 1.0]), images.shape[:1] + (4,))
    crops = crop_and_resize(images, full, self.input_size) / 127.5 - 1.0
    return self.apply(params, crops)[0]

  def embed_uint8(self, images, batch_size: int = 512) -> np.ndarray:
    """uint8 [N, h, w, 3] images of any size -> float32 [N, D] embeddings.

    Each whole image is resized (antialiased) to the encoder's input size.
    Batches are padded to a power of two (at most `batch_size`), so a few
    compilations per image size serve every call.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError("embed_uint8 expects images of shape [N, H, W, 3], " f"got {images.shape}.")
    batch_size = min(batch_size, 1 << max(len(images) - 1, 0).bit_length())
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start : start + batch_size]
      padded = np.zeros((batch_size,) + images.shape[1:], np.uint8)
      padded[: len(chunk)] = chunk
      emb = self._embed_batch(self.params, jnp.asarray(padded))
      out.append(np.asarray(emb[: len(chunk)]))
    if not out:
      return np.zeros((0, self.embed_dim), np.float32)
    return np.concatenate(out).astype(np.float32)
