"""The config rules table: every shipped config passes, each bad value is named
with its key, value and rule, relations between keys, and old configs load."""

import glob
import os

import ml_collections
import pytest

from idjax import config_rules, configlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  return configlib.load_config_file(os.path.join(ROOT, "configs", name + ".py"))


def with_overrides(name, **overrides):  # keys with dots: pass them as a dict
  config = load(name)
  for key, text in overrides.items():
    configlib.apply_override(config, key.replace("__", "."), text)
  return config


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_shipped_configs_pass(path):
  config = configlib.load_config_file(path)
  assert config_rules.violations(config) == []
  if config.get("kind", "video") == "video":
    assert config_rules.violations(config, num_devices=8) == []


def test_constants_match_their_sources():
  from idjax import sharding
  from idjax.data import prompts
  assert config_rules.MESH_AXES == sharding.MESH_AXES
  assert config_rules.TEXT_VOCABULARY == len(prompts.VOCABULARY)


# The cases and a few more: (override, words the message must hold).
BAD = [
    ({"train.steps": "-5"}, "train.steps=-5 must be an integer >= 1"),
    ({"train.batch_size": "0"}, "train.batch_size=0 must be an integer >= 1"),
    ({"train.checkpoint_every": "0"}, "train.checkpoint_every=0 must be an integer >= 1"),
    ({"train.keep_checkpoints": "0"}, "train.keep_checkpoints=0 must be an integer >= 1"),
    ({"model.num_heads": "5"}, "model.num_heads must divide model.width (model.width=96, "
                               "model.num_heads=5)"),
    ({"data.resolution": "30"}, "data.resolution must be divisible by the patch height and width"),
    ({"data.source": "bogus"}, "data.source='bogus' must be one of 'on_the_fly', 'tfds'"),
    ({"train.lr": "nan"}, "train.lr=nan must be a finite number > 0.0"),
    ({"train.ema_decay": "1.5"}, "train.ema_decay=1.5 must be a finite number in [0.0, 1.0]"),
    ({"model.identity_routing": "hrad"}, "model.identity_routing='hrad' must be one of"),
    ({"model.width": "8", "model.num_heads": "4", "model.text_width": "8"},
     "the head size) must be >= 4 for RoPE"),
    ({"data.min_characters": "2"}, "data.min_characters must be <= data.max_characters"),
    ({"train.grad_accum": "3"}, "train.grad_accum must divide train.batch_size"),
    ({"sample.num_frames": "0"}, "sample.num_frames=0 must be an integer >= 1"),
    ({"seed": "-1"}, "seed=-1 must be an integer in [0, 4294967295]"),
    ({"mesh.data": "0"}, "mesh="),
]


@pytest.mark.parametrize("overrides, words", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_values_are_named_with_key_value_and_rule(overrides, words):
  config = with_overrides("tiny", **overrides)
  with pytest.raises(configlib.UsageError) as e:
    config_rules.check(config)
  message = str(e.value)
  assert message.startswith("Invalid config: ") and message.endswith(".")
  assert words in message, message
  assert "\n" not in message


def test_every_violation_is_listed_once():
  config = with_overrides("tiny", **{"train.steps": "0", "train.keep_checkpoints": "0",
                                     "model.num_heads": "0"})
  found = config_rules.violations(config)
  assert len(found) == 3, found   # num_heads=0 does not also break the relations that use it


def test_device_rules():
  config = load("tiny")
  config.train.batch_size = 6
  assert "must divide by the 8 batch shards" in " ".join(config_rules.violations(config, 8))
  assert config_rules.violations(config, 2) == []
  config.mesh = ml_collections.ConfigDict(dict(data=3, fsdp=1, tensor=1, sequence=1))
  assert "needs 3 devices, but 8 are in use" in " ".join(config_rules.violations(config, 8))


def test_latent_space_needs_an_autoencoder_workdir():
  config = load("tiny").to_dict()
  config["model"].pop("space", None)          # old configs have neither key: fine
  config.pop("autoencoder_workdir", None)
  config = ml_collections.ConfigDict(config)
  assert config_rules.violations(config) == []
  config.model.space = "pixel"
  assert config_rules.violations(config) == []
  config.model.space = "latent"
  assert "needs a non-empty autoencoder_workdir" in " ".join(config_rules.violations(config))
  config.autoencoder_workdir = ""
  assert "needs a non-empty autoencoder_workdir" in " ".join(config_rules.violations(config))
  config.autoencoder_workdir = "runs/demo/autoencoder"
  assert config_rules.violations(config) == []
  config.model.space = "pixels"
  assert "model.space='pixels' must be one of 'pixel', 'latent'" in " ".join(
      config_rules.violations(config))


def test_absent_and_unknown_keys_are_not_errors():
  config = load("tiny").to_dict()
  del config["train"]["keep_checkpoints"], config["model"]["num_heads"], config["sample"]
  config["train"]["some_new_knob"] = "anything"
  assert config_rules.violations(ml_collections.ConfigDict(config)) == []


def test_a_saved_json_config_passes():
  """Tuples come back from config.json as lists."""
  config = load("tiny")
  back = ml_collections.ConfigDict(__import__("json").loads(config.to_json_best_effort()))
  assert config_rules.violations(back, 8) == []


def test_kind_and_face_encoder_rules():
  config = load("face_encoder")
  config.groups = 0
  config.lr = -1.0
  found = config_rules.violations(config)
  assert found == ["groups=0 must be an integer >= 1", "lr=-1.0 must be a finite number > 0.0"]
  config.kind = "vidoe"
  assert config_rules.violations(config) == [
      "kind='vidoe' must be one of 'video', 'face_encoder', 'autoencoder'"]


def test_a_new_rule_is_one_line(monkeypatch):
  monkeypatch.setitem(config_rules.RULES, "video",
                      config_rules.RULES["video"] + (("train.new_key", config_rules.integer(2)),))
  config = load("tiny")
  assert config_rules.violations(config) == []
  config.train.new_key = 1
  assert config_rules.violations(config) == ["train.new_key=1 must be an integer >= 2"]


def _enum_rules():
  return [(kind, key, check) for kind, table in config_rules.RULES.items()
          for key, check in table if check.choices is not None]


@pytest.mark.parametrize("kind, key, check", _enum_rules(), ids=[k for _, k, _ in _enum_rules()])
def test_every_enum_key_is_refused_at_load_naming_the_key(kind, key, check):
  config = load({"video": "tiny", "face_encoder": "face_encoder"}[kind])
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = "bogus"
  found = config_rules.violations(config)
  assert found == [f"{key}='bogus' must be one of " + ", ".join(map(repr, check.choices))]


def test_enum_rules_accept_exactly_what_the_code_branches_on():
  from idjax.models import attention, dit, identity
  from idjax.sampling import samplers
  rules = dict(config_rules.VIDEO)
  code = {
      "model.prediction": dit.PREDICTIONS,
      "model.identity_routing": dit.ROUTINGS,
      "model.reference_mode": identity.REFERENCE_MODES,
      "model.attention_impl": attention.IMPLEMENTATIONS,
      "model.remat_policy": ("none",) + tuple(dit.REMAT_POLICIES),
      "sample.sampler": samplers.METHODS,
  }
  for key, values in code.items():
    assert set(rules[key].choices) == set(values), key


def test_configs_saved_before_a_key_existed_read_as_they_were_trained():
  config = load("tiny")
  assert config_rules.with_absent_keys(config) is config     # complete: untouched
  old = config.to_dict()
  del old["model"]["space"], old["model"]["prediction"], old["sample"]["shift"]
  del old["model"]["reference_canvas"]
  old = ml_collections.ConfigDict(old)
  filled = config_rules.with_absent_keys(old)
  assert (filled.model.space, filled.model.prediction, filled.sample.shift,
          filled.model.reference_canvas) == ("pixel", "velocity", 1.0, False)
  assert "space" not in old.model                             # a copy
  assert config_rules.violations(filled) == []
