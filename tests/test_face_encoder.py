"""FaceEncoder, ArcFace, training and the frozen save/load round trip."""

import json
import os
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from idjax.face import arcface, boxes as face_boxes
from idjax.face.encoder import FaceEncoder, encoder_from_config
from idjax.face.frozen import FrozenFaceEncoder, save_face_encoder
from idjax.face import train as face_train
from idjax.face.verification import run_verification

from helpers import saved_state


def _tiny_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      kind="face_encoder", architecture="resnet", seed=0, input_size=16,
      width=8, num_stages=3, blocks_per_stage=1, groups=4, embed_dim=16,
      context=1.25, box_jitter=0.05, steps=30, batch_size=32, lr=3e-3,
      warmup_steps=5, weight_decay=5e-4, margin=0.3, scale=16.0, log_every=10))
  config.update(overrides)
  return config


def _uniform(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def _init(module, *args):
  # Partitionable threefry compiles very slowly on CPU; tests need no mesh.
  with jax.threefry_partitionable(False):
    return jax.jit(module.init)(jax.random.key(0), *args)


# ---------------------------------------------------------------- ArcFace


def _numpy_arcface(cos, labels, m, s):
  theta = np.arccos(np.clip(cos, -1, 1))
  logits = s * cos.copy()
  rows = np.arange(len(labels))
  target = theta[rows, labels] + m
  logits[rows, labels] = np.where(
      target < np.pi, s * np.cos(target),
      s * (cos[rows, labels] - np.sin(np.pi - m) * m))
  logits -= logits.max(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -logp[rows, labels].mean()


def test_arcface_matches_numpy():
  cos = np.array([[0.9, 0.1, -0.3], [0.2, 0.5, 0.4], [-0.2, 0.3, -0.99]])
  labels = np.array([0, 2, 2])  # the last sample's theta + m passes pi
  got = arcface.arcface_loss(jnp.asarray(cos), jnp.asarray(labels), 0.5, 10.0)
  np.testing.assert_allclose(got, _numpy_arcface(cos, labels, 0.5, 10.0),
                             rtol=1e-5)


def test_margin_increases_loss_and_zero_margin_is_softmax():
  cos = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, 5)), jnp.float32)
  labels = jnp.arange(6) % 5
  plain = arcface.arcface_loss(cos, labels, 0.0, 8.0)
  softmax = jnp.mean(-jax.nn.log_softmax(8.0 * cos)[jnp.arange(6), labels])
  np.testing.assert_allclose(plain, softmax, rtol=1e-5)
  assert arcface.arcface_loss(cos, labels, 0.3, 8.0) > plain + 1e-3


def test_arcface_gradient_finite_at_extremes():
  cos = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
  grad = jax.grad(lambda c: arcface.arcface_loss(c, jnp.array([0, 0]), 0.5, 30.0))(cos)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_head_outputs_cosines():
  head = arcface.ArcFaceHead(7)
  emb = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
  params = nn.unbox(_init(head, emb))
  cos = head.apply(params, emb)
  centres = np.asarray(params["params"]["centres"])
  centres = centres / np.linalg.norm(centres, axis=0, keepdims=True)
  unit = np.asarray(emb) / np.linalg.norm(emb, axis=1, keepdims=True)
  np.testing.assert_allclose(cos, unit @ centres, atol=1e-5)


# ---------------------------------------------------------------- encoder


def test_encoder_shapes_unit_norm_and_axis_names():
  encoder = FaceEncoder(widths=(8, 16), blocks=(1, 1), embed_dim=24, groups=4)
  crops = _uniform((5, 16, 16, 3))
  variables = _init(encoder, crops)
  apply = jax.jit(encoder.apply)
  emb, fmap = apply(nn.unbox(variables), crops)
  chex.assert_shape(emb, (5, 24))
  chex.assert_shape(fmap, (5, 8, 8, 16))
  chex.assert_type([emb, fmap], jnp.float32)
  np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["stem"]["kernel"]) == (None, None, "conv_in", "conv_out")
  assert tuple(specs["embedding"]["kernel"]) == ("mlp", "embed")
  assert not any("batch_stats" in k for k in variables)  # no BatchNorm state
  # GroupNorm, not BatchNorm: an example's outputs ignore its batch mates.
  others = _uniform((5, 16, 16, 3), seed=2)
  emb2, fmap2 = apply(nn.unbox(variables), others.at[2].set(crops[2]))
  np.testing.assert_allclose(emb2[2], emb[2], atol=1e-5)
  np.testing.assert_allclose(fmap2[2], fmap[2], atol=1e-5)


# ---------------------------------------------------------------- training


def _synthetic_faces(num_classes=6, per_class=12, size=20, seed=0):
  """Each class a fixed random colour pattern; samples add noise."""
  rng = np.random.default_rng(seed)
  protos = rng.uniform(40, 215, (num_classes, 5, 5, 3))
  protos = np.repeat(np.repeat(protos, 4, 1), 4, 2)              # 20 x 20
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  images = protos[labels] + rng.normal(0, 20, (len(labels), size, size, 3))
  return np.clip(images, 0, 255).astype(np.uint8), labels


def _logged(workdir):
  return [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]


def test_training_loss_falls(tmp_path):
  """Through the shared loop: batch split over the 8 devices, metrics written."""
  images, labels = _synthetic_faces()
  config = _tiny_config(num_stages=2, stem_stride=2)
  params, metrics = face_train.fit(config, images, labels, str(tmp_path), progress=False)
  losses = [line["loss"] for line in _logged(tmp_path)]
  assert [line["step"] for line in _logged(tmp_path)] == [10, 20, 30]
  assert losses[-1] < 0.5 * losses[0], losses
  assert metrics["step"] == 30 and metrics["loss"] == losses[-1]
  chex.assert_shape(params["embedding"]["kernel"], (4 * 4 * 16, 16))
  assert isinstance(params["embedding"]["kernel"], np.ndarray)


# Three short runs (about 30 s on 2 cores): in the slow set, which CI runs;
# the video trainer's resume test (test_checkpoint.py) stays in the default run.
@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
  """Stopped at step 6 (a checkpoint, as SIGTERM leaves one), or killed after
  step 6 with only step 4's checkpoint on disk: either way, training on from
  the checkpoint ends bit-identical to a run never interrupted (params, Adam
  moments, counters, and the encoder params it returns)."""
  images, labels = _synthetic_faces()
  config = _tiny_config(num_stages=2, stem_stride=2, steps=12, log_every=2,
                        checkpoint_every=4, keep_checkpoints=5)
  run = lambda work, **kw: face_train.fit(config, images, labels, str(work), progress=False, **kw)
  straight_params, _ = run(tmp_path / "straight")
  expected = saved_state(str(tmp_path / "straight"))
  assert int(expected["step"]) == 12 and expected["ema_params"] is None

  stopped = tmp_path / "stopped"
  params, metrics = run(stopped, stop_at=6)
  assert params is None and metrics["step"] == 6
  assert sorted(int(d) for d in os.listdir(stopped / "checkpoints")) == [4, 6]
  killed = tmp_path / "killed"
  shutil.copytree(stopped, killed)
  shutil.rmtree(killed / "checkpoints" / "6")  # what a SIGKILL after step 6 leaves
  for work, resumed_from in ((stopped, 6), (killed, 4)):
    params, metrics = run(work)
    assert metrics["step"] == 12
    chex.assert_trees_all_equal(saved_state(str(work)), expected)
    chex.assert_trees_all_equal(params, straight_params)
    # The resumed steps log the same numbers as the uninterrupted run.
    logged = {line["step"]: line for line in _logged(tmp_path / "straight")}
    for line in _logged(work)[-((12 - resumed_from) // 2):]:
      for key in ("loss", "grad_norm", "lr", "skipped"):
        assert line[key] == logged[line["step"]][key], (work, line["step"], key)


def test_jittered_boxes_stay_near_the_face_box():
  boxes = face_boxes.jittered_boxes(np.random.default_rng(0), 1000, 1.25, 0.05)
  side = boxes[:, 2:] - boxes[:, :2]
  np.testing.assert_allclose(side[:, 0], side[:, 1], atol=1e-6)  # square
  assert float(jnp.min(side)) >= 0.8 * 0.95 - 1e-6
  assert float(jnp.max(side)) <= 0.8 * 1.05 + 1e-6
  centre = (boxes[:, 2:] + boxes[:, :2]) / 2
  assert float(jnp.max(jnp.abs(centre - 0.5))) <= 0.05 * 0.8 + 1e-6


# ---------------------------------------------------------------- frozen


def test_save_load_round_trip(tmp_path):
  config = _tiny_config()
  encoder = encoder_from_config(config)
  params = nn.unbox(_init(encoder, jnp.zeros((1, 16, 16, 3))))["params"]
  save_face_encoder(tmp_path, config, params)
  loaded = FrozenFaceEncoder.from_workdir(tmp_path)
  assert (loaded.input_size, loaded.embed_dim) == (16, 16)
  assert (loaded.feature_cells, loaded.feature_dim) == (16, 32)
  crops = _uniform((3, 16, 16, 3), seed=4)
  chex.assert_trees_all_equal(loaded.params, params)
  apply = jax.jit(loaded.apply)
  emb, fmap = apply(loaded.params, crops)
  ref_emb, ref_fmap = apply(params, crops)
  np.testing.assert_array_equal(emb, ref_emb)
  np.testing.assert_array_equal(fmap, ref_fmap)
  direct_emb, direct_fmap = encoder.apply({"params": params}, crops)
  np.testing.assert_allclose(fmap, direct_fmap.reshape(3, 16, 32), atol=1e-5)

  # embed_uint8 resizes with the full box: an image of the input size as is.
  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
  direct, _ = encoder.apply({"params": params}, images / 127.5 - 1.0)
  np.testing.assert_allclose(loaded.embed_uint8(images), direct, atol=1e-5)
  chex.assert_shape(loaded.embed_uint8(np.zeros((0, 40, 40, 3), np.uint8)), (0, 16))


def test_from_workdir_without_encoder_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="holds no face encoder"):
    FrozenFaceEncoder.from_workdir(tmp_path)


# ---------------------------------------------------------------- IResNet


def _torch_style_state_dict(widths, embed_dim, seed=0):
  """A random arcface_torch IResNet-18 state dict (OIHW convs), built by hand."""
  rng = np.random.default_rng(seed)
  state = {}

  def bn(prefix, n):
    state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
    state[f"{prefix}.bias"] = rng.normal(0, 0.1, n).astype(np.float32)
    state[f"{prefix}.running_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
    state[f"{prefix}.running_var"] = rng.uniform(0.5, 2, n).astype(np.float32)
    state[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)

  def conv(name, o, i, k):
    state[name] = rng.normal(0, (i * k * k) ** -0.5, (o, i, k, k)).astype(np.float32)

  conv("conv1.weight", widths[0], 3, 3)
  bn("bn1", widths[0])
  state["prelu.weight"] = rng.uniform(0, 0.5, widths[0]).astype(np.float32)
  inplanes = widths[0]
  for stage, width in enumerate(widths):
    for block in range(2):
      p = f"layer{stage + 1}.{block}"
      bn(f"{p}.bn1", inplanes)
      conv(f"{p}.conv1.weight", width, inplanes, 3)
      bn(f"{p}.bn2", width)
      state[f"{p}.prelu.weight"] = rng.uniform(0, 0.5, width).astype(np.float32)
      conv(f"{p}.conv2.weight", width, width, 3)
      bn(f"{p}.bn3", width)
      if block == 0:
        conv(f"{p}.downsample.0.weight", width, inplanes, 1)
        bn(f"{p}.downsample.1", width)
      inplanes = width
  bn("bn2", widths[-1])
  state["fc.weight"] = rng.normal(0, 0.05, (embed_dim, widths[-1] * 49)).astype(np.float32)
  state["fc.bias"] = np.zeros(embed_dim, np.float32)
  bn("features", embed_dim)
  return state


def _write_safetensors(path, state):
  import json
  header, blobs, offset = {}, [], 0
  for name, value in state.items():
    raw = np.ascontiguousarray(value).tobytes()
    dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[value.dtype]
    header[name] = dict(dtype=dtype, shape=list(value.shape),
                        data_offsets=[offset, offset + len(raw)])
    blobs.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def _numpy_stem(x, state):
  """conv3x3 (pad 1) + BatchNorm + PReLU of the stem, NCHW like PyTorch."""
  w = state["conv1.weight"]
  x = np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
  height, width = x.shape[2] - 2, x.shape[3] - 2
  y = sum(np.einsum("nihw,oi->nohw", x[:, :, dy:dy + height, dx:dx + width],
                    w[:, :, dy, dx]) for dy in range(3) for dx in range(3))
  c = lambda v: v[None, :, None, None]
  y = (y - c(state["bn1.running_mean"])) / np.sqrt(c(state["bn1.running_var"]) + 1e-5)
  y = y * c(state["bn1.weight"]) + c(state["bn1.bias"])
  y = np.where(y > 0, y, c(state["prelu.weight"]) * y)
  return y.transpose(0, 2, 3, 1)


def test_iresnet_converter_round_trip(tmp_path):
  from idjax.face import iresnet

  widths, embed_dim = (4, 8, 8, 8), 16
  state = _torch_style_state_dict(widths, embed_dim)
  _write_safetensors(tmp_path / "r18.safetensors", state)
  np.savez(tmp_path / "r18.npz", **state)
  from_st = iresnet.convert_state_dict(
      iresnet.load_state_dict(str(tmp_path / "r18.safetensors")), 18)
  from_npz = iresnet.convert_state_dict(
      iresnet.load_state_dict(str(tmp_path / "r18.npz")), 18)
  chex.assert_trees_all_equal(from_st, from_npz)

  module = iresnet.IResNet(depth=18, embed_dim=embed_dim, widths=widths)
  x = _uniform((2, 112, 112, 3))
  expected = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
  chex.assert_trees_all_equal_shapes(from_st, expected)  # every name mapped

  (emb, fmap), inter = module.apply(
      {"params": from_st}, x, capture_intermediates=lambda m, _: m.name == "prelu")
  chex.assert_shape([emb, fmap], [(2, embed_dim), (2, 7, 7, 8)])
  np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(inter["intermediates"]["prelu"]["__call__"][0],
                             _numpy_stem(np.asarray(x), state), atol=1e-4)

  # The CLI writes a workdir FrozenFaceEncoder loads; bad input exits 2.
  assert iresnet.main(["--weights", str(tmp_path / "r18.npz"), "--depth", "18",
                       "--workdir", str(tmp_path / "w")]) == 0
  loaded = FrozenFaceEncoder.from_workdir(tmp_path / "w")
  assert (loaded.input_size, loaded.embed_dim, loaded.feature_cells) == (112, 16, 49)
  np.testing.assert_allclose(loaded.apply(loaded.params, x)[0], emb, atol=1e-6)
  assert iresnet.main(["--weights", str(tmp_path / "missing.npz"), "--depth",
                       "18", "--workdir", str(tmp_path / "w")]) == 2
  del state["fc.bias"]
  np.savez(tmp_path / "broken.npz", **state)
  with pytest.raises(ValueError, match="no tensor fc.bias"):
    iresnet.convert_state_dict(iresnet.load_state_dict(str(tmp_path / "broken.npz")), 18)


@pytest.mark.slow
def test_train_face_encoder_end_to_end(tmp_path):
  """Renders a tiny world, trains, saves and verifies (writes all outputs)."""
  config = _tiny_config(
      num_train_identities=12, identity_start=0, resolutions=(32,),
      clips_per_identity=1, frames_per_clip=2, references_per_clip=2,
      render_seed=3, steps=20)
  config.verification = ml_collections.ConfigDict(
      dict(resolutions=(32,), num_identities=8, seed=11))
  metrics = face_train.train_face_encoder(config, tmp_path)
  saved = json.loads((tmp_path / "verification.json").read_text())
  assert saved["32"]["num_pairs"] == 16
  assert saved["32"]["accuracy"] == metrics["heldout_accuracy_32"]
  # A fraction of the 16 held-out pairs, with the threshold fitted on train pairs.
  assert metrics["heldout_accuracy_32"] * 16 == round(metrics["heldout_accuracy_32"] * 16)
  loaded = FrozenFaceEncoder.from_workdir(tmp_path)
  assert loaded.config.num_train_identities == 12
  # The saved encoder reproduces every reported number (the protocol run again
  # on the loaded params: crop size 16, 32-px clips, seed 11 + 32, thresholds
  # fitted on the 8 train identities after the 12 it was trained on).
  again = run_verification(loaded.embed_uint8, crop_size=16, resolution=32, num_identities=8,
                           seed=11 + 32, threshold_start=12)
  assert again == pytest.approx(saved["32"], abs=1e-6)


def test_a_trained_encoder_is_never_retrained_over(tmp_path, monkeypatch):
  """train.py on a finished face-encoder workdir reports it and changes nothing."""
  from idjax.face import train as face_train
  (tmp_path / "verification.json").write_text('{"64": {"accuracy": 0.9, "auc": 0.95}}')
  before = (tmp_path / "verification.json").read_bytes()
  def must_not_render(config):
    raise AssertionError("retraining started")
  monkeypatch.setattr(face_train, "build_training_set", must_not_render)
  assert face_train.train_face_encoder(None, str(tmp_path)) == {"heldout_accuracy_64": 0.9}
  assert (tmp_path / "verification.json").read_bytes() == before
