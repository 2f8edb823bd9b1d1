"""The tiny video model in the latent space of the project's video
autoencoder: 64x64 clips, the DiT on 16x16x8 latents.

The autoencoder (configs/autoencoder.py) maps each 64x64 frame to 16x16x8
latents (4x spatial, 1x temporal, causal); the DiT works on those with 2x2
patches, so a frame is 64 tokens, as the 32x32 pixel model's 4x4 patches
are, and a training step costs about what the pixel model's does. The
identity loss decodes the clean estimate of 2 consecutive frames per clip,
only a 10x10-cell (40 px) window around each face, through the frozen
decoder.

The first reference of each character is drawn in its face box and read as
input channels beside the latents (model.reference_canvas; encoded by the
same autoencoder): without it the model could not lay a face out from noise
(FaceSim position 0.23 of the way from floor to ceiling among 8 held-out
identities after 2000 steps); with it, 0.95 (see the README). This is the
demo's video model (scripts/demo.sh).

  python train.py --config configs/autoencoder.py --workdir runs/latent/autoencoder
  python train.py --config configs/tiny_latent.py --workdir runs/latent/video \
      --config.autoencoder_workdir=runs/latent/autoencoder
"""

import os

from idjax import configlib


def get_config():
  config = configlib.load_config_file(os.path.join(os.path.dirname(__file__), "tiny.py"))
  # The frozen video autoencoder whose latents the model diffuses.
  config.autoencoder_workdir = "runs/demo/autoencoder"
  config.data.resolution = 64
  config.data.reference_resolution = 64
  config.model.space = "latent"          # "latent" (autoencoder_workdir's) or "pixel"
  config.model.channels = 8              # latent channels
  config.model.patch_size = (1, 2, 2)    # (frames, height, width) of the 16x16 latent grid
  config.model.reference_canvas = True   # references drawn in their boxes, as input channels
  # ... only on each reference's head, with the drawn coverage as one more
  # channel (the world's head mattes; a PNG's alpha; none: the whole ellipse).
  # Without it the model copies the reference's backdrop around the head
  # (docs/demo_quality.md, "The canvas's alpha").
  config.model.canvas_alpha = True
  # Each patch's place in the frame, added to its token: with RoPE alone a
  # token drawn from noise cannot tell the top of the frame from the bottom.
  # Among 32 held-out identities, eval seeds 0 / 1 / 2, against the same
  # model without it: the backdrop's variation inside a frame 0.10 / 0.08 /
  # 0.10 of real (0.02 on every seed: a flat field), FD of whole frames
  # 1.03x / 1.18x / 1.19x the floor (1.09x / 1.24x / 1.23x), FaceSim position
  # 0.978 / 1.002 / 0.999 (0.972 / 0.991 / 0.991); HF face 0.84 / 0.76 / 0.76
  # (0.93 / 0.86 / 0.86). See docs/demo_quality.md, "Where a patch is".
  config.model.absolute_position = True
  # Trained at strength 1, and the canvas is scaled by the strength, so 1 is
  # the default here: among 8 held-out identities strength 1 gives FaceSim
  # position 0.998 and attributes 0.807, 0.8 gives 0.955 and 0.784 (the
  # README's strength plot).
  config.sample.identity_strength = 1.0
  # Identity guidance inside the face masks (samplers.guide). Among 32
  # held-out identities, 1 / 2 / 2.5 give the face box 0.27 / 0.74 / 0.93 of
  # real high-frequency energy (eyes, glasses and mouths drawn rather than
  # blurred), attributes 0.83 / 0.84 / 0.82 (real 0.86), FaceSim position
  # 0.98 / 0.99 / 0.98. Two model passes per step instead of one.
  config.sample.identity_guidance = 2.5
  # Renew all of the noise after each Euler step (samplers.renoise_step):
  # the ODE sampler carries the starting noise's low frequencies into the
  # picture as a blotched background, which nothing in the prompt steers.
  # Among 32 held-out identities (python -m idjax.eval --renoise 0 / 1),
  # renoise 1 gives a flat backdrop, attributes 0.815 (ODE 0.802; real
  # 0.855), FD face 1.19x (1.21x), HF face 1.05 (0.97), HF background 0.75
  # (0.68), FaceSim position 0.982 (0.981). The backdrop beyond the faces
  # has 0.15 of real renders' high-frequency energy (ODE: 0.22, blotch
  # edges): no gradient or disc is drawn either way.
  config.sample.renoise = 1.0
  config.train.id_loss_frames = 2        # consecutive frames per clip, decoded for the loss
  config.train.id_loss_latent_window = 10  # latent cells (40 px) decoded around each face
  return config
