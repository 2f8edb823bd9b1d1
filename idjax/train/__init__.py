"""Training the video model: state, the pure step, the loop, checkpoints.

Read in this order: state.py (what is trained and how it is updated), step.py
(one pure train step), trainer.py (mesh, sharded init, loop), checkpoint.py.
"""
