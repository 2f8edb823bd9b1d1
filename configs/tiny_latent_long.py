"""The demo's latent video model fine-tuned on 16-frame clips (long video).

The demo model (configs/tiny_latent.py) trains on 4-frame clips; its clips
of 240 frames are made 16 at a time, each chunk after the first continuing
from the last 8 frames of the one before (`python -m idjax.eval --frames 240
--chunk-frames 16 --context-frames 8`; idjax/sampling/extend.py). This
config starts from that model's EMA params (train.init_from) and trains it
on 16-frame clips, so that every chunk is a length the model has seen and
its temporal attention has learned continuations over 16 frames:

  python train.py --config configs/tiny_latent_long.py --workdir runs/demo/video_long \
      --config.train.init_from=runs/demo/video \
      --config.autoencoder_workdir=runs/demo/autoencoder \
      --config.face_encoder_workdir=runs/demo/face --config.eval_encoder_workdir=runs/demo/face_eval

(`make long-video` runs it and the 240-frame evaluation of both models.)
A step holds 8 clips of 16 frames: four times the frames of a demo step.

Half the clips (train.context_prob) have their first 1..15 frames given
clean, at t = 0, and only the rest noised and scored: the model learns to
continue a clip, and extend then gives it each chunk's context clean
instead of re-noising it. On 8 held-out identities at 240 frames (chunks of
16, 8 of context) the pixel change across seams fell from 5.35 to 3.72
levels (1.85 and 1.77 within chunks); docs/long_video.md.
"""

import os

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "tiny_latent.py"))
  config.data.num_frames = 16
  config.sample.num_frames = 16
  config.train.init_from = "runs/demo/video"
  config.train.steps = 250
  config.train.warmup_steps = 20
  config.train.lr = 3e-4  # fine-tuning: a third of the demo's peak rate
  config.train.checkpoint_every = 125
  config.train.context_prob = 0.5
  return config
