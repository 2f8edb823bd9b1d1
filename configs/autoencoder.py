"""The video autoencoder whose latent space the video DiT diffuses in.

  python train.py --config configs/autoencoder.py --workdir runs/demo/autoencoder

64x64 frames -> 16x16x8 latents per frame (4x spatial, 1x temporal: the
encoder is per frame, so frame k's latents depend on frame k alone and
images and clips share it). 4x with 8 channels against 8x with 16 or 32
(held-out, 32 clips x 8 frames, 2400 steps on this 2-core CPU): 27.97 dB
PSNR (face box 25.15 dB) and FaceSim of reconstructions 0.991 under the
evaluation encoder, against 23.73 dB / 0.957 for 8x with 32 channels. At 4x
the DiT uses 2x2 patches, so a frame is still 64 tokens
(configs/tiny_latent.py).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = "autoencoder"
  config.seed = 0
  # Frozen encoders (made by configs/face_encoder.py and face_encoder_eval.py):
  # the training one gives the face-feature loss, the evaluation one the report.
  config.face_encoder_workdir = "runs/demo/face"
  config.eval_encoder_workdir = "runs/demo/face_eval"

  # Model (idjax.autoencoder.model.Autoencoder): spatial factor
  # patch * 2 ** (len(widths) - 1).
  config.model = ml_collections.ConfigDict()
  config.model.widths = (32, 64)          # channels at 32x32 and 16x16 (for 64x64 frames)
  config.model.encoder_blocks = (1, 2)
  config.model.decoder_blocks = (1, 2)
  config.model.latent_channels = 8
  config.model.patch = 2                  # space-to-depth before the first conv
  config.model.temporal_kernel = 1        # frames read by the last level's causal temporal convs
  config.model.groups = 0                 # GroupNorm groups; 0: no normalisation

  # Data: clips rendered on the fly; clip i of step s is training example s * B + i.
  config.data = ml_collections.ConfigDict()
  config.data.resolution = 64
  config.data.num_frames = 1              # the model is per frame: one frame of each clip
  config.data.max_characters = 1
  config.data.min_characters = 1
  config.data.seed = 3000                 # world seed of the training renders

  # Optimisation: AdamW, warmup then cosine decay to 5% of lr.
  config.train = ml_collections.ConfigDict()
  config.train.steps = 3600
  config.train.batch_size = 4             # clips (x num_frames frames)
  config.train.lr = 2e-3
  config.train.warmup_steps = 30
  config.train.weight_decay = 0.0
  config.train.grad_clip = 1.0
  config.train.face_box_weight = 3.0      # face-box pixels weigh 1 + this in the L1 term
  config.train.edge_weight = 0.0          # L1 of the error's pixel differences
  config.train.latent_noise = 0.1         # std of the noise added to latents in training
  config.train.latent_weight = 1e-3       # weight of the latents' mean square
  config.train.face_weight = 0.5          # face-feature term under the training encoder
  config.train.face_feature_weight = 1.0  # its feature-map part, relative to the embedding part
  config.train.log_every = 200

  # Latent statistics (saved with the checkpoint) over training clips.
  config.stats = ml_collections.ConfigDict()
  config.stats.num_clips = 128
  config.stats.batch_size = 16
  config.stats.index_start = 10_000_000   # past every index a training run reads

  # Held-out report and contact sheet.
  config.eval = ml_collections.ConfigDict()
  config.eval.num_clips = 64
  config.eval.num_frames = 8              # longer than the training clips, as the DiT samples
  config.eval.batch_size = 16
  config.eval.seed = 4000
  config.eval.sheet_clips = 8
  config.eval.sheet_frames = 4
  return config
