"""Wan 2.1 in Flax: the video VAE and the DiT, read from diffusers-format weight folders."""
