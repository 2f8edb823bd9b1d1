"""The evaluation-only face encoder (FaceSim and the other metrics).

Independently trained (other seed, other renders, other pool of training
identities, other width and embedding size) so that the metric is not the
loss the video model was trained against.

  python train.py --config configs/face_encoder_eval.py --workdir runs/face_eval
"""

import os

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "face_encoder.py"))
  config.seed = 1
  config.render_seed = 2000
  config.identity_start = 1500    # a disjoint pool of training identities
  # 1.5x wider than the training encoder, with a smaller embedding.
  config.width = 24
  config.embed_dim = 96
  config.verification.seed = 888_000
  return config
