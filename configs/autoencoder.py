"""The video autoencoder whose latent space the video DiT diffuses in.

  python train.py --config configs/autoencoder.py --workdir runs/demo/autoencoder

64x64 frames -> 16x16x8 latents per frame: 4x spatial, 1x temporal, 6x fewer
numbers than pixels. Encode 124 and decode 152 MFLOP per 64x64 frame (XLA's
count), 193k + 190k params. 4.5 minutes on a shared 2-core CPU (257 s of
training), giving on 64 held-out clips x 8 frames: PSNR 28.8 dB, 25.5 dB
inside the face box, FaceSim 0.989 (lowest frame 0.942; other identities
0.046), Laplacian energy 0.45 of the originals' inside the face box and 0.70
in the background (WORKDIR/report.json, WORKDIR/reconstructions.png).

Choices, each measured on 32 held-out clips x 8 frames at 64x64 (PSNR whole
frame / inside the face box, FaceSim of reconstructions against originals
under the evaluation encoder, Laplacian energy inside the face box relative
to the originals; same budget within each comparison):

* 4x spatial, not 8x. 2400 steps of 2 clips x 2 frames: 4x with 8 channels
  26.1 / 24.2 dB, FaceSim 0.988; 8x with 32 channels (the same 6x
  compression, an 8x8 grid) 23.7 / 21.9 dB, 0.957. At 600 steps, 8x with 16
  channels 22.5 / 21.3 against 4x with 4 channels 23.7 / 22.9. A 12-pixel
  face is 1.5 cells of an 8x grid. The DiT takes the 16x16 grid in 2x2
  patches: 64 tokens per frame, as with 8x and 1x1 patches
  (configs/tiny_latent.py).
* 8 channels. 16 gave 28.8 / 25.7 against 28.6 / 25.7 for 8 (3600 steps):
  within this budget the decoder, not the bottleneck, limits reconstruction,
  and fewer channels are less for the DiT to generate.
* Temporal factor 1 and no temporal mixing (temporal_kernel 1): every frame
  is encoded and decoded alone, which is causal by construction, and any
  subset of frames decodes exactly as inside its clip. Causal temporal convs
  (kernel 3, at the 16x16 level) gave 25.2 / 23.5 dB against 25.0 / 23.5
  without (1200 steps of 4 clips x 2 frames); training on single frames of
  4 clips instead gained 1 dB at equal compute. 4x temporal compression was
  not built: the DiT trains on 4-frame clips, which it would turn into one or
  two latent frames (Wan-style 1 + (T - 1) / 4), leaving its temporal
  attention nothing to learn, and blinks and mouth openings last 1-3 frames.
  Tokens are not the DiT's bottleneck at 64 per frame.
* No normalisation layers: 28.0 / 25.2 dB against 27.1 / 24.5 with GroupNorm
  (2400 steps), no halo around faces, and a latent window decodes as it
  would inside the whole frame except within the receptive field (about 7
  latent cells) of the window's edge.
* A small adversarial term (gan_weight 0.05 from step 800): Laplacian energy
  in the face box 0.41 of the originals' against 0.13-0.15 with the pixel and
  face losses alone, at the same PSNR (29.1 / 26.0 dB, 3600 steps). Weight
  0.15 gave 0.45 and -0.5 dB; the unbounded hinge form diverged at 0.2.
  An L1 term on pixel differences made it blurrier (0.08); weighting the face
  box 9x instead of 4x, a full-resolution decoder stage, and latent noise
  0 / 0.03 / 0.1 each changed PSNR by 0.5 dB or less.
* The face-feature term: without it 28.9 / 25.6 dB but FaceSim 0.977 with a
  lowest frame of 0.80 (0.989 / 0.942 with it), at 3000 steps.
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
  config.train.steps = 3000
  config.train.batch_size = 4             # clips (x num_frames frames)
  config.train.lr = 2e-3
  config.train.warmup_steps = 30
  config.train.weight_decay = 0.0
  config.train.grad_clip = 1.0
  config.train.face_box_weight = 3.0      # face-box pixels weigh 1 + this in the L1 term
  config.train.latent_noise = 0.03        # std of the noise added to latents in training
  config.train.latent_weight = 1e-3       # weight of the latents' mean square
  config.train.face_weight = 0.5          # face-feature term under the training encoder
  config.train.face_feature_weight = 1.0  # its feature-map part, relative to the embedding part
  config.train.gan_weight = 0.05          # adversarial term of the decoder (0: no discriminator)
  config.train.gan_start = 800            # first step of the adversarial term
  config.train.disc_widths = (32, 64)
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
