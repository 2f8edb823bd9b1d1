"""The synthetic identity world: determinism, identity vs nuisance, splits, prompts, layout."""

import chex
import numpy as np
import pytest

from idjax.data import prompts
from idjax.data import world

SMALL = world.WorldConfig(resolution=32, num_frames=4, num_references=2, reference_resolution=24)
MULTI = world.WorldConfig(resolution=48, num_frames=3, max_characters=4, min_characters=1,
                          num_references=2, reference_resolution=16)


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if k == "prompt":
      assert a[k] == b[k]
    else:
      assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_render_shapes_and_dtypes():
  cfg = world.WorldConfig(resolution=40, num_frames=5, max_characters=3, num_references=2,
                          reference_resolution=20)
  ex = world.render_clip(cfg, 0, 0)
  chex.assert_shape(ex["frames"], (5, 40, 40, 3))
  chex.assert_shape(ex["boxes"], (3, 5, 4))
  chex.assert_shape(ex["masks"], (3, 5, 40, 40))
  chex.assert_shape(ex["identity_ids"], (3,))
  chex.assert_shape(ex["character_valid"], (3,))
  chex.assert_shape(ex["references"], (3, 2, 20, 20, 3))
  assert ex["frames"].dtype == np.uint8 and ex["masks"].dtype == np.uint8
  assert ex["references"].dtype == np.uint8
  assert ex["boxes"].dtype == np.float32 and ex["identity_ids"].dtype == np.int32
  assert ex["character_valid"].dtype == np.bool_
  assert isinstance(ex["prompt"], str)


def test_deterministic_and_seed_dependent():
  a = world.render_clip(SMALL, 3, 7)
  _assert_same(a, world.render_clip(SMALL, 3, 7))
  for other in (world.render_clip(SMALL, 4, 7), world.render_clip(SMALL, 3, 8)):
    assert not np.array_equal(a["frames"], other["frames"])
    assert not np.array_equal(a["references"], other["references"])


@pytest.mark.parametrize("resolution,frames", [(32, 1), (64, 3), (128, 2)])
def test_any_resolution_and_length(resolution, frames):
  cfg = world.WorldConfig(resolution=resolution, num_frames=frames, num_references=1,
                          reference_resolution=resolution)
  ex = world.render_clip(cfg, 0, 1)
  chex.assert_shape(ex["frames"], (frames, resolution, resolution, 3))
  # The head covers a sizeable part of a single-character frame (35-60% tall).
  rows = ex["masks"][0].any(axis=2).sum(axis=1) / resolution
  assert np.all(rows > 0.3) and np.all(rows < 0.65), rows


def test_identity_params_pure_and_distinct():
  assert world.identity_params(123) == world.identity_params(123)
  a, b = world.identity_params(1), world.identity_params(2)
  assert a.skin_rgb != b.skin_rgb and a.eye_spacing != b.eye_spacing


def test_same_identity_other_nuisance():
  ident = int(world.split_identities("train", 1, start=5)[0])
  a = world.render_clip(SMALL, 0, 0, identity_ids=[ident])
  b = world.render_clip(SMALL, 9, 4, identity_ids=[ident])
  assert a["identity_ids"][0] == b["identity_ids"][0] == ident
  assert a["prompt"] == b["prompt"]
  assert not np.array_equal(a["frames"], b["frames"])
  assert not np.array_equal(a["boxes"], b["boxes"])


def test_identity_is_visible_in_head_colours():
  """Nearest neighbour on the head's colour percentiles re-identifies held-out faces.

  A weak hand-made feature already works at 32x32, so a learned encoder can.
  """
  cfg = world.WorldConfig(resolution=32, num_frames=2, num_references=1, reference_resolution=16)
  ids = world.split_identities("heldout", 30)

  def feature(seed, ident):
    ex = world.render_clip(cfg, seed, 0, identity_ids=[ident])
    pixels = ex["frames"][ex["masks"][0].astype(bool)].astype(np.float64)
    return np.concatenate([np.percentile(pixels, q, axis=0) for q in (20, 50, 80)])

  a = np.stack([feature(1, i) for i in ids])
  b = np.stack([feature(2, i) for i in ids])
  dist = ((a[:, None] - b[None]) ** 2).sum(-1)
  accuracy = (dist.argmin(axis=1) == np.arange(len(ids))).mean()
  assert accuracy >= 0.8, accuracy


def test_split_disjoint_and_fraction():
  train = world.split_identities("train", 400)
  heldout = world.split_identities("heldout", 100)
  assert not set(train.tolist()) & set(heldout.tolist())
  assert all(world.is_heldout(i) for i in heldout) and not any(world.is_heldout(i) for i in train)
  # Ids are increasing, and `start` continues the same sequence.
  assert np.all(np.diff(train) > 0)
  np.testing.assert_array_equal(world.split_identities("train", 10, start=390), train[390:])
  fraction = np.mean([world.is_heldout(i) for i in range(20000)])
  assert abs(fraction - 0.2) < 0.015, fraction


def test_render_draws_from_the_split():
  for index in range(6):
    held = world.render_clip(MULTI, 0, index, split="heldout")
    ids = held["identity_ids"][held["character_valid"]]
    assert all(world.is_heldout(i) for i in ids)
    train = world.render_clip(MULTI, 0, index, split="train")
    ids = train["identity_ids"][train["character_valid"]]
    assert not any(world.is_heldout(i) for i in ids)


def test_prompt_is_a_function_of_quantised_attributes():
  # Find two different identities whose quantised attributes coincide.
  by_attributes = {}
  pair = None
  for i in range(3000):
    key = tuple(sorted(world.identity_params(i).attributes().items()))
    if key in by_attributes:
      pair = by_attributes[key], i
      break
    by_attributes[key] = i
  assert pair is not None, "no two of 3000 identities share quantised attributes"
  a = world.render_clip(SMALL, 0, 0, identity_ids=[pair[0]])
  b = world.render_clip(SMALL, 5, 3, identity_ids=[pair[1]])
  assert a["prompt"] == b["prompt"]
  assert world.identity_params(pair[0]) != world.identity_params(pair[1])
  # Attribute changes do show up.
  p = world.identity_params(pair[0]).attributes()
  assert prompts.describe_one(p) != prompts.describe_one(dict(p, glasses=not p["glasses"]))


def test_prompt_words_are_in_vocabulary():
  assert prompts.VOCABULARY[:2] == ("<pad>", "<unk>")
  assert len(set(prompts.VOCABULARY)) == len(prompts.VOCABULARY)
  for index in range(20):
    prompt = world.render_clip(MULTI, 0, index)["prompt"]
    tokens = prompts.tokenize(prompt, 200)
    assert np.all(tokens[: len(prompt.replace(",", " ").replace(":", " ").split())] > 1), prompt


def test_tokenize():
  vocab = prompts.VOCABULARY
  tokens = prompts.tokenize("A person with PALE skin, zzz", 8)
  chex.assert_shape(tokens, (8,))
  assert tokens.dtype == np.int32
  expected = [vocab.index("a"), vocab.index("person"), vocab.index("with"), vocab.index("pale"),
              vocab.index("skin"), 1, 0, 0]
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_array_equal(prompts.tokenize("a a a a", 2), [vocab.index("a")] * 2)


def test_references_are_not_frames():
  ex = world.render_clip(world.WorldConfig(resolution=32, num_frames=6, num_references=3,
                                           reference_resolution=32), 0, 2)
  frames = ex["frames"].astype(np.int32)
  for ref in ex["references"][0].astype(np.int32):
    # Even the best-matching frame differs clearly (other pose, light, background).
    assert min(np.abs(ref - f).mean() for f in frames) > 5.0
  refs = ex["references"][0]
  assert not np.array_equal(refs[0], refs[1])


def test_references_framed_like_the_box():
  """The head fills the same part of a reference as of its box crop."""
  ident = world.identity_params(int(world.split_identities("train", 1)[0]))
  pose = world._pose(np.random.default_rng(0), 1, static=True)
  scene = world._scene(np.random.default_rng(0), 1)
  # The same head, once filling a portrait and once in a box of side 0.5.
  _, portrait = world._render(96, scene, [(ident, np.full((1, 2), 0.5), np.ones(1), pose)])
  _, framed = world._render(96, scene, [(ident, np.array([[0.5, 0.5]]), np.full(1, 0.5), pose)])
  crop = framed[0, 0, 24:72, 24:72]
  down = portrait[0, 0].reshape(48, 2, 48, 2).mean(axis=(1, 3))
  assert np.abs(down - crop).mean() < 0.05


def test_boxes_and_masks_consistent():
  for index in range(6):
    ex = world.render_clip(MULTI, 1, index)
    H = MULTI.resolution
    centres = (np.arange(H) + 0.5) / H
    for c in np.flatnonzero(ex["character_valid"]):
      box = ex["boxes"][c]
      assert np.all(box >= 0.0) and np.all(box <= 1.0)
      np.testing.assert_allclose(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1], atol=1e-6)  # square
      for t in range(MULTI.num_frames):
        ys, xs = np.nonzero(ex["masks"][c, t])
        y0, x0, y1, x1 = box[t]
        assert np.all(centres[ys] >= y0) and np.all(centres[ys] <= y1)
        assert np.all(centres[xs] >= x0) and np.all(centres[xs] <= x1)
    # Masks are visible regions: no pixel belongs to two characters.
    assert ex["masks"].sum(axis=0).max() <= 1


def test_multi_character_padding():
  counts = set()
  for index in range(16):
    ex = world.render_clip(MULTI, 2, index)
    valid = ex["character_valid"]
    n = int(valid.sum())
    counts.add(n)
    assert MULTI.min_characters <= n <= MULTI.max_characters
    np.testing.assert_array_equal(valid, np.arange(4) < n)  # present characters come first
    ids = ex["identity_ids"]
    assert np.all(ids[n:] == -1) and np.all(ids[:n] >= 0) and len(set(ids[:n].tolist())) == n
    assert not ex["boxes"][n:].any() and not ex["masks"][n:].any() and not ex["references"][n:].any()
    assert all(ex["masks"][c].any() for c in range(n))
    assert ex["references"][:n].reshape(n, -1).any(axis=1).all()
    if n > 1:
      assert ex["prompt"].startswith(prompts._NUMBERS[n - 1] + " people: ")
  assert len(counts) >= 3


def test_identity_ids_override_and_errors():
  ex = world.render_clip(MULTI, 0, 0, identity_ids=[5, 9])
  np.testing.assert_array_equal(ex["identity_ids"], [5, 9, -1, -1])
  with pytest.raises(ValueError):
    world.render_clip(MULTI, 0, 0, identity_ids=list(range(5)))
  with pytest.raises(ValueError):
    world.render_clip(MULTI, 0, 0, split="test")
  with pytest.raises(ValueError):
    world.WorldConfig(min_characters=3, max_characters=2)
