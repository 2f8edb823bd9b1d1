"""The tiny video model: trains on a 2-core CPU in about 13 minutes.

Budget choice: on 2 CPU cores the number of optimizer steps matters more than
clip length, so the demo trains 2000 steps on batches of 8 four-frame clips
(rather than fewer steps of longer clips), and samples 8 frames: temporal
RoPE carries it past the trained length. 2000 steps rather than 1000: held-
out FaceSim goes from 0.59 to 0.73 of the way from floor to ceiling, and the
whole demo still fits in about 20 minutes. Timesteps lean to low noise (t_logit_mean -0.5) and the
identity loss weighs 0.3: on this budget the face region's identity is
formed at low and middle noise, and both raised held-out FaceSim in
1000-step runs (see the closing note of the training issue for the sweep).

  python train.py --config configs/tiny.py --workdir runs/demo/video

Pixel space: the model diffuses the 32x32 clip itself (pixels in [-1, 1]),
one character. configs/tiny_latent.py is the same model in the latent space
of the project's video autoencoder.
"""

import ml_collections

from idjax import sharding


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = "video"
  config.seed = 0
  # Frozen encoders (made by configs/face_encoder.py and face_encoder_eval.py).
  config.face_encoder_workdir = "runs/demo/face"
  config.eval_encoder_workdir = "runs/demo/face_eval"
  config.autoencoder_workdir = ""        # latent space only (configs/tiny_latent.py)

  # --- data (owner: data) ---
  config.data = ml_collections.ConfigDict()
  config.data.source = "on_the_fly"      # or "tfds" (prepared ArrayRecord files)
  config.data.tfds_data_dir = ""
  config.data.resolution = 32
  config.data.num_frames = 4             # trains on 4-frame clips, samples 8 (RoPE)
  config.data.max_characters = 1
  config.data.min_characters = 1
  config.data.num_references = 3
  config.data.reference_resolution = 32
  config.data.seed = 0
  config.data.split = "train"
  config.data.size = 1_000_000           # examples in the (virtual) training set
  config.data.text_len = 24

  # --- model (owner: model) ---
  config.model = ml_collections.ConfigDict()
  config.model.backbone = "idjax"        # the project's VideoDiT; "wan": configs/wan_tiny.py
  config.model.space = "pixel"           # "pixel" or "latent" (autoencoder_workdir's latents)
  config.model.channels = 3
  config.model.patch_size = (1, 4, 4)    # (frames, height, width)
  config.model.prediction = "clean"      # network output: "clean" clip (x0) or "velocity"
  # The first reference drawn in each face box, as input channels beside the
  # clip (conditioning.reference_canvas).
  config.model.reference_canvas = False
  # One more canvas channel, its alpha: 1 where a reference's head is drawn
  # (the references' head mattes, data's reference_mattes or a PNG's alpha).
  config.model.canvas_alpha = False
  # A fixed sin-cos embedding of each patch's place in the frame, added to
  # its token (RoPE alone gives attention only relative offsets).
  config.model.absolute_position = False
  # The face masks the model reads (identity routing, the layout channels,
  # the canvas, identity guidance) are the ellipses of the face boxes shrunk
  # by this factor about their centres; 1 = the box's inscribed ellipse.
  config.model.face_mask_scale = 1.0
  # Width 96 / MLP ratio 2: ~1.5M params, ~0.73 GFLOPs forward per 8x32x32
  # clip, so the CPU demo trains in about ten minutes.
  config.model.width = 96
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 2.0
  config.model.text_width = 96
  config.model.text_layers = 2
  config.model.text_vocab_size = 64      # upper bound >= len(prompts.VOCABULARY), shards evenly
  config.model.text_len = config.data.get_ref("text_len")
  config.model.num_identity_tokens = 16
  config.model.identity_layers = 2
  config.model.reference_mode = "mean"   # "mean" (the article's) or "joint"
  config.model.max_characters = config.data.get_ref("max_characters")
  config.model.use_separator = True
  config.model.identity_routing = "hard"  # "hard" (mask-routed), "soft", "none"
  config.model.temporal_causal = False
  config.model.attention_impl = "xla"    # "xla" or "cudnn"
  config.model.scan_blocks = True
  config.model.remat_policy = "none"     # "none", "full", "dots_saveable", ...
  config.model.param_dtype = "float32"
  config.model.dtype = "float32"         # compute dtype; bfloat16 on accelerators

  # --- training (owner: train) ---
  config.train = ml_collections.ConfigDict()
  config.train.steps = 2000
  config.train.batch_size = 8
  config.train.grad_accum = 1
  config.train.trainable = "all"         # or "adapters": only the identity path (frozen backbone)
  # A video workdir whose EMA params start this run (fine-tuning: step 0, fresh
  # optimizer); "" starts from the init. Ignored when resuming.
  config.train.init_from = ""
  config.train.lr = 1e-3
  config.train.warmup_steps = 50
  config.train.weight_decay = 0.01
  config.train.grad_clip = 1.0
  config.train.ema_decay = 0.99
  config.train.loss_weighting = "clean"  # "velocity" (plain v-MSE) or "clean" (x0-MSE)
  config.train.t_logit_mean = -0.5       # < 0: more low-noise steps, where faces get detail
  config.train.t_logit_std = 1.0
  config.train.text_dropout = 0.1
  config.train.identity_dropout = 0.1
  config.train.lambda_id = 0.3
  config.train.lambda_temporal = 0.5
  config.train.id_loss_max_t = 0.6       # identity loss only where t <= this
  config.train.id_loss_frames = 4        # consecutive frames per clip
  config.train.id_loss_latent_window = 0  # latent space: cells decoded around each face (0: whole frames)
  config.train.context_prob = 0.0        # share of clips whose first 1..T-1 frames are given clean (t = 0)
  config.train.log_every = 10
  config.train.checkpoint_every = 500
  config.train.keep_checkpoints = 2
  config.train.sample_every = 0          # 0: only at the end
  config.train.max_nonfinite_steps = 5
  config.train.mask_dropout = 0.2        # all-ones face masks for this fraction
  config.train.matte_dropout = 0.3       # all-ones reference mattes (none known) for this fraction
  # Multi-process runs: a process whose peers stop answering exits with an
  # error after this many seconds instead of hanging.
  config.train.heartbeat_timeout_s = 100
  config.train.init_timeout_s = 300

  # --- sampling defaults (owner: sample) ---
  config.sample = ml_collections.ConfigDict()
  config.sample.sampler = "euler"
  config.sample.steps = 25
  config.sample.identity_strength = 0.8
  config.sample.text_guidance = 1.0
  config.sample.identity_guidance = 1.0
  # Share of the noise swapped for fresh noise after each Euler step
  # (samplers.renoise_step), in one-shot and chunked sampling alike; 0 is
  # the ODE sampler.
  config.sample.renoise = 0.0
  config.sample.num_frames = 8           # may exceed data.num_frames (RoPE)
  config.sample.shift = 1.0              # timestep-grid shift; < 1 puts steps at low noise
  # Examples per device per model call. Bit-identical frames on any mesh hold
  # for equal values (see idjax/sampling/generator.py); raise on accelerators.
  config.sample.per_device_batch = 1

  # --- mesh and sharding (owner: lead) ---
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  config.dcn_mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, sequence=1))
  config.sharding = ml_collections.ConfigDict()
  config.sharding.rules = sharding.DEFAULT_RULES
  return config
