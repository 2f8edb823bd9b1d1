"""Reference portraits of a held-out identity of the synthetic world.

The page's "pick a held-out identity" gives what `python -m idjax.data.references
--index N --count K` writes (same seed, same portraits, same prompt), so a clip
made from it can be repeated with sample.py. Held-out identities are never
seen in training: what the model makes of them is zero-shot.
"""

import os

from PIL import Image

from idjax.app.validate import InputError, check_int
from idjax.config_rules import MAX_SEED
from idjax.data import world

SEED = 12345  # idjax.data.references' default --seed
RESOLUTION = 64  # and its default --resolution


def pick(index, count: int, folder: str) -> tuple[list[str], str, int]:
  """Writes ref_0.png .. ref_{count-1}.png of held-out example `index` into
  `folder`; returns (their paths, the identity's prompt, its identity id)."""
  index = check_int(index, "The held-out identity number", 0, MAX_SEED)
  if not 1 <= count <= 64:
    raise InputError(f"A held-out identity gets 1 to 64 references, not {count}.")
  cfg = world.WorldConfig(
      resolution=RESOLUTION, num_frames=1, num_references=count, reference_resolution=RESOLUTION
  )
  clip = world.render_clip(cfg, SEED, index, split="heldout")
  files = []
  for k, image in enumerate(world.references_rgba(clip)):  # the head's matte as alpha
    path = os.path.join(folder, f"heldout_{index}_ref_{k}.png")
    Image.fromarray(image).save(path, format="PNG")
    files.append(path)
  return files, clip["prompt"], int(clip["identity_ids"][0])
