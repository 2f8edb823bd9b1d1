"""Analytic forward FLOPs of the video models (VideoDiT, and the Wan DiT with
identity adapters): 2 x multiply-adds of every matmul.

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
  """FLOPs of one forward pass of the config's model on a [batch, frames, height, width] clip.

  `routed`: face masks are given and identity_routing is "hard"/"soft"
  (otherwise the character bank with separators is attended). The face dims
  are the frozen encoder's (embedding size, feature channels, cells).
  """
  cfg = model_config
  if cfg.get("backbone", "idjax") == "wan":
    return _wan_forward_flops(cfg, batch, frames, height, width, text_len, num_chars, num_refs,
                              face_embed_dim, face_feature_dim, face_cells, routed)
  d, ratio = cfg.width, cfg.mlp_ratio
  pt, ph, pw = cfg.patch_size
  t, p = frames // pt, (height // ph) * (width // pw)
  n = batch * t * p                        # video tokens
  total = 0.0

  # Patch embed, timestep MLP, final adaLN + unpatchify.
  total += _dense(n, pt * ph * pw * (cfg.channels + LAYOUT_CHANNELS), d)  # clip + layout map
  total += _dense(batch, 256, d) + _dense(batch, d, d)
  total += _dense(batch, d, 2 * d) + _dense(n, d, pt * ph * pw * cfg.channels)

  # Text encoder.
  l_tok = batch * text_len
  dt = cfg.text_width
  total += cfg.text_layers * (_attention(l_tok, l_tok, dt, dt, dt, text_len) + _mlp(l_tok, dt, ratio))

  total += _identity_encoder(cfg, d, batch, num_chars, num_refs, face_embed_dim,
                             face_feature_dim, face_cells)

  # Blocks.
  per_block = (
      _dense(batch, d, 9 * d)
      + _attention(n, n, d, d, d, p)                        # spatial
      + _attention(n, n, d, d, d, t)                        # temporal
      + _attention(n, l_tok, d, dt, d, text_len)            # text
      + _identity_attention(cfg, d, n, batch, num_chars, routed)
      + _mlp(n, d, ratio))
  total += cfg.depth * per_block
  return total


def _identity_encoder(cfg, d, batch, num_chars, num_refs, face_embed_dim, face_feature_dim,
                      face_cells):
  """Key projections, then the resampler per reference ("mean") or per character ("joint")."""
  q_tok, ratio = cfg.num_identity_tokens, cfg.mlp_ratio
  s = face_cells + 1
  refs = batch * num_chars * num_refs
  total = _dense(refs * face_cells, face_feature_dim, d) + _dense(refs, face_embed_dim, d)
  groups, keys = (refs, s) if cfg.reference_mode == "mean" else (batch * num_chars, num_refs * s)
  total += cfg.identity_layers * (
      _attention(groups * q_tok, groups * keys, d, d, d, keys) + _mlp(groups * q_tok, d, ratio))
  if cfg.reference_mode == "mean":
    total += 2.0 * batch * num_chars * num_refs * q_tok * d   # weighted mean over refs
  return total


def _identity_attention(cfg, d, n, batch, num_chars, routed):
  """One block's identity cross-attention from n video tokens."""
  q_tok = cfg.num_identity_tokens
  if routed:
    id_keys = num_chars * q_tok
    id_kv = batch * num_chars * q_tok
  else:
    per_char = q_tok + (1 if cfg.use_separator else 0)
    id_keys = num_chars * per_char
    id_kv = batch * id_keys
  total = _attention(n, id_kv, d, d, d, id_keys)
  if routed and cfg.identity_routing == "soft":
    # Per-character softmax: each query scores only Q keys of each of C
    # characters (same count), then a C-way weighted sum of outputs.
    total += 2.0 * n * num_chars * d
  return total


def _wan_forward_flops(cfg, batch, frames, height, width, text_len, num_chars, num_refs,
                       face_embed_dim, face_feature_dim, face_cells, routed) -> float:
  """The Wan DiT with identity adapters (wan.identity_dit.WanIdentityDiT)."""
  d = cfg.width
  pt, ph, pw = cfg.patch_size
  t, p = frames // pt, (height // ph) * (width // pw)
  n = batch * t * p
  l_tok = batch * text_len
  patch = pt * ph * pw * cfg.channels
  total = _dense(n, patch, d) + _dense(n, d, patch)                       # patches in, out
  total += _dense(batch, cfg.freq_dim, d) + _dense(batch, d, d) + _dense(batch, d, 6 * d)
  total += _dense(l_tok, cfg.text_dim, d) + _dense(l_tok, d, d)           # text embedder
  total += _identity_encoder(cfg, d, batch, num_chars, num_refs, face_embed_dim,
                             face_feature_dim, face_cells)
  per_block = (
      _attention(n, n, d, d, d, t * p)                      # full 3D self-attention
      + _attention(n, l_tok, d, d, d, text_len)             # text (context already width d)
      + _identity_attention(cfg, d, n, batch, num_chars, routed)
      + _dense(n, d, cfg.ffn_dim) + _dense(n, cfg.ffn_dim, d))
  return total + cfg.depth * per_block
