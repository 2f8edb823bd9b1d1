"""The whole IResNet against PyTorch: converted weights give arcface_torch's numbers.

The fixture in tests/fixtures/iresnet/ is a tiny IResNet-18 (widths 8, 16, 16, 32;
D = 16) with random BatchNorm statistics, affines and PReLU slopes, and its outputs
on three 112 x 112 images computed by a PyTorch restatement of insightface's
`arcface_torch` IResNet in float64. Regenerate it with

  /work/torch-venv/bin/python scripts/parity/iresnet.py

No torch and no network here: the state dict is read with NumPy.
"""

import os
import subprocess
import sys

import chex
import einops
import jax
import numpy as np
import pytest

from idjax.face import iresnet
from idjax.face.frozen import FrozenFaceEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "iresnet")
WEIGHTS = os.path.join(FIXTURES, "tiny_iresnet.safetensors")
DEPTH, WIDTHS, EMBED_DIM = 18, (8, 16, 16, 32), 16
TOLERANCE = 1e-4  # float32 against a float64 reference, relative to the largest value


def _relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def reference():
  with np.load(os.path.join(FIXTURES, "tiny_iresnet_io.npz")) as f:
    ref = {k: f[k] for k in f.files}
  # The same float32 arithmetic as the script's input.
  ref["crops"] = ref["images"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return ref


@pytest.fixture(scope="module")
def params():
  return iresnet.convert_state_dict(iresnet.load_state_dict(WEIGHTS), DEPTH)


def _run(params, crops):
  """(unit embedding, feature map, {name: intermediate}) of the tiny IResNet."""
  module = iresnet.IResNet(depth=DEPTH, embed_dim=EMBED_DIM, widths=WIDTHS)
  keep = ("layer2_1", "features")  # the last block of stage 2; the pre-norm embedding

  @jax.jit
  def apply(params, crops):
    (emb, fmap), state = module.apply(
        {"params": params}, crops, capture_intermediates=lambda m, _: m.name in keep
    )
    return emb, fmap, {k: state["intermediates"][k]["__call__"][0] for k in keep}

  return apply(params, crops)


def test_converted_params_are_exactly_the_module_tree(params):
  module = iresnet.IResNet(depth=DEPTH, embed_dim=EMBED_DIM, widths=WIDTHS)
  probe = jax.ShapeDtypeStruct((1, 112, 112, 3), np.float32)
  expected = jax.eval_shape(module.init, jax.random.key(0), probe)["params"]
  chex.assert_trees_all_equal_shapes(params, expected)


def test_whole_network_matches_pytorch(params, reference):
  emb, fmap, seen = _run(params, reference["crops"])
  errors = {
      "layer2": _relative_error(seen["layer2_1"], reference["layer2"]),
      "feature_map": _relative_error(fmap, reference["feature_map"]),
      "embedding": _relative_error(seen["features"], reference["embedding"]),
      "unit_embedding": _relative_error(emb, _unit(reference["embedding"])),
  }
  print("relative errors against PyTorch:", errors)
  assert max(errors.values()) <= TOLERANCE, errors
  # The three images embed apart, so a match is not one of biases alone.
  cosines = _unit(reference["embedding"]) @ _unit(reference["embedding"]).T
  assert np.max(cosines[~np.eye(3, dtype=bool)]) < 0.5, cosines


def test_reference_catches_a_wrong_flatten_order(params, reference):
  """`fc` rows read as (h w c), the NHWC flatten, miss the reference by far."""
  wrong = dict(params)
  wrong["fc"] = dict(
      params["fc"],
      kernel=einops.rearrange(params["fc"]["kernel"], "(c h w) d -> (h w c) d", h=7, w=7),
  )
  emb, _, _ = _run(wrong, reference["crops"])
  assert _relative_error(emb, _unit(reference["embedding"])) > 100 * TOLERANCE


def test_cli_workdir_loads_and_matches_pytorch(tmp_path, params, reference):
  """`python -m idjax.face.iresnet` infers the tiny widths and D from the tensors."""
  workdir = str(tmp_path / "arcface_tiny")
  command = [sys.executable, "-m", "idjax.face.iresnet", "--weights", WEIGHTS,
             "--depth", str(DEPTH), "--workdir", workdir]  # fmt: skip
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert f"IResNet-{DEPTH} written to {workdir}" in done.stdout

  encoder = FrozenFaceEncoder.from_workdir(workdir)
  assert tuple(encoder.config.widths) == WIDTHS
  assert (encoder.input_size, encoder.embed_dim) == (112, EMBED_DIM)
  assert (encoder.feature_cells, encoder.feature_dim) == (49, WIDTHS[-1])
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, encoder.params), params)

  emb, fmap = jax.jit(encoder.apply)(encoder.params, reference["crops"])
  want_fmap = einops.rearrange(reference["feature_map"], "n h w f -> n (h w) f")
  assert _relative_error(emb, _unit(reference["embedding"])) <= TOLERANCE
  assert _relative_error(fmap, want_fmap) <= TOLERANCE
  # embed_uint8 at the input size resizes nothing: the same embeddings from uint8.
  from_uint8 = encoder.embed_uint8(reference["images"])
  assert _relative_error(from_uint8, _unit(reference["embedding"])) <= TOLERANCE
