"""model.face_mask_scale: the model's face masks (routing, layout channels,
canvas, identity guidance) are the ellipses of the boxes shrunk about their
centres; the identity loss and the eval still crop the faces by the boxes."""

import jax.numpy as jnp
import numpy as np

from idjax import layout
from idjax.conditioning import reference_canvas, shrink_boxes
from idjax.sampling.generator import Generator

from helpers import (
    TinyVideoModel,
    numpy_batch,
    one_device_mesh,
    one_step,
    tiny_encoder,
    tiny_parts,
    tiny_train_config,
)


def test_shrink_boxes_about_their_centres():
  boxes = np.array([[0.2, 0.1, 0.6, 0.9], [0.0, 0.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(
      shrink_boxes(boxes, 0.5), [[0.3, 0.3, 0.5, 0.7], [0.0, 0.0, 0.0, 0.0]], atol=1e-7
  )
  np.testing.assert_array_equal(shrink_boxes(boxes, 1.0), boxes)  # bit for bit


def test_the_canvas_is_drawn_only_inside_the_shrunk_ellipse():
  rng = np.random.default_rng(1)
  refs = jnp.asarray(rng.integers(0, 256, (1, 1, 1, 32, 32, 3), dtype=np.uint8))
  box = np.array([0.1, 0.2, 0.9, 0.8], np.float32)
  boxes = jnp.asarray(np.broadcast_to(box, (1, 1, 2, 4)))
  args = (refs, jnp.ones((1, 1, 1), bool), jnp.ones((1, 1), bool), boxes, 40, 40)
  whole = np.asarray(reference_canvas(*args))
  shrunk = np.asarray(reference_canvas(*args, mask_scale=0.5))
  # Independently: the ellipse inscribed in the box of half the size.
  mask = layout.face_masks(np.array([0.3, 0.35, 0.7, 0.65]), 40, 40)
  np.testing.assert_array_equal(shrunk[0, :, mask == 1], whole[0, :, mask == 1])
  np.testing.assert_array_equal(shrunk[0, :, mask == 0], 0.0)
  assert np.abs(whole[0, :, mask == 0]).max() > 0.1


def test_sampling_gives_the_model_the_masks_of_the_shrunk_boxes():
  cfg, params, fe = tiny_parts()
  cfg = cfg.copy_and_resolve_references()
  cfg.model.face_mask_scale = 0.5
  gen = Generator(cfg, params, fe, mesh=one_device_mesh())
  boxes = np.array([[[[0.1, 0.2, 0.9, 0.6]] * 2]], np.float32)  # [B, C, T, 4]
  host = gen._host_batch(["a person"], [[[np.zeros((16, 16, 3), np.uint8)]]], 2, [1.0], [0], boxes)
  want = layout.face_masks(np.array([0.3, 0.3, 0.7, 0.5]), 16, 16)
  np.testing.assert_allclose(host.face_masks[0, 0, 0], want, atol=1e-6)
  assert host.face_masks[0, 0, 0].sum() < 0.3 * layout.face_masks(boxes[0, 0, 0], 16, 16).sum()


def test_training_gives_the_model_the_masks_of_the_shrunk_boxes():
  """Without the identity loss (which crops by the boxes), a step with the
  scale equals, bit for bit, a step on boxes shrunk beforehand."""
  batch = numpy_batch(0)
  shrunk = dict(batch, boxes=np.asarray(shrink_boxes(batch["boxes"], 0.5)))
  metrics = []
  for scale, b in ((0.5, batch), (1.0, shrunk), (1.0, batch)):
    config = tiny_train_config()
    config.train.lambda_id = 0.0
    config.model.face_mask_scale = scale
    metrics.append(one_step(config, TinyVideoModel(), tiny_encoder(), {}, b)[1])
  np.testing.assert_array_equal(metrics[0]["loss"], metrics[1]["loss"])
  assert metrics[0]["loss"] != metrics[2]["loss"]  # the masks do matter
