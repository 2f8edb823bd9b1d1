"""Precomputed text embeddings (Wan's UMT5 output) by prompt: the file format, the
data pipeline, the train step and the Generator (idjax/data/text_embeddings.py)."""

import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from idjax import configlib, models, sharding, weight_files
from idjax.data import pipeline
from idjax.data.text_embeddings import TextEmbeddings, for_config, write_text_embeddings
from idjax.models.wan.identity_dit import dummy_text_embeddings
from idjax.sampling import cli
from idjax.sampling.generator import Generator
from idjax.train import trainer
from helpers import (
    ROOT,
    mesh_for,
    numpy_batch,
    put_batch,
    random_params,
    small_wan_model,
    tiny_face_encoder,
)

L, D = 8, 16  # helpers.numpy_batch's text length; the small model's text_dim


def _table(tmp_path, prompts, seed=0, lengths=None, dtype=np.float32):
  """A random table, row i zero after lengths[i] tokens (Wan's padding)."""
  rng = np.random.default_rng(seed)
  rows = rng.normal(size=(len(prompts), L, D)).astype(dtype)
  for i, n in enumerate(lengths or [L] * len(prompts)):
    rows[i, n:] = 0
  path = tmp_path / "text.safetensors"
  write_text_embeddings(path, prompts, rows)
  return TextEmbeddings(path), rows


def test_rows_come_back_by_prompt_with_their_token_mask(tmp_path):
  prompts = ["a person with pale skin", "two people: ...", 'ünïcode, "quoted"']
  table, rows = _table(tmp_path, prompts, lengths=[3, 8, 1], dtype=np.dtype("bfloat16"))
  assert (table.text_len, table.text_dim, table.prompts) == (L, D, prompts)
  for i, prompt in enumerate(prompts):
    mask, emb = table.lookup(prompt)
    np.testing.assert_array_equal(emb, rows[i])
    assert emb.dtype == rows.dtype
    np.testing.assert_array_equal(mask, np.arange(L) < [3, 8, 1][i])
  mask, emb = table.lookup("")  # no text: the all-zero context, no row needed
  assert not mask.any() and not emb.any() and "" in table
  table.check_shape(L, D)


def test_a_prompt_without_a_row_is_one_sentence(tmp_path):
  table, _ = _table(tmp_path, ["a person"])
  with pytest.raises(configlib.UsageError) as e:
    table.lookup("a person with glasses")
  message = str(e.value)
  assert "'a person with glasses'" in message and str(tmp_path) in message
  assert message.count(". ") == 0 and "\n" not in message


@pytest.mark.parametrize(
    "case", ["no_prompts", "wrong_count", "duplicates", "no_tensor", "rank", "missing", "shape"]
)
def test_bad_files_are_refused_in_one_sentence(tmp_path, case):
  path = tmp_path / "text.safetensors"
  rows = np.zeros((2, L, D), np.float32)
  metadata = {"prompts": '["a", "b"]'}
  tensors = {"embeddings": rows}
  if case == "no_prompts":
    metadata = {}
  elif case == "wrong_count":
    metadata = {"prompts": '["a"]'}
  elif case == "duplicates":
    metadata = {"prompts": '["a", "a"]'}
  elif case == "no_tensor":
    tensors = {"weights": rows}
  elif case == "rank":
    tensors = {"embeddings": rows[:, 0]}
  if case != "missing":
    weight_files.write_safetensors(path, tensors, metadata)
  with pytest.raises(configlib.UsageError) as e:
    table = TextEmbeddings(path)
    table.check_shape(L, D + 1)  # only "shape" gets this far
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def _wan_config(**data):
  config = configlib.load_config_file(os.path.join(ROOT, "configs", "wan_tiny.py"))
  config.model = small_wan_model(
      config.model, text_dim=D, text_len=L, max_characters=1, space="pixel", text_input="embeddings"
  )
  config.autoencoder_workdir = ""
  d = config.data
  d.update(
      dict(
          resolution=16,
          num_frames=4,
          reference_resolution=16,
          text_len=L,
          num_references=2,
          max_characters=1,
          size=16,
          **data,
      )
  )
  tc = config.train
  tc.trainable, tc.batch_size, tc.steps, tc.warmup_steps, tc.lr = "adapters", 8, 3, 1, 1e-2
  tc.lambda_id = 0.0
  return config


def test_config_needs_a_table_of_its_sizes(tmp_path):
  config = _wan_config()
  with pytest.raises(configlib.UsageError, match="data.text_embeddings"):
    for_config(config)
  _table(tmp_path, ["a"])
  config.data.text_embeddings = str(tmp_path / "text.safetensors")
  assert for_config(config).text_dim == D
  config.model.text_dim = D + 1
  with pytest.raises(configlib.UsageError, match=r"\[8, 17\]"):
    for_config(config)
  config.model.text_input = "tokens"
  assert for_config(config) is None


def test_batches_carry_each_prompts_row(tmp_path):
  config = _wan_config()
  source = pipeline.make_source(config.data)
  prompts = sorted({source[i]["prompt"] for i in range(len(source))})
  table, rows = _table(tmp_path, prompts, lengths=[1 + i % L for i in range(len(prompts))])
  batches = pipeline.GlobalBatches(
      source, global_batch_size=4, seed=0, mesh=None, text_len=L, text_embeddings=table
  )
  for step in (0, 1):
    batch = batches.local_batch_at(step)
    assert set(batch) == set(pipeline.BATCH_KEYS) | {"text_embeddings"}
    for row, index in enumerate(batches.indices_at(step)):
      i = prompts.index(source[int(index)]["prompt"])
      np.testing.assert_array_equal(batch["text_embeddings"][row], rows[i])
      np.testing.assert_array_equal(batch["text_tokens"][row], np.arange(L) < 1 + i % L)
  # A table lacking one of the prompts: reading a batch that needs it says which.
  (tmp_path / "short").mkdir()
  short, _ = _table(tmp_path / "short", prompts[1:])
  batches = pipeline.GlobalBatches(
      source, global_batch_size=len(source), seed=0, mesh=None, text_len=L, text_embeddings=short
  )
  with pytest.raises(configlib.UsageError, match="has no text embedding"):
    batches.local_batch_at(0)


def _setup():
  config = _wan_config()
  config.model.update(dict(depth=1, remat_policy="none"))  # compiles in half the time
  model = models.build_model(config.model)
  assert model.reads_text_embeddings
  return trainer.make_setup(config, model, tiny_face_encoder(), mesh_for(config, dict(data=1)))


def test_the_trainer_inits_a_model_without_a_token_table():
  """The sharded init is traced with zero text embeddings (no compilation here)."""
  params = _setup().abstract_state.params
  assert "prompt_embedding" not in params
  assert params["backbone"]["text_embedder_1"]["kernel"].shape == (D, 32)


# 40 s (idle) to minutes (busy) on the 2 shared cores, compiling the step: not in the default run.
@pytest.mark.slow
def test_the_train_step_reads_the_embeddings():
  """One adapters-only step of the tiny Wan model on two batches that differ only
  in their text embeddings: the losses differ, so the text reaches the model."""
  setup = _setup()
  batch = numpy_batch(0)
  batch["text_tokens"] = np.ones_like(batch["text_tokens"])
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(2):
    batch["text_embeddings"] = rng.normal(size=(8, L, D)).astype(np.float32)
    state, metrics = setup.run_step(setup.init(), put_batch(batch, setup.mesh))
    assert metrics["applied"] == 1.0 and np.isfinite(metrics["loss"])
    losses.append(float(metrics["loss"]))
  assert "prompt_embedding" not in state.params  # no token table in this model
  assert losses[0] != losses[1]


def test_generator_samples_by_prompt_row(tmp_path):
  """Two prompts with the same row give the same frames, a third with another
  row other frames; a prompt without a row is refused before sampling."""
  config = _wan_config()
  config.sample.update(dict(num_frames=1, steps=1, text_guidance=1.0, identity_guidance=1.0))
  rows = np.random.default_rng(1).normal(size=(3, L, D)).astype(np.float32)
  rows[1] = rows[0]
  path = tmp_path / "text.safetensors"
  write_text_embeddings(path, ["first", "same as first", "other"], rows)
  config.data.text_embeddings = str(path)
  encoder = tiny_face_encoder()
  model = models.build_model(config.model)
  args = models.dummy_inputs(
      config.model,
      batch=1,
      frames=1,
      height=16,
      width=16,
      text_len=L,
      face_embed_dim=encoder.embed_dim,
      face_feature_dim=encoder.feature_dim,
      face_cells=encoder.feature_cells,
  )
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *args, **dummy_text_embeddings(model, 1, L))
  )
  params = random_params(nn.meta.unbox(abstract["params"]), seed=2)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  gen = Generator(ml_collections.ConfigDict(config.to_dict()), params, encoder, mesh=mesh)
  out = gen.generate(["first", "same as first", "other"], seed=[5, 5, 5], progress=False)["frames"]
  np.testing.assert_array_equal(out[0], out[1])
  assert np.any(out[0] != out[2])
  with pytest.raises(ValueError, match="'unknown' has no text embedding"):
    gen.generate(["first", "unknown"], progress=False)
  # sample.py: the same sentence, as a usage error (exit 2), and no file written.
  args = cli.parse_args(
      [
          "--workdir",
          str(tmp_path),
          "--prompt",
          "unknown",
          "--out",
          str(tmp_path / "clip.mp4"),
          "--no-progress",
      ]
  )
  with pytest.raises(configlib.UsageError, match="'unknown' has no text embedding"):
    cli.write_clip(gen, cli.prepare(args))
  assert not (tmp_path / "clip.mp4").exists()
