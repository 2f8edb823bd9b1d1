"""The diffusion math and the identity loss, checked against NumPy."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idjax import diffusion, losses


def numpy_identity_loss(frames, refs, lam, mask, ref_mask, weight):
  """BRIEF 1.4 written out with loops: mean over frames of the distance to the
  mean reference, plus lam * mean over adjacent valid pairs."""
  ref_terms, ref_w, tmp_terms, tmp_w = [], [], [], []
  for b in range(frames.shape[0]):
    valid_refs = refs[b][ref_mask[b]]
    valid_t = [t for t in range(frames.shape[1]) if mask[b, t]]
    if len(valid_refs) and valid_t:
      anchor = valid_refs.mean(0)
      ref_terms.append(np.mean([np.sum((frames[b, t] - anchor) ** 2) for t in valid_t]))
      ref_w.append(weight[b])
    pairs = [t for t in range(frames.shape[1] - 1) if mask[b, t] and mask[b, t + 1]]
    if pairs:
      tmp_terms.append(np.mean([np.sum((frames[b, t] - frames[b, t + 1]) ** 2) for t in pairs]))
      tmp_w.append(weight[b])
  wmean = lambda v, w: np.sum(np.array(v) * w) / np.sum(w) if np.sum(w) else 0.0
  return wmean(ref_terms, ref_w) + lam * wmean(tmp_terms, tmp_w)


def test_identity_loss_matches_formula_unmasked():
  rng = np.random.default_rng(0)
  frames = rng.normal(size=(3, 5, 8)).astype(np.float32)
  refs = rng.normal(size=(3, 4, 8)).astype(np.float32)
  got = losses.identity_preservation_loss(frames, refs, 0.5)
  # The textbook form: mean_t ||f_t - mean_r f_r||^2 + 0.5 mean_t ||f_t - f_t+1||^2.
  anchor = refs.mean(1, keepdims=True)
  want = (np.mean(np.sum((frames - anchor) ** 2, -1))
          + 0.5 * np.mean(np.sum(np.diff(frames, axis=1) ** 2, -1)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  chex.assert_shape(got, ())


def test_identity_loss_masks_and_weights():
  rng = np.random.default_rng(1)
  frames = rng.normal(size=(4, 6, 5)).astype(np.float32)
  refs = rng.normal(size=(4, 3, 5)).astype(np.float32)
  mask = rng.random((4, 6)) > 0.3
  mask[3] = False                                   # an example with no valid frame
  ref_mask = rng.random((4, 3)) > 0.3
  ref_mask[:, 0] = True
  weight = np.array([1.0, 0.5, 0.0, 2.0], np.float32)
  got, terms = losses.identity_preservation_loss(
      frames, refs, 0.7, mask, reference_mask=ref_mask, sample_weight=weight,
      return_terms=True)
  want = numpy_identity_loss(frames, refs, 0.7, mask, ref_mask, weight)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(terms["reference"] + 0.7 * terms["temporal"], got, rtol=1e-6)
  # Garbage in masked slots does not leak into the loss.
  frames2 = np.where(mask[..., None], frames, 1e3).astype(np.float32)
  refs2 = np.where(ref_mask[..., None], refs, -1e3).astype(np.float32)
  got2 = losses.identity_preservation_loss(frames2, refs2, 0.7, mask, reference_mask=ref_mask,
                                           sample_weight=weight)
  np.testing.assert_allclose(got2, got, rtol=1e-5)


def test_identity_loss_zero_when_nothing_valid():
  x = jnp.ones((2, 3, 4))
  got = losses.identity_preservation_loss(x, x, 0.5, jnp.zeros((2, 3), bool))
  assert float(got) == 0.0


def test_flow_identities():
  rng = np.random.default_rng(2)
  x0 = rng.normal(size=(3, 2, 4, 4, 3)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0.0, 0.3, 1.0], np.float32)
  xt = diffusion.noisy_sample(x0, noise, t)
  np.testing.assert_allclose(xt[0], x0[0], atol=1e-6)
  np.testing.assert_allclose(xt[2], noise[2], atol=1e-6)
  v = diffusion.velocity_target(x0, noise)
  # With the true velocity the clean estimate is exact at every t.
  np.testing.assert_allclose(diffusion.clean_estimate(xt, t, v), x0, atol=1e-5)
  # Shift keeps the end points and pushes mid t toward noise.
  s = diffusion.timestep_shift(jnp.array([0.0, 0.5, 1.0]), 3.0)
  np.testing.assert_allclose(s, [0.0, 0.75, 1.0], atol=1e-6)
  u8 = np.array([0, 127, 255], np.uint8)
  np.testing.assert_array_equal(diffusion.to_uint8(diffusion.to_model_space(u8)), u8)


def test_logit_normal_median():
  t = diffusion.sample_logit_normal(jax.random.key(0), (20000,), 0.0, 1.0)
  assert 0.0 < float(t.min()) and float(t.max()) < 1.0
  assert abs(float(jnp.median(t)) - 0.5) < 0.02


class _Encoder(nn.Module):
  @nn.compact
  def __call__(self, crops):  # [N, S, S, 3] -> [N, D]
    return nn.Dense(6)(crops.reshape(crops.shape[0], -1))


class _VideoModel(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * self.param("gain", nn.initializers.ones, (3,))


def test_identity_gradient_reaches_model_not_encoder():
  rng = np.random.default_rng(3)
  b, c, t, h, k = 2, 1, 4, 8, 2
  x_t = jnp.asarray(rng.normal(size=(b, t, h, h, 3)), jnp.float32)
  boxes = jnp.tile(jnp.array([0.1, 0.1, 0.9, 0.9]), (b, c, t, 1))
  enc, video = _Encoder(), _VideoModel()
  enc_params = enc.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
  video_params = video.init(jax.random.key(1), x_t)["params"]
  ref_emb = jnp.asarray(rng.normal(size=(b, c, k, 6)), jnp.float32)

  def loss(video_params, enc_params):
    v = video.apply({"params": video_params}, x_t)
    x0_hat = diffusion.clean_estimate(x_t, jnp.full((b,), 0.3), v)
    frozen = jax.lax.stop_gradient(enc_params)  # as the train step does
    value, _ = losses.identity_loss_on_estimate(
        x0_hat, boxes, jnp.array([0, 1]), ref_emb, jnp.ones((b, c, k), bool),
        jnp.ones((b, c)), lambda crops: enc.apply({"params": frozen}, crops), 4, 3, 0.5)
    return value

  g_video, g_enc = jax.grad(loss, argnums=(0, 1))(video_params, enc_params)
  assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree.leaves(g_enc))
  assert float(jnp.abs(g_video["gain"]).sum()) > 0.0


def test_frame_window_is_per_example():
  x = jnp.arange(2 * 5).reshape(2, 5)
  np.testing.assert_array_equal(losses.frame_window(x, jnp.array([0, 2]), 3, axis=0),
                                [[0, 1, 2], [7, 8, 9]])
