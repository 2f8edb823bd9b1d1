"""Training: state, the pure step, the loop, checkpoints.

Read in this order: state.py (what is trained and how it is updated), step.py
(the video model's pure train step), trainer.py (mesh, sharded init), loop.py
(the loop both trainers run: resume, metrics, checkpoints, hooks),
checkpoint.py. The face encoder's trainer (idjax/face/train.py) uses state.py
and loop.py the same way.
"""
