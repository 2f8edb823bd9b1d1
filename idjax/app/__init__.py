"""A web page for making identity-consistent clips: `python -m idjax.app --workdir DIR`.

One job per module, and only `ui` and `__main__` import Gradio (an optional
extra: `pip install -e '.[app]'`), so everything else is testable without it
or a browser:

  validate   the page's inputs -> checked values, or one sentence (InputError)
  layouts    preset box trajectories (centre, left-right, walking across)
  heldout    reference portraits of a held-out identity of the synthetic world
  folders    one temporary folder per request, old ones removed
  request    a checked request -> sample.py's arguments -> the same files
  facesim    the per-frame FaceSim plot of each character
  ui         the Gradio page and its queue
"""
