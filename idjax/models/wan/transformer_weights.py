"""Wan 2.1 DiT weights: a diffusers `transformer/` folder -> WanTransformer and its params.

Name mapping (diffusers -> Flax; `i` = block, stacked on the leading `layers`
axis of params["blocks"]; torch Linear weights [out, in] become kernels
[in, out]):

  patch_embedding.{weight [D,C,pt,ph,pw], bias}  -> patch_embedding (kernel [(pt ph pw C), D])
  condition_embedder.time_embedder.linear_{1,2}  -> time_embedder_{1,2}
  condition_embedder.time_proj                   -> time_proj
  condition_embedder.text_embedder.linear_{1,2}  -> text_embedder_{1,2}
  blocks.i.attn{1,2}.to_{q,k,v}                  -> blocks.attn{1,2}.{query,key,value} (kernel [D,N,H])
  blocks.i.attn{1,2}.to_out.0                    -> blocks.attn{1,2}.out (kernel [N,H,D])
  blocks.i.attn{1,2}.norm_{q,k}.weight [D]       -> blocks.attn{1,2}.norm_{q,k}.scale [N,H]
  blocks.i.norm2.{weight,bias}                   -> blocks.norm2.{scale,bias} (cross_attn_norm)
  blocks.i.ffn.net.0.proj, blocks.i.ffn.net.2    -> blocks.ffn_fc1, blocks.ffn_fc2
  blocks.i.scale_shift_table [1,6,D]             -> blocks.scale_shift_table [6,D]
  scale_shift_table [1,2,D], proj_out            -> scale_shift_table [2,D], proj_out
"""

import os

import jax.numpy as jnp
import numpy as np

from idjax import weight_files
from idjax.models.wan.transformer import WanTransformer

QK_NORMS = ("rms_norm_across_heads",)


def transformer_fields(config: dict) -> dict:
  """WanTransformer's architecture fields from a diffusers transformer/config.json.

  Refuses, in one sentence naming the key, what this module does not
  implement: the image-to-video variant and other q/k norms.
  """
  class_name = config.get("_class_name", "WanTransformer3DModel")
  if class_name != "WanTransformer3DModel":
    raise ValueError(f"config.json is for a {class_name}, not a WanTransformer3DModel.")
  for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
    if config.get(key) is not None:
      raise ValueError(
          f"config.json sets {key}={config[key]!r}, an image-to-video Wan model; "
          "only the text-to-video variant is supported."
      )
  qk_norm = config.get("qk_norm", "rms_norm_across_heads")
  if qk_norm not in QK_NORMS:
    raise ValueError(f"config.json key qk_norm must be one of {QK_NORMS}, got {qk_norm!r}.")
  freq_dim = int(config.get("freq_dim", 256))
  if freq_dim % 2:
    raise ValueError(f"config.json key freq_dim must be even, got {freq_dim}.")
  in_channels = int(config.get("in_channels", 16))
  return dict(
      patch_size=tuple(int(p) for p in config.get("patch_size", (1, 2, 2))),
      num_heads=int(config.get("num_attention_heads", 40)),
      head_dim=int(config.get("attention_head_dim", 128)),
      in_channels=in_channels,
      out_channels=int(config.get("out_channels") or in_channels),
      text_dim=int(config.get("text_dim", 4096)),
      freq_dim=freq_dim,
      ffn_dim=int(config.get("ffn_dim", 13824)),
      num_layers=int(config.get("num_layers", 40)),
      cross_attn_norm=bool(config.get("cross_attn_norm", True)),
      eps=float(config.get("eps", 1e-6)),
      rope_max_seq_len=int(config.get("rope_max_seq_len", 1024)),
  )


class _Tensors:
  """Takes tensors out of a state dict by name, checking each one's shape."""

  def __init__(self, state: dict, where: str, dtype):
    self.state, self.where, self.dtype, self.used = state, where, np.dtype(dtype), set()

  def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.state:
      raise ValueError(f"{self.where}: tensor {name!r} is missing; expected shape {shape}.")
    tensor = self.state[name]
    if tuple(tensor.shape) != tuple(shape):
      raise ValueError(
          f"{self.where}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}."
      )
    self.used.add(name)
    return np.asarray(tensor, self.dtype)

  def linear(self, name: str, d_in: int, d_out: int) -> dict:
    return {
        "kernel": self(f"{name}.weight", (d_out, d_in)).T,
        "bias": self(f"{name}.bias", (d_out,)),
    }


def _attention(get: _Tensors, prefix: str, heads: int, head_dim: int) -> dict:
  dim = heads * head_dim
  to_heads = lambda a: a.reshape(a.shape[:-1] + (heads, head_dim))
  out = {}
  for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
    lin = get.linear(f"{prefix}.{theirs}", dim, dim)
    out[ours] = {"kernel": to_heads(lin["kernel"]), "bias": to_heads(lin["bias"])}
  lin = get.linear(f"{prefix}.to_out.0", dim, dim)
  out["out"] = {"kernel": lin["kernel"].reshape(heads, head_dim, dim), "bias": lin["bias"]}
  for norm in ("norm_q", "norm_k"):
    out[norm] = {"scale": to_heads(get(f"{prefix}.{norm}.weight", (dim,)))}
  return out


def _block(get: _Tensors, i: int, f: dict) -> dict:
  dim = f["num_heads"] * f["head_dim"]
  p = f"blocks.{i}"
  block = {
      "attn1": _attention(get, f"{p}.attn1", f["num_heads"], f["head_dim"]),
      "attn2": _attention(get, f"{p}.attn2", f["num_heads"], f["head_dim"]),
      "ffn_fc1": get.linear(f"{p}.ffn.net.0.proj", dim, f["ffn_dim"]),
      "ffn_fc2": get.linear(f"{p}.ffn.net.2", f["ffn_dim"], dim),
      "scale_shift_table": get(f"{p}.scale_shift_table", (1, 6, dim))[0],
  }
  if f["cross_attn_norm"]:
    block["norm2"] = {
        "scale": get(f"{p}.norm2.weight", (dim,)),
        "bias": get(f"{p}.norm2.bias", (dim,)),
    }
  return block


def params_from_diffusers(
    state: dict, fields: dict, *, dtype=np.float32, where: str = "state dict"
) -> dict:
  """Flax params of WanTransformer(**fields) from diffusers' state dict {name: array}.

  Raises ValueError, in one sentence naming it and the expected shape, for a
  missing or misshapen tensor, and for tensors this module has no place for.
  """
  get = _Tensors(state, where, dtype)
  dim = fields["num_heads"] * fields["head_dim"]
  pt, ph, pw = fields["patch_size"]
  c_in, c_out = fields["in_channels"], fields["out_channels"]
  conv = get("patch_embedding.weight", (dim, c_in, pt, ph, pw))
  emb = "condition_embedder"
  per_block = [_block(get, i, fields) for i in range(fields["num_layers"])]
  params = {
      # The Conv3d with stride = kernel is a linear map of each patch, whose
      # entries idjax flattens in (pt ph pw c) order.
      "patch_embedding": {
          "kernel": np.transpose(conv, (2, 3, 4, 1, 0)).reshape(pt * ph * pw * c_in, dim),
          "bias": get("patch_embedding.bias", (dim,)),
      },
      "time_embedder_1": get.linear(f"{emb}.time_embedder.linear_1", fields["freq_dim"], dim),
      "time_embedder_2": get.linear(f"{emb}.time_embedder.linear_2", dim, dim),
      "time_proj": get.linear(f"{emb}.time_proj", dim, 6 * dim),
      "text_embedder_1": get.linear(f"{emb}.text_embedder.linear_1", fields["text_dim"], dim),
      "text_embedder_2": get.linear(f"{emb}.text_embedder.linear_2", dim, dim),
      "blocks": _stack(per_block),
      "scale_shift_table": get("scale_shift_table", (1, 2, dim))[0],
      "proj_out": get.linear("proj_out", dim, pt * ph * pw * c_out),
  }
  unused = sorted(set(state) - get.used)
  if unused:
    more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
    raise ValueError(
        f"{where}: the text-to-video Wan DiT has no place for tensor(s) "
        f"{', '.join(repr(n) for n in unused[:3])}{more}."
    )
  return params


def _stack(trees: list[dict]) -> dict:
  """Per-block param trees -> one tree with a leading `layers` axis (nn.scan's layout)."""
  first = trees[0]
  if isinstance(first, dict):
    return {k: _stack([t[k] for t in trees]) for k in first}
  return np.stack(trees)


def load_transformer(
    folder,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    attention_impl: str = "xla",
    remat_policy: str = "full",
):
  """(WanTransformer, params) from a diffusers-format `transformer/` folder.

  Params are NumPy arrays in `param_dtype` (bf16 files stay bf16 if asked
  for), as the module's init would lay them out; place them on devices with
  the shardings of nn.get_partition_spec(jax.eval_shape(model.init, ...)).
  """
  config, state = weight_files.read_diffusers_folder(folder)
  fields = transformer_fields(config)
  model = WanTransformer(
      **fields,
      attention_impl=attention_impl,
      remat_policy=remat_policy,
      dtype=dtype,
      param_dtype=param_dtype,
  )
  params = params_from_diffusers(
      state, fields, dtype=jnp.dtype(param_dtype), where=os.fspath(folder)
  )
  return model, params
