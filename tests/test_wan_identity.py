"""Identity adapters on the Wan backbone (idjax/models/wan/identity_dit.py, configs/wan_*.py).

A fresh adapter leaves the backbone's output bit for bit; strength 0 is no
references; training with train.trainable = "adapters" moves the adapters
only and keeps no optimizer state or EMA for the backbone; a sharded forward
equals one device's; configs/wan_tiny.py trains through train.py; the 1.3B
config counts the published backbone's parameters plus the adapters'.
"""

import os

import chex
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from idjax import config_rules, configlib, models, restore, sharding
from idjax.autoencoder import save_autoencoder
from idjax.models import dit
from idjax.models.wan.transformer import WanTransformer
from idjax.train import checkpoint, trainer
from idjax.train.state import trainable_filter
from helpers import (
    ROOT,
    TINY_TRAIN_ARGS,
    init_random,
    mesh_for,
    numpy_batch,
    put_batch,
    random_inputs,
    run_train,
    saved_state,
    small_wan_model,
    tiny_autoencoder,
    tiny_face_encoder,
    write_tiny_face_encoder,
)

RULES = sharding.DEFAULT_RULES
WAN_1_3B_PARAMS = 1_418_996_800  # diffusers' count for Wan2.1-T2V-1.3B's transformer


def _load(name):
  return configlib.load_config_file(os.path.join(ROOT, "configs", name + ".py"))


@pytest.fixture(scope="module")
def small():
  cfg = small_wan_model(_load("wan_tiny").model)
  model = models.build_model(cfg)
  args = random_inputs(cfg, batch=2, frames=4, size=16, chars=2, refs=2)
  return cfg, model, args


def _paths(tree):
  return {"/".join(p): leaf for p, leaf in traverse_util.flatten_dict(tree).items()}


def _backbone_alone(model, params, x, t, tokens):
  """The published Wan DiT on the same params and text, without any identity path."""
  text = params["prompt_embedding"]["embedding"][tokens] * (tokens != 0)[..., None]
  backbone = WanTransformer(
      patch_size=model.patch_size,
      num_heads=model.num_heads,
      head_dim=model.head_dim,
      in_channels=model.channels,
      out_channels=model.channels,
      text_dim=model.text_dim,
      freq_dim=model.freq_dim,
      ffn_dim=model.ffn_dim,
      num_layers=model.num_layers,
      cross_attn_norm=True,
      eps=1e-6,
      rope_max_seq_len=1024,
      remat_policy=model.remat_policy,
  )
  wan_params = dict(params["backbone"])
  wan_params["blocks"] = {k: v for k, v in wan_params["blocks"].items() if k != "identity"}
  return backbone.apply({"params": wan_params}, x, 1000.0 * t, text)


def test_fresh_adapters_leave_the_backbone_output_bit_identical(small):
  cfg, model, args = small
  # Random everything (the identity path acts up to its last projection),
  # except what init zeroes: the identity attentions' output projection
  # (checked on a real init in the training test below).
  params = init_random(model, args, scale=0.3)
  out_proj = params["backbone"]["blocks"]["identity"]["attn"]["out"]
  out_proj["kernel"] = jnp.zeros_like(out_proj["kernel"])
  x, t, tokens, identity, strength = args
  got = jax.jit(model.apply)({"params": params}, *args)
  expected = jax.jit(lambda p: _backbone_alone(model, p, x, t, tokens))(params)
  assert np.abs(np.asarray(expected)).max() > 0.1
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_strength_zero_equals_no_references(small):
  cfg, model, args = small
  params = init_random(model, args, scale=0.3)  # every adapter switched on
  x, t, tokens, identity, _ = args
  apply = jax.jit(model.apply)
  none = apply({"params": params}, x, t, tokens, None, None)
  zero = apply({"params": params}, x, t, tokens, identity, jnp.zeros((2,)))
  full = apply({"params": params}, x, t, tokens, identity, jnp.ones((2,)))
  np.testing.assert_array_equal(np.asarray(zero), np.asarray(none))
  assert np.abs(np.asarray(full) - np.asarray(none)).max() > 1e-3


def test_sharded_forward_matches_single_device(small, devices):
  cfg, model, args = small
  params = init_random(model, args, scale=0.3)
  expected = np.asarray(jax.jit(model.apply)({"params": params}, *args))
  mesh = sharding.make_mesh(dict(fsdp=2, tensor=2, sequence=2), devices)
  abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
  param_sh = sharding.tree_shardings(nn.get_partition_spec(abstract), mesh, RULES)["params"]
  by_batch = lambda a: sharding.batch_sharding(mesh, a.ndim, RULES)
  x_sh = sharding.logical_to_sharding(("batch", "frames", None, None, None), mesh, RULES)
  x, t, tokens, ident, strength = args
  in_sh = (x_sh, by_batch(t), by_batch(tokens), jax.tree.map(by_batch, ident), by_batch(strength))
  with sharding.activation_sharding(mesh, RULES):
    fn = jax.jit(
        lambda p, *a: model.apply({"params": p}, *a),
        in_shardings=(param_sh,) + in_sh,
        out_shardings=x_sh,
    )
    sharded = jax.device_put(params, param_sh)
    y = fn(sharded, *jax.device_put(args, in_sh))
  kernel = sharded["backbone"]["blocks"]["ffn_fc1"]["kernel"]  # (layers, embed, mlp)
  assert len({str(s.index) for s in kernel.addressable_shards}) == 4
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5 * scale, rtol=1e-4)


def _train_config(trainable):
  """configs/wan_tiny.py in pixel space at helpers.numpy_batch's sizes."""
  config = _load("wan_tiny")
  config.model = small_wan_model(config.model, text_len=8, max_characters=1, space="pixel")
  config.autoencoder_workdir = ""
  d = config.data
  d.resolution, d.num_frames, d.reference_resolution = 16, 4, 16
  d.text_len, d.num_references, d.max_characters = 8, 2, 1
  tc = config.train
  tc.trainable, tc.batch_size, tc.steps, tc.warmup_steps, tc.lr = trainable, 8, 3, 1, 1e-2
  tc.id_loss_max_t, tc.id_loss_frames = 0.9, 2
  tc.lambda_id = 0.0  # compiles in half the time; train.py's run below has the identity loss
  return config


# Three train steps and a checkpoint round trip (about 20 s on 2 cores): in the slow set, which CI runs.
@pytest.mark.slow
def test_adapter_training_leaves_the_backbone_bit_identical(tmp_path):
  config = _train_config("adapters")
  model = models.build_model(config.model)
  setup = trainer.make_setup(config, model, tiny_face_encoder(), mesh_for(config, dict(data=2)))
  state = setup.init()
  before = _paths(jax.device_get(state.params))
  assert not np.any(before["backbone/blocks/identity/attn/out/kernel"])  # zero-initialised
  for step in range(3):
    state, metrics = setup.run_step(state, put_batch(numpy_batch(step), setup.mesh))
    assert metrics["applied"] == 1.0
  after = _paths(jax.device_get(state.params))
  is_adapter = trainable_filter("adapters", model)
  adapters = {p for p in before if is_adapter(tuple(p.split("/")))}
  assert any(p.startswith("backbone/blocks/identity/") for p in adapters)
  assert "prompt_embedding/embedding" in adapters
  for path in before:
    if path in adapters:
      assert np.any(after[path] != before[path]), f"adapter {path} did not move"
    else:
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
  # Optimizer state and EMA: the adapters' leaves only, nothing of the backbone.
  assert set(_paths(jax.device_get(state.ema_params))) == adapters
  adapter_size = sum(before[p].size for p in adapters)
  moments = [leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim > 0]
  assert sum(moments) == 2 * adapter_size  # Adam's mu and nu, adapters only
  assert adapter_size < 0.5 * sum(a.size for a in before.values())

  # Sampling's reader gets every param: the adapters' EMA, the backbone from `params`.
  manager = checkpoint.make_manager(tmp_path, config.train)
  checkpoint.save(manager, state)
  manager.wait_until_finished()
  manager.close()
  _, ema = restore.restore_ema(tmp_path, setup.abstract_state.params)
  ema, stored = _paths(jax.device_get(ema)), _paths(jax.device_get(state.ema_params))
  assert set(ema) == set(after)
  for path, value in ema.items():
    np.testing.assert_array_equal(value, stored[path] if path in adapters else after[path])


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("wan")
  write_tiny_face_encoder(root / "face")
  ae = tiny_autoencoder()
  save_autoencoder(str(root / "ae"), ae.config, nn.unbox(ae.params), ae.latent_mean, ae.latent_std)
  return root


# About a minute on 2 idle cores (a subprocess compiling the step, with its
# identity loss through the decoder, and the sampler), so not in the default run.
@pytest.mark.slow
def test_wan_tiny_trains_through_train_py(workdirs):
  """configs/wan_tiny.py shrunk (TINY_TRAIN_ARGS' sizes), 2 steps, then the end-of-run
  samples; with the backbone frozen, so the sampler reads the adapters' EMA and
  the backbone from the checkpoint's params."""
  work = workdirs / "video"
  # Keys configs/wan_tiny.py does not have (VideoDiT's text encoder).
  shared = [a for a in TINY_TRAIN_ARGS if "text_width" not in a and "text_layers" not in a]
  proc = run_train(
      "--config",
      "configs/wan_tiny.py",
      "--workdir",
      str(work),
      f"--config.face_encoder_workdir={workdirs / 'face'}",
      f"--config.autoencoder_workdir={workdirs / 'ae'}",
      "--config.model.channels=4",
      "--config.model.ffn_dim=48",
      "--config.model.text_dim=16",
      "--config.model.freq_dim=16",
      "--config.train.trainable=adapters",
      "--config.train.steps=2",
      "--config.train.log_every=1",
      "--config.sample.steps=2",
      "--config.sample.num_frames=2",
      *shared,
      env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Trained to step 2" in proc.stdout
  assert sorted(os.listdir(work / "samples"))
  # The checkpoint keeps the adapters' EMA only; readers complete it from the params.
  saved = saved_state(work)
  _, ema = checkpoint.load_inference(str(work))
  stored, full, params = _paths(saved["ema_params"]), _paths(ema), _paths(saved["params"])
  assert set(full) == set(params) and set(stored) < set(params)
  assert all(
      p.startswith(("identity/", "backbone/blocks/identity/", "prompt_embedding/")) for p in stored
  )
  for path, value in full.items():
    np.testing.assert_array_equal(value, stored.get(path, params[path]), err_msg=path)


def test_wan_1_3b_config_counts_the_published_backbone_plus_adapters():
  config = _load("wan_1_3b_identity")
  m = config.model
  model = models.build_model(m)
  assert (model.num_layers, model.num_heads * model.head_dim, model.ffn_dim) == (30, 1536, 8960)
  args = models.dummy_inputs(
      m,
      batch=1,
      frames=1,
      height=2,
      width=2,
      text_len=1,
      num_chars=m.max_characters,
      num_refs=config.data.num_references,
      face_embed_dim=512,
      face_feature_dim=512,
      face_cells=49,
  )
  text = jax.ShapeDtypeStruct((1, 1, m.text_dim), jnp.float32)
  abstract = jax.eval_shape(
      lambda text, *a: model.init(jax.random.key(0), *a, text_embeddings=text), text, *args
  )["params"]
  leaves = _paths(nn.meta.unbox(abstract))
  is_adapter = trainable_filter("adapters", model)
  adapter = sum(int(np.prod(a.shape)) for p, a in leaves.items() if is_adapter(tuple(p.split("/"))))
  backbone = {p: a for p, a in leaves.items() if not is_adapter(tuple(p.split("/")))}
  assert sum(int(np.prod(a.shape)) for a in backbone.values()) == WAN_1_3B_PARAMS
  assert {a.dtype for a in backbone.values()} == {jnp.dtype(jnp.bfloat16)}
  assert models.count_params(abstract) == WAN_1_3B_PARAMS + adapter
  print(f"wan_1_3b_identity: backbone {WAN_1_3B_PARAMS:,} + adapters {adapter:,} parameters")
  out = jax.eval_shape(
      lambda p, text, *a: model.apply({"params": p}, *a, text_embeddings=text),
      abstract,
      text,
      *args,
  )
  assert out.shape == args[0].shape and out.dtype == jnp.float32
  with pytest.raises(ValueError, match="text_embeddings"):
    jax.eval_shape(model.init, jax.random.key(0), *args)
  chex.assert_equal(config.train.trainable, "adapters")


def test_configs_saved_before_the_wan_backbone_build_the_project_model():
  old = _load("tiny").to_dict()
  del old["model"]["backbone"], old["train"]["trainable"]
  old = ml_collections.ConfigDict(old)
  assert isinstance(models.build_model(old.model), models.VideoDiT)
  filled = config_rules.with_absent_keys(old)
  assert (filled.model.backbone, filled.train.trainable) == ("idjax", "all")
  assert config_rules.violations(filled) == []
  assert set(dict(config_rules.VIDEO)["model.backbone"].choices) == set(dit.BACKBONES)
  wrong = _load("wan_tiny")
  wrong.model.prediction = "clean"
  wrong.model.num_heads = 24  # head size 4: too small to split into 3 even RoPE parts
  found = " ".join(config_rules.violations(wrong))
  assert "predicts velocity" in found and "must be even and >= 6" in found
