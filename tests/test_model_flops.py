"""Analytic FLOPs vs XLA's cost analysis; the shipped configs build."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from idjax import models
from helpers import init_random, random_inputs, tiny_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("overrides", [
    dict(),
    pytest.param(dict(reference_mode="joint", identity_routing="soft"),
                 marks=pytest.mark.slow),
], ids=["mean_hard", "joint_soft"])
def test_forward_flops_match_xla_cost_analysis(overrides):
  cfg = tiny_model_config(scan_blocks=False, width=64, num_heads=4, text_width=64, **overrides)
  model = models.build_model(cfg)
  b, t, size, chars, refs = 2, 4, 16, 2, 3
  args = random_inputs(cfg, batch=b, frames=t, size=size, chars=chars, refs=refs,
                       face_dim=8, feat_dim=8, cells=4)
  params = init_random(model, args)
  cost = jax.jit(model.apply).lower({"params": params}, *args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = models.forward_flops(cfg, b, t, size, size, cfg.text_len, chars, refs,
                                  face_embed_dim=8, face_feature_dim=8, face_cells=4)
  print(f"{overrides}: analytic {analytic:.4g}, XLA {cost['flops']:.4g}")
  assert abs(analytic / cost["flops"] - 1) < 0.10


def _report(name, face, clip):
  config = _load(name)
  cfg = config.model
  model = models.build_model(cfg)
  frames, res = clip
  args = models.dummy_inputs(cfg, batch=1, frames=frames, height=res, width=res,
                             text_len=cfg.text_len, num_chars=cfg.max_characters,
                             num_refs=config.data.num_references, **face)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
  out = jax.eval_shape(model.apply, abstract, *args)
  assert out.shape == args[0].shape and out.dtype == jnp.float32
  n = models.count_params(abstract["params"])
  flops = models.forward_flops(cfg, 1, frames, res, res, cfg.text_len, cfg.max_characters,
                               config.data.num_references, **face)
  print(f"{name}: {n:,} params, {flops / 1e9:.3f} GFLOPs forward per "
        f"{frames}x{res}x{res} sample")
  return n, flops


def test_tiny_config_builds():
  face = dict(face_embed_dim=128, face_feature_dim=64, face_cells=16)  # configs/face_encoder.py
  n, flops = _report("tiny", face, (8, 32))
  assert 0.2e6 < n < 5e6 and flops > 0


def test_base_config_builds_abstractly():
  face = dict(face_embed_dim=512, face_feature_dim=512, face_cells=49)  # IResNet ArcFace, 7x7
  base = _load("base")
  n, flops = _report("base", face, (base.data.num_frames, base.data.resolution))
  assert n > 400e6 and flops > 1e12
