"""Samples written while the video model trains (a hook that train.py gives the loop).

The trainer does not import sampling: train.py wires `write_samples` in as a
`loop.Hook`, which the loop runs once the checkpoint of the hook's step is on
disk, so the samples come from the run as of that step.
"""

import dataclasses
import os

import jax

from idjax import video_io
from idjax.data.pipeline import world_config
from idjax.data.world import render_clip
from idjax.sampling.generator import Generator


def write_samples(config, workdir, step, num=2):
  """Samples of held-out identities (from the latest checkpoint) as GIF + contact
  sheet in WORKDIR/samples; the references are world renders, the boxes the
  clip's own, so the face is placed where the real clip has it."""
  if jax.process_count() > 1 or jax.process_index() != 0:
    return  # The Generator is single-controller; multi-host runs sample with sample.py.
  # Rendered at the sampling length (which may exceed the trained one), so
  # the real clips' box trajectories have one box per generated frame.
  frames = int(config.sample.num_frames)
  world = dataclasses.replace(world_config(config.data), num_frames=frames)
  clips = [render_clip(world, config.data.seed + 1, i, split="heldout") for i in range(num)]
  prompts = [c["prompt"] for c in clips]
  references = [
      [list(c["references"][j]) for j in range(len(c["references"])) if c["character_valid"][j]]
      for c in clips
  ]
  layout = [
      [c["boxes"][j] for j in range(len(c["boxes"])) if c["character_valid"][j]] for c in clips
  ]
  generator = Generator.from_workdir(workdir)
  if generator.text_table is not None:
    # A model reading precomputed text embeddings samples the world's prompts
    # that its table has, and the others without text, rather than stop a run.
    prompts = [p if p in generator.text_table else "" for p in prompts]
  out = generator.generate(
      prompts, references, num_frames=frames, layout=layout, seed=step, progress=False
  )
  folder = os.path.join(workdir, "samples")
  os.makedirs(folder, exist_ok=True)
  for i, frames in enumerate(out["frames"]):
    video_io.write_gif(os.path.join(folder, f"step{step:07d}_{i}.gif"), frames)
    refs = [r for character in references[i] for r in character]
    video_io.write_png(
        os.path.join(folder, f"step{step:07d}_{i}.png"), video_io.contact_sheet(frames, refs)
    )
