"""The synthetic identity world and its input pipeline.

world.py      identities, nuisance and `render_clip` (pure NumPy)
render.py     the anti-aliased rasteriser behind it
prompts.py    prompts from quantised attributes, VOCABULARY and `tokenize`
tfds_builder.py  the `synthetic_identity_video` TFDS builder (ArrayRecord)
pipeline.py   sources (`make_source`) and deterministic global batches
text_embeddings.py  precomputed text-encoder (UMT5) embeddings, looked up by prompt

Submodules are imported explicitly (`from idjax.data import world`) so that
rendering alone never pulls in JAX or TFDS.
"""
