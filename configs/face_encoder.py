"""The face encoder used for identity conditioning and the identity loss.

A small pre-activation ResNet trained with ArcFace on the synthetic world's
training identities, at clip resolutions 32 and 64 (the demo runs video at 32).
Sized to train in about 2-3 minutes on a 2-core CPU.

  python train.py --config configs/face_encoder.py --workdir runs/face
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = "face_encoder"
  config.architecture = "resnet"
  config.seed = 0

  # Encoder: crops [N, input_size, input_size, 3] in [-1, 1].
  config.input_size = 32
  config.width = 16               # channels of the first stage, x2 per stage
  config.stem_stride = 2          # the first stage runs at 16x16
  config.num_stages = 3           # 32 -> 16 -> 8 -> 4x4 feature map (64 ch)
  config.blocks_per_stage = 1
  config.groups = 8               # GroupNorm groups
  config.embed_dim = 128

  # Data: face crops rendered by the world, cached in memory before training.
  config.num_train_identities = 1500
  config.identity_start = 0       # first of the train-split identities used
  config.resolutions = (32, 64)   # clip (and reference) sides rendered
  config.clips_per_identity = 1   # per resolution
  config.frames_per_clip = 4      # face crops taken from each clip
  config.references_per_clip = 4  # reference portraits of each clip
  config.context = 1.25           # cached crops hold the box enlarged by this
  config.box_jitter = 0.05        # box shift / scale jitter, fraction of box
  config.render_seed = 1000       # world seed of the training renders

  # Optimisation: AdamW, linear warmup then cosine decay.
  config.steps = 600
  config.batch_size = 128
  config.lr = 3e-3
  config.warmup_steps = 40
  config.weight_decay = 5e-4
  config.margin = 0.2             # ArcFace angular margin m (radians)
  config.scale = 30.0             # ArcFace logit scale s
  config.log_every = 50

  # Verification after training: threshold fitted on train-identity pairs,
  # accuracy/AUC reported on held-out pairs, per clip resolution.
  config.verification = ml_collections.ConfigDict()
  config.verification.resolutions = (64, 32)
  config.verification.num_identities = 300   # 2x as many pairs per split
  config.verification.seed = 777_000
  return config
