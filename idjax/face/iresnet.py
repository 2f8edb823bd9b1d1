"""IResNet, the backbone of the public ArcFace models, for real faces.

Same layer layout and parameter names as insightface's `arcface_torch`
IResNet-18/34/50/100 (112x112 RGB input in [-1, 1], 512-d output). Used frozen
only, so every BatchNorm is stored in inference form, a per-channel
scale and shift folded from (weight, bias, running_mean, running_var).

The converter reads a PyTorch state dict exported as `.npz` (numpy.savez of
`{name: tensor.numpy()}`) or `.safetensors` (read here with NumPy, no extra
package), never a pickle:

  python -m idjax.face.iresnet --weights r50.safetensors --depth 50 --workdir runs/arcface_r50

The workdir then loads with `FrozenFaceEncoder.from_workdir` like a trained one.
"""

import argparse
import os
import sys
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from idjax import restore, weight_files

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3),
          100: (3, 13, 30, 3)}
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112
BN_EPS = 1e-5


class Affine(nn.Module):
  """Inference-form BatchNorm: x * scale + bias per channel (last axis)."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return x * scale + bias


class PReLU(nn.Module):
  @nn.compact
  def __call__(self, x):
    alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x > 0, x, alpha * x)


def _conv(features, kernel, strides, name):
  # Explicit symmetric padding: PyTorch's, which "SAME" differs from at stride 2.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, name=name)


class IBasicBlock(nn.Module):
  """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a (projected) shortcut."""
  features: int
  strides: int

  @nn.compact
  def __call__(self, x):
    y = Affine(name="bn1")(x)
    y = _conv(self.features, 3, 1, "conv1")(y)
    y = PReLU(name="prelu")(Affine(name="bn2")(y))
    y = _conv(self.features, 3, self.strides, "conv2")(y)
    y = Affine(name="bn3")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = Affine(name="downsample_bn")(
          _conv(self.features, 1, self.strides, "downsample_conv")(x))
    return x + y


class IResNet(nn.Module):
  """[N, 112, 112, 3] in [-1, 1] -> (unit embedding [N, D], fmap [N, 7, 7, F])."""
  depth: int = 50
  embed_dim: int = 512
  widths: Sequence[int] = WIDTHS

  @nn.compact
  def __call__(self, crops):
    x = _conv(self.widths[0], 3, 1, "conv1")(crops)
    x = PReLU(name="prelu")(Affine(name="bn1")(x))
    for stage, (width, count) in enumerate(zip(self.widths, LAYERS[self.depth])):
      for block in range(count):
        x = IBasicBlock(width, 2 if block == 0 else 1,
                        name=f"layer{stage + 1}_{block}")(x)
    feature_map = Affine(name="bn2")(x)
    # PyTorch flattens NCHW: keep its (c h w) order so `fc` maps one to one.
    flat = einops.rearrange(feature_map, "n h w c -> n (c h w)")
    emb = Affine(name="features")(nn.Dense(self.embed_dim, name="fc")(flat))
    emb = emb / jnp.sqrt(jnp.sum(emb * emb, axis=-1, keepdims=True) + 1e-12)
    return emb, feature_map


# ------------------------------------------------------------- weights


def load_state_dict(path) -> dict:
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  if path.endswith(".safetensors"):
    return {k: np.asarray(v) for k, v in weight_files.read_safetensors(path).items()}
  raise ValueError(f"{path}: expected a .npz or .safetensors state dict.")


def _affine(state, prefix):
  scale = state[f"{prefix}.weight"] / np.sqrt(state[f"{prefix}.running_var"] + BN_EPS)
  return {"scale": scale, "bias": state[f"{prefix}.bias"] - state[f"{prefix}.running_mean"] * scale}


def _conv_kernel(weight):  # PyTorch OIHW -> Flax HWIO
  return {"kernel": einops.rearrange(weight, "o i h w -> h w i o")}


def convert_state_dict(state: dict, depth: int) -> dict:
  """arcface_torch IResNet state dict -> Flax params of `IResNet(depth)`.

  Raises ValueError naming the first missing tensor.
  """
  state = {k.removeprefix("module."): np.asarray(v, np.float32)
           for k, v in state.items() if not k.endswith("num_batches_tracked")}
  try:
    params = {"conv1": _conv_kernel(state["conv1.weight"]),
              "bn1": _affine(state, "bn1"),
              "prelu": {"alpha": state["prelu.weight"]}}
    for stage, count in enumerate(LAYERS[depth]):
      for block in range(count):
        p = f"layer{stage + 1}.{block}"
        converted = {
            "bn1": _affine(state, f"{p}.bn1"),
            "conv1": _conv_kernel(state[f"{p}.conv1.weight"]),
            "bn2": _affine(state, f"{p}.bn2"),
            "prelu": {"alpha": state[f"{p}.prelu.weight"]},
            "conv2": _conv_kernel(state[f"{p}.conv2.weight"]),
            "bn3": _affine(state, f"{p}.bn3")}
        if f"{p}.downsample.0.weight" in state:
          converted["downsample_conv"] = _conv_kernel(state[f"{p}.downsample.0.weight"])
          converted["downsample_bn"] = _affine(state, f"{p}.downsample.1")
        params[f"layer{stage + 1}_{block}"] = converted
    params["bn2"] = _affine(state, "bn2")
    params["fc"] = {"kernel": state["fc.weight"].T, "bias": state["fc.bias"]}
    params["features"] = _affine(state, "features")
  except KeyError as e:
    raise ValueError(f"State dict has no tensor {e.args[0]}: not an "
                     f"IResNet-{depth} checkpoint.") from None
  return params


def iresnet_config(depth: int, widths=WIDTHS, embed_dim: int = 512):
  return ml_collections.ConfigDict(dict(
      kind="face_encoder", architecture="iresnet", depth=depth,
      widths=tuple(widths), embed_dim=embed_dim, input_size=INPUT_SIZE))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description="Convert published ArcFace IResNet weights to an idjax "
                  "face-encoder workdir.")
  parser.add_argument("--weights", required=True, help=".npz or .safetensors")
  parser.add_argument("--depth", type=int, default=50, choices=sorted(LAYERS))
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args(argv)
  try:
    if not os.path.isfile(args.weights):
      raise ValueError(f"{args.weights} does not exist.")
    params = convert_state_dict(load_state_dict(args.weights), args.depth)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # Widths and D come from the tensors, so slimmed variants convert too.
  widths = [params[f"layer{i + 1}_0"]["conv1"]["kernel"].shape[-1] for i in range(4)]
  embed_dim = params["fc"]["kernel"].shape[1]
  restore.save_params(args.workdir, iresnet_config(args.depth, widths, embed_dim), params)
  print(f"IResNet-{args.depth} written to {args.workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
