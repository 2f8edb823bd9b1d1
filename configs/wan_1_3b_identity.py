"""Identity adapters on the frozen Wan2.1-T2V-1.3B DiT, fsdp-sharded over a pod.

The backbone is Wan2.1-T2V-1.3B's transformer at its published sizes (dim
1536, 30 layers, 12 heads, FFN 8960, UMT5 text_dim 4096, freq_dim 256, 16
latent channels in and out, (1, 2, 2) patches; 1,418,996,800 parameters),
held in bfloat16 and frozen (train.trainable = "adapters"): only the
identity path trains, in float32: the resampler and, after each block's
text cross-attention, a zero-initialised identity cross-attention routed by
the face masks. Load the backbone with
idjax.models.wan.transformer_weights.load_transformer and put it in the
params with identity_dit.with_backbone.

Inputs: latents of Wan's video VAE (autoencoder_workdir, 16 channels, 4x
temporal and 8x spatial compression: 17 frames of 256x256 are 5x32x32
latents, 1280 tokens) and precomputed UMT5-XXL prompt embeddings
[B, 512, 4096] (model.text_input = "embeddings"), which the model takes as
`text_embeddings`, read by prompt from the table that data.text_embeddings
names (format: idjax/data/text_embeddings.py). This workspace has neither
the weights nor such embeddings; the config is checked, and its params
counted, abstractly (jax.eval_shape) in tests/test_wan_identity.py.
"""

import os

import ml_collections

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "wan_tiny.py"))
  config.face_encoder_workdir = "runs/wan/face"  # an imported IResNet ArcFace
  config.eval_encoder_workdir = "runs/wan/face_eval"
  config.autoencoder_workdir = "runs/wan/vae"  # Wan 2.1's video VAE
  d = config.data
  d.resolution = 256
  d.reference_resolution = 112  # ArcFace's input size
  d.num_frames = 17  # 5 latent frames (1 + 16 / 4)
  d.max_characters = 4
  d.text_len = 512  # Wan's UMT5 context length

  m = config.model
  m.channels = 16
  m.patch_size = (1, 2, 2)
  m.width = 1536
  m.depth = 30
  m.num_heads = 12
  m.ffn_dim = 8960
  m.text_dim = 4096
  m.freq_dim = 256
  m.text_input = "embeddings"  # precomputed UMT5-XXL, [B, 512, 4096]
  del m["text_vocab_size"]
  m.num_identity_tokens = 32
  m.identity_layers = 4
  m.mlp_ratio = 4.0
  m.reference_mode = "joint"
  m.attention_impl = "cudnn"  # XLA where cuDNN is unavailable (TPU)
  m.remat_policy = "dots_with_no_batch_dims_saveable"
  m.dtype = "bfloat16"
  m.param_dtype = "float32"  # the adapters, which train
  m.backbone_param_dtype = "bfloat16"  # the frozen backbone

  tc = config.train
  tc.trainable = "adapters"
  tc.steps = 20_000
  tc.batch_size = 64  # must divide by the fsdp size
  tc.lr = 1e-4
  tc.warmup_steps = 500
  tc.ema_decay = 0.999
  tc.t_logit_mean = 0.0
  tc.lambda_id = 0.1
  tc.id_loss_frames = 2
  tc.id_loss_latent_window = 14  # latent cells (112 px) around each face
  tc.checkpoint_every = 1000
  tc.keep_checkpoints = 3
  tc.sample_every = 2000

  s = config.sample
  s.num_frames = 17
  s.steps = 50
  s.shift = 3.0  # Wan's sample_shift at 480p
  s.text_guidance = 5.0  # Wan's default guidance scale
  s.per_device_batch = 1

  # Parameters and optimizer state sharded over every chip of the pod.
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
  return config
