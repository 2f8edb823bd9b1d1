"""The tiny video model in pixel space (the first round's demo), kept for the
pixel-vs-latent comparison: 32x32 clips, 4x4 patches of raw pixels.

  python train.py --config configs/tiny_pixel.py --workdir runs/pixel/video
"""

import os

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "tiny.py"))
  config.autoencoder_workdir = ""
  config.data.resolution = 32
  config.data.reference_resolution = 32
  config.model.space = "pixel"
  config.model.channels = 3
  config.model.patch_size = (1, 4, 4)
  config.train.id_loss_frames = 4
  return config
