"""Prompt + reference image(s) -> an identity-preserving clip.

  python sample.py --workdir runs/demo/video --reference a.png b.png \
      --prompt "a person with pale skin and short black hair" --out out/clip.mp4

Several characters: `--character NAME=a.png,b.png` (repeatable; the
`--reference` images form the character named "main") and optionally one
`--box NAME=y0,x0,y1,x1[:y0,x0,y1,x1]` per character (a fixed box, or a start
and an end box interpolated over the clip; fractions of the frame). Without
boxes the model places the faces itself.

Writes OUT.mp4, OUT.gif, OUT.png (references left of every frame) and
OUT.json (arguments, seed, timings and, when the config's evaluation encoder
exists, FaceSim metrics). Existing outputs are kept unless --overwrite.
Everything that can be checked is checked before sampling: the output folder,
the references (at most MAX_REFERENCE_PIXELS each), the seed, the saved
config, and the memory the requested frames need.
"""

# The code lives in idjax.sampling.cli, which the web app (python -m idjax.app)
# shares, so that the same inputs and seed give the same clip in both.
from idjax.sampling.cli import (MAIN, MAX_REFERENCE_PIXELS, load_image, main, output_paths,
                                parse_args, parse_boxes, parse_characters)

__all__ = ["MAIN", "MAX_REFERENCE_PIXELS", "load_image", "main", "output_paths", "parse_args",
           "parse_boxes", "parse_characters"]

if __name__ == "__main__":
  main()
