"""Identity adapters on a tiny Wan-shaped backbone, in the latent space of the
project's video autoencoder: the Wan path (configs/wan_1_3b_identity.py) at a
size that trains on a 2-core CPU.

The backbone is the Wan 2.1 DiT's architecture (idjax.models.wan: full 3D
self-attention with RoPE, text cross-attention, adaLN from one shared time
projection) at 4 layers of width 96, with the project's identity cross-
attention after each text cross-attention. No Wan weights of this size
exist, so the backbone starts from random weights and trains with
everything else (train.trainable = "all"); with real weights the adapters
alone train (configs/wan_1_3b_identity.py). Text: a small trainable table
embeds the synthetic world's prompt tokens into text_dim, standing in for
UMT5 (model.text_input = "tokens").

Latents and data as configs/tiny_latent.py (64x64 frames, 16x16x8 latents,
2x2 patches: 64 tokens a frame). Wan predicts velocity and is trained on
the plain velocity MSE; it has no reference-canvas input.

  python train.py --config configs/wan_tiny.py --workdir runs/wan_tiny/video \
      --config.autoencoder_workdir=runs/latent/autoencoder
"""

import os

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "tiny_latent.py"))
  m = config.model
  # VideoDiT's own keys, which the Wan backbone does not read.
  for key in ("text_width", "text_layers", "temporal_causal", "scan_blocks", "absolute_position"):
    del m[key]
  m.backbone = "wan"
  m.prediction = "velocity"  # Wan's flow velocity, noise - x0
  m.reference_canvas = False  # the backbone's input is the latents alone
  m.canvas_alpha = False
  # Backbone: Wan 2.1's shapes scaled down (the 1.3B: 1536 / 30 / 12 / 8960 / 4096 / 256).
  m.width = 96  # num_heads * head_dim; head_dim 24 splits 8/8/8 for RoPE
  m.depth = 4
  m.num_heads = 4
  m.ffn_dim = 256
  m.text_dim = 64
  m.freq_dim = 64
  m.text_input = "tokens"  # a trainable table of prompt tokens (no UMT5 offline)
  # With text_input = "embeddings": the .safetensors table of precomputed UMT5
  # output, prompt -> [data.text_len, text_dim] (idjax/data/text_embeddings.py).
  config.data.text_embeddings = ""
  m.backbone_param_dtype = "float32"
  # Identity adapters (resampler and routing as the project's own model).
  m.mlp_ratio = 2.0  # of the resampler's MLP
  config.train.trainable = "all"  # random backbone: it must learn too
  config.train.loss_weighting = "velocity"  # Wan's objective
  config.sample.identity_strength = 0.8
  # The ODE sampler, as Wan 2.1 is sampled: renoising (tiny_latent.py's
  # default) is measured on the project's own demo model only.
  config.sample.renoise = 0.0
  return config
