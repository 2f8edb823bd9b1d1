"""A real-scale video model for TPU pods and GPU clusters (DiT-XL-like width).

28 blocks of width 1152 on 2x8x8 spacetime patches of 16x128x128 clips (or
of a video VAE's latents), bf16 compute, f32 parameters, fsdp-sharded.
"""

import os

import ml_collections

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "tiny.py"))

  config.face_encoder_workdir = "runs/base/face"
  config.eval_encoder_workdir = "runs/base/face_eval"
  config.data.resolution = 128
  config.data.num_frames = 16
  config.sample.num_frames = 16
  config.data.max_characters = 4
  config.data.text_len = 64             # 4-character prompts reach 59 words
  config.data.reference_resolution = 64

  config.model.patch_size = (2, 8, 8)
  config.model.width = 1152
  config.model.depth = 28
  # Heads of 128: cuDNN's flash kernels tile the head dim in 64s, so DiT-XL's
  # 16 heads of 72 paid for 128. On one H100 at batch 8 the step went from
  # 381 to 343 ms (bench/results/train_step_base_h100_b8_*.json). The text
  # encoder shares the head count, hence 576 = 9 x 64 wide.
  config.model.num_heads = 9
  config.model.mlp_ratio = 4.0
  config.model.text_width = 576
  config.model.text_layers = 4
  config.model.num_identity_tokens = 32
  config.model.identity_layers = 4
  config.model.reference_mode = "joint"
  config.model.remat_policy = "dots_saveable"
  config.model.dtype = "bfloat16"
  config.model.attention_impl = "cudnn"

  config.train.steps = 200_000
  config.train.batch_size = 256
  config.train.lr = 1e-4
  config.train.warmup_steps = 2000
  config.train.ema_decay = 0.9999
  config.train.checkpoint_every = 2000
  config.train.keep_checkpoints = 3
  config.train.sample_every = 5000

  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
  return config
