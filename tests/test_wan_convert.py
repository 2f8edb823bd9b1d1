"""python -m idjax.models.wan.convert: a diffusers Wan folder -> a workdir train.py and
sample.py take (issue 14's weight import CLI).

The inputs are the committed tiny fixtures in the published layout:
tests/fixtures/wan_dit/transformer (sharded, with an index) and
tests/fixtures/wan_vae/vae. The fixture DiT has 16 latent channels and the
fixture VAE 4, so the tests give the DiT 4 channels by keeping the first 4
of its patch-embedding inputs and of its outputs (the pair as committed is
the mismatch case).
"""

import json
import os
import shutil
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from idjax import configlib, diffusion, models, rng, sharding, weight_files
from idjax.data import pipeline
from idjax.data import prompts as prompts_lib
from idjax.data.text_embeddings import write_text_embeddings
from idjax.models.wan import convert, transformer_weights
from idjax.models.wan.transformer import WanTransformer
from idjax.models.wan.vae_weights import FrozenWanVAE
from idjax.sampling import samplers
from idjax.sampling.generator import Generator
from idjax.train import checkpoint
from idjax.train.state import trainable_filter
from helpers import ROOT, converted_wan_workdir, saved_state, wan_diffusers_dir
import train as train_cli  # the entry point (the root is on pytest's pythonpath)

CHANNELS = 4  # the fixture VAE's z_dim

# configs/wan_tiny.py at the fixtures' sizes: 1 frame of 16x16 (2x2 latents, one
# 2x2 patch), a batch of one example per simulated device. The backbone sizes
# come from the fixture's transformer/config.json.
ARGS = [
    "--config",
    os.path.join(ROOT, "configs", "wan_tiny.py"),
    "--config.data.resolution=16",
    "--config.data.reference_resolution=16",
    "--config.data.num_frames=1",
    "--config.data.text_len=8",
    "--config.data.num_references=2",
    "--config.model.num_identity_tokens=4",
    "--config.model.identity_layers=1",
    "--config.train.batch_size=8",
    "--config.train.lambda_id=0.0",
    "--config.train.log_every=1",
    "--config.sample.num_frames=1",
    "--config.sample.steps=2",
]


def _paths(tree):
  return {"/".join(p): np.asarray(v) for p, v in traverse_util.flatten_dict(tree).items()}


def _write_json(path, value):
  with open(path, "w") as f:
    json.dump(value, f)


def _convert(capsys, *args):
  """convert.main(args) -> (exit code, stderr lines)."""
  capsys.readouterr()
  try:
    code = convert.main(list(args))
  except SystemExit as e:
    code = e.code
  return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("convert")
  return converted_wan_workdir(root, ARGS)


def test_backbone_is_the_safetensors_bit_for_bit_beside_fresh_adapters(converted):
  out, source = converted["out"], converted["source"]
  assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "vae"]
  assert sorted(os.listdir(out / "checkpoints")) == ["0"]
  config = checkpoint.read_config(str(out))
  assert (config.model.depth, config.model.width, config.model.channels) == (2, 40, CHANNELS)
  assert config.train.trainable == "adapters"
  assert config.autoencoder_workdir == str(out / "vae")
  state = saved_state(str(out))
  assert int(state["step"]) == 0
  params = _paths(state["params"])

  # Every backbone param, bit for bit, from the safetensors (converted independently).
  fields = transformer_weights.transformer_fields(
      weight_files.read_diffusers_folder(source / "transformer")[0]
  )
  wan = _paths(
      transformer_weights.params_from_diffusers(
          weight_files.read_diffusers_folder(source / "transformer")[1], fields
      )
  )
  for path, value in wan.items():
    np.testing.assert_array_equal(params["backbone/" + path], value, err_msg=path)
  # ... and one by hand: the torch Linear [out, in] is the transposed kernel.
  raw = weight_files.read_diffusers_folder(source / "transformer")[1]
  np.testing.assert_array_equal(params["backbone/proj_out/kernel"], raw["proj_out.weight"].T)
  np.testing.assert_array_equal(
      params["backbone/blocks/ffn_fc2/bias"][1], raw["blocks.1.ffn.net.2.bias"]
  )

  # The rest is the trainer's step-0 state (the converter runs its sharded
  # init): fresh adapters, whose EMA is themselves and whose Adam moments are
  # zero; nothing of the backbone in the EMA or the optimizer state.
  model = models.build_model(config.model)
  is_adapter = trainable_filter("adapters", model)
  adapters = {p for p in params if is_adapter(tuple(p.split("/")))}
  assert set(params) - adapters == {"backbone/" + p for p in wan}
  assert not np.any(params["backbone/blocks/identity/attn/out/kernel"])  # zero-initialised
  ema = _paths(state["ema_params"])
  assert set(ema) == adapters
  for path in adapters:
    np.testing.assert_array_equal(ema[path], params[path], err_msg=path)
  moments = [leaf for leaf in jax.tree.leaves(state["opt_state"]) if leaf.ndim > 0]
  assert sum(m.size for m in moments) == 2 * sum(params[p].size for p in adapters)
  assert not any(np.any(m) for m in moments)


# A sampling run beside the backbone alone (about 13 s on 2 cores): in the slow set, which CI runs.
@pytest.mark.slow
def test_generator_equals_the_backbone_alone_with_fresh_adapters(converted):
  """sample.py's Generator on the converted workdir vs the published DiT and VAE
  read straight from DIR: the fresh identity attentions add exactly zero."""
  out, source = converted["out"], converted["source"]
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  gen = Generator.from_workdir(str(out), mesh=mesh)
  prompt, seed, steps = "a person with pale skin and short black hair", 3, 2
  reference = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
  frames = gen.generate(
      [prompt],
      [[[reference]]],
      num_frames=1,
      steps=steps,
      seed=seed,
      text_guidance=1.0,
      identity_guidance=1.0,
      progress=False,
  )["frames"]

  fields = transformer_weights.transformer_fields(
      weight_files.read_diffusers_folder(source / "transformer")[0]
  )
  _, backbone = transformer_weights.load_transformer(source / "transformer")
  velocity = jax.jit(WanTransformer(**fields).apply)
  vae = FrozenWanVAE.from_folder(source / "vae")
  table = _paths(checkpoint.load_inference(str(out))[1])["prompt_embedding/embedding"]
  tokens = prompts_lib.tokenize(prompt, gen.text_len)[None]
  text = jnp.asarray(table[tokens] * (tokens != 0)[..., None], jnp.float32)
  x = jax.random.normal(rng.derive(seed, 0, "sample/noise"), (1, 1, 2, 2, CHANNELS), jnp.float32)
  grid = samplers.timesteps(steps, float(gen.config.sample.shift))
  for i in range(steps):
    t = jnp.full((1,), grid[i], jnp.float32)
    v = velocity({"params": backbone}, x, 1000.0 * t, text)
    x = x + (grid[i + 1] - grid[i]) * v
  expected = np.asarray(diffusion.to_uint8(jax.jit(vae.decode)(vae.params, x)))
  assert frames.shape == expected.shape == (1, 1, 16, 16, 3)
  np.testing.assert_array_equal(frames, expected)


def test_train_py_reads_the_converted_config_and_restores_step_0(converted):
  """train.py --workdir OUT (no --config) takes the workdir's config, and the
  trainer's abstract state restores the step-0 checkpoint (training it: the
  slow test below)."""
  config, _ = train_cli.parse_args(["--workdir", str(converted["out"]), "--config.train.steps=2"])
  assert (config.model.depth, config.train.steps) == (2, 2)
  checkpoint.check_compatible(checkpoint.read_config(str(converted["out"])), config)


def test_train_py_needs_a_config_or_a_workdir_config(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    train_cli.main(["--workdir", str(tmp_path / "none")])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--config is needed" in err[0]


# --- what the user can get wrong: one sentence, exit 2, nothing written -------


def _refused(capsys, converted, source, out, *extra, match):
  code, err = _convert(
      capsys, "--diffusers-dir", str(source), "--workdir", str(out), *converted["args"], *extra
  )
  assert code == 2, err
  assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
  assert err[0].count(". ") == 0 or err[0].endswith(".")
  parent = os.path.dirname(str(out))
  leftovers = [n for n in os.listdir(parent) if n.startswith("." + os.path.basename(str(out)))]
  assert leftovers == [], leftovers
  return err[0]


def test_missing_folders_are_refused(converted, tmp_path, capsys):
  out = tmp_path / "video"
  _refused(capsys, converted, tmp_path / "nowhere", out, match="is not a folder")
  for missing in ("transformer", "vae"):
    source = tmp_path / f"no_{missing}"
    shutil.copytree(converted["source"], source)
    shutil.rmtree(source / missing)
    _refused(capsys, converted, source, out, match=f"no {missing}/config.json")
  assert not out.exists()


def _with_tensor(converted, root, name, change):
  """A copy of the converted DIR whose transformer tensor `name` is changed
  (`change(tensors)` edits the dict of the shard holding it; the shard index
  is rewritten to match, as a consistent but wrong download would be)."""
  source = root / "diffusers"
  shutil.copytree(converted["source"], source)
  folder = source / "transformer"
  index_name = next(n for n in os.listdir(folder) if n.endswith(".index.json"))
  index = json.loads((folder / index_name).read_text())
  shard = index["weight_map"].pop(name)
  tensors = {k: np.array(v) for k, v in weight_files.read_safetensors(folder / shard).items()}
  change(tensors)
  weight_files.write_safetensors(folder / shard, tensors)
  index["weight_map"].update({k: shard for k in tensors})
  (folder / index_name).write_text(json.dumps(index))
  return source


def test_misshapen_and_missing_tensors_are_named_with_their_shape(converted, tmp_path, capsys):
  name = "blocks.1.attn2.to_k.weight"
  out = tmp_path / "video"
  misshapen = _with_tensor(
      converted, tmp_path / "a", name, lambda t: t.update({name: t[name][:, :-1]})
  )
  line = _refused(capsys, converted, misshapen, out, match=name)
  assert "(40, 39)" in line and "(40, 40)" in line
  renamed = _with_tensor(
      converted,
      tmp_path / "b",
      name,
      lambda t: t.update({"blocks.1.attn2.to_kk.weight": t.pop(name)}),
  )
  line = _refused(capsys, converted, renamed, out, match=name)
  assert "missing" in line and "(40, 40)" in line
  assert not out.exists()


def test_a_corrupted_tensor_leaves_no_workdir_and_no_temporary_folder(converted, tmp_path, capsys):
  source = tmp_path / "diffusers"
  shutil.copytree(converted["source"], source)
  shard = sorted(n for n in os.listdir(source / "transformer") if n.endswith(".safetensors"))[-1]
  path = source / "transformer" / shard
  with open(path, "r+b") as f:  # cut the tensor data short, as an interrupted download
    f.truncate(os.path.getsize(path) - 100)
  out = tmp_path / "video"
  _refused(capsys, converted, source, out, match=shard)
  assert not out.exists()


def test_an_existing_workdir_is_kept_unless_overwrite(converted, tmp_path, capsys):
  out = tmp_path / "video"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  _refused(capsys, converted, converted["source"], out, match="--overwrite")
  assert os.listdir(out) == ["notes.txt"]
  # A failing conversion with --overwrite keeps the old folder too.
  broken = tmp_path / "broken"
  shutil.copytree(converted["source"], broken)
  os.remove(broken / "vae" / "diffusion_pytorch_model.safetensors")
  _refused(capsys, converted, broken, out, "--overwrite", match="safetensors")
  assert os.listdir(out) == ["notes.txt"]


def test_sizes_come_from_the_weights_and_contradictions_are_refused(converted, tmp_path, capsys):
  out = tmp_path / "video"
  _refused(
      capsys,
      converted,
      converted["source"],
      out,
      "--config.model.depth=3",
      match="--config.model.depth=3",
  )
  # As committed: a 16-channel DiT beside a 4-channel VAE.
  committed = wan_diffusers_dir(tmp_path / "committed", channels=None)
  _refused(capsys, converted, committed, out, match="channels")
  assert not out.exists()


# About 75 s on 2 loaded cores (three processes, each compiling), so not in the default run.
@pytest.mark.slow
def test_command_lines_convert_train_and_sample(converted, tmp_path):
  """The user's three commands; train.py moves the adapters and leaves every
  backbone leaf bit-identical."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  run = lambda *args: subprocess.run(
      [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
  )
  work = tmp_path / "video"
  args = [a for a in converted["args"] if "batch_size" not in a]
  proc = run(
      "-m",
      "idjax.models.wan.convert",
      "--diffusers-dir",
      str(converted["source"]),
      "--workdir",
      str(work),
      *args,
      "--config.train.batch_size=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run(
      "train.py",
      "--workdir",
      str(work),
      "--config.train.steps=2",
      "--config.train.warmup_steps=1",
      "--no-progress",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Trained to step 2" in proc.stdout
  before, after = (_paths(saved_state(str(work), step)["params"]) for step in (0, 2))
  is_adapter = trainable_filter(
      "adapters", models.build_model(checkpoint.read_config(str(work)).model)
  )
  for path, value in after.items():
    if not is_adapter(tuple(path.split("/"))):
      np.testing.assert_array_equal(value, before[path], err_msg=path)
  assert np.any(after["backbone/blocks/identity/attn/out/kernel"])  # zero at step 0
  image = tmp_path / "ref.png"
  Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(image)
  proc = run(
      "sample.py",
      "--workdir",
      str(work),
      "--prompt",
      "a person",
      "--reference",
      str(image),
      "--out",
      str(tmp_path / "clip.mp4"),
      "--no-progress",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "clip.gif").exists()


# Several minutes on 2 loaded cores (five processes, each compiling), so not in the default run.
@pytest.mark.slow
def test_the_1_3b_config_with_umt5_embeddings_converts_trains_and_samples(converted, tmp_path):
  """configs/wan_1_3b_identity.py as shipped (bf16 frozen backbone, precomputed
  text embeddings), shrunk to the fixtures: convert, train.py, sample.py."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  run = lambda *args: subprocess.run(
      [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
  )
  config = configlib.load_config_file(os.path.join(ROOT, "configs", "wan_1_3b_identity.py"))
  config.data.update(
      dict(
          resolution=16,
          reference_resolution=16,
          num_frames=1,
          text_len=8,
          num_references=2,
          max_characters=1,
          size=8,
      )
  )
  source = pipeline.make_source(config.data)
  prompts = sorted({source[i]["prompt"] for i in range(len(source))}) + ["a person"]
  rows = np.random.default_rng(0).normal(size=(len(prompts), 8, 32)).astype(np.float32)
  table = tmp_path / "prompts.safetensors"
  write_text_embeddings(table, prompts, rows)
  work = tmp_path / "video"
  small = [
      "--config.data.resolution=16",
      "--config.data.reference_resolution=16",
      "--config.data.num_frames=1",
      "--config.data.text_len=8",
      "--config.data.num_references=2",
      "--config.data.max_characters=1",
      "--config.data.size=8",
      f"--config.data.text_embeddings={table}",
      "--config.model.num_identity_tokens=4",
      "--config.model.identity_layers=1",
      "--config.model.attention_impl=xla",
      "--config.model.remat_policy=none",
      "--config.train.batch_size=2",
      "--config.train.steps=2",
      "--config.train.warmup_steps=1",
      "--config.train.lambda_id=0.0",
      "--config.sample.num_frames=1",
      "--config.sample.steps=2",
      f"--config.face_encoder_workdir={converted['root'] / 'face'}",
  ]
  proc = run(
      "-m",
      "idjax.models.wan.convert",
      "--diffusers-dir",
      str(converted["source"]),
      "--workdir",
      str(work),
      *small,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run("train.py", "--workdir", str(work), "--no-progress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  before, after = (saved_state(str(work), step) for step in (0, 2))
  frozen = lambda state: {
      p: v
      for p, v in _paths(state["params"]["backbone"]).items()
      if not p.startswith("blocks/identity/")
  }  # the adapters inside
  backbone = frozen(before)
  assert {v.dtype for v in backbone.values()} == {np.dtype("bfloat16")}
  for path, value in frozen(after).items():
    np.testing.assert_array_equal(value, backbone[path], err_msg=path)
  out = tmp_path / "clip.mp4"
  proc = run(
      "sample.py",
      "--workdir",
      str(work),
      "--prompt",
      "a person",
      "--out",
      str(out),
      "--no-progress",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run(
      "sample.py",
      "--workdir",
      str(work),
      "--prompt",
      "a dog",
      "--out",
      str(tmp_path / "dog.mp4"),
      "--no-progress",
  )
  assert proc.returncode == 2 and "'a dog' has no text embedding" in proc.stderr
  assert not (tmp_path / "dog.mp4").exists()
