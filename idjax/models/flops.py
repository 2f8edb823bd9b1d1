"""Analytic forward FLOPs of VideoDiT: 2 x multiply-adds of every matmul.

Counts dense layers and the attention score (q.k) and value (p.v) products;
ignores elementwise work (norms, activations, softmax, RoPE), which is small
next to the matmuls at useful widths. Tested against XLA's cost analysis.
"""

from idjax.models.dit import LAYOUT_CHANNELS


def _dense(tokens, d_in, d_out):
  return 2.0 * tokens * d_in * d_out


def _attention(q_tokens, kv_tokens, d_q, d_kv, width, keys_per_query):
  """q, k, v, out projections plus scores and values (head dims sum to width)."""
  proj = _dense(q_tokens, d_q, width) + 2 * _dense(kv_tokens, d_kv, width) + _dense(
      q_tokens, width, d_q)
  return proj + 2 * (2.0 * q_tokens * keys_per_query * width)


def _mlp(tokens, width, ratio):
  hidden = int(width * ratio)
  return _dense(tokens, width, hidden) + _dense(tokens, hidden, width)


def forward_flops(model_config, batch, frames, height, width, text_len, num_chars, num_refs,
                  *, face_embed_dim=32, face_feature_dim=32, face_cells=4,
                  routed=True) -> float:
  """FLOPs of one forward pass of VideoDiT on a [batch, frames, height, width] clip.

  `routed`: face masks are given and identity_routing is "hard"/"soft"
  (otherwise the character bank with separators is attended). The face dims
  are the frozen encoder's (embedding size, feature channels, cells).
  """
  cfg = model_config
  d, ratio = cfg.width, cfg.mlp_ratio
  pt, ph, pw = cfg.patch_size
  t, p = frames // pt, (height // ph) * (width // pw)
  n = batch * t * p                        # video tokens
  q_tok = cfg.num_identity_tokens
  total = 0.0

  # Patch embed, timestep MLP, final adaLN + unpatchify.
  total += _dense(n, pt * ph * pw * (cfg.channels + LAYOUT_CHANNELS), d)  # clip + layout map
  total += _dense(batch, 256, d) + _dense(batch, d, d)
  total += _dense(batch, d, 2 * d) + _dense(n, d, pt * ph * pw * cfg.channels)

  # Text encoder.
  l_tok = batch * text_len
  dt = cfg.text_width
  total += cfg.text_layers * (_attention(l_tok, l_tok, dt, dt, dt, text_len) + _mlp(l_tok, dt, ratio))

  # Identity encoder: key projections, then the resampler per reference
  # ("mean") or per character ("joint").
  s = face_cells + 1
  refs = batch * num_chars * num_refs
  total += _dense(refs * face_cells, face_feature_dim, d) + _dense(refs, face_embed_dim, d)
  groups, keys = (refs, s) if cfg.reference_mode == "mean" else (batch * num_chars, num_refs * s)
  total += cfg.identity_layers * (
      _attention(groups * q_tok, groups * keys, d, d, d, keys) + _mlp(groups * q_tok, d, ratio))
  if cfg.reference_mode == "mean":
    total += 2.0 * batch * num_chars * num_refs * q_tok * d   # weighted mean over refs

  # Blocks.
  if routed:
    id_keys = num_chars * q_tok
    id_kv = batch * num_chars * q_tok
  else:
    per_char = q_tok + (1 if cfg.use_separator else 0)
    id_keys = num_chars * per_char
    id_kv = batch * id_keys
  per_block = (
      _dense(batch, d, 9 * d)
      + _attention(n, n, d, d, d, p)                        # spatial
      + _attention(n, n, d, d, d, t)                        # temporal
      + _attention(n, l_tok, d, dt, d, text_len)            # text
      + _attention(n, id_kv, d, d, d, id_keys)              # identity
      + _mlp(n, d, ratio))
  if routed and cfg.identity_routing == "soft":
    # Per-character softmax: each query scores only Q keys of each of C
    # characters (same count), then a C-way weighted sum of outputs.
    per_block += 2.0 * n * num_chars * d
  total += cfg.depth * per_block
  return total
