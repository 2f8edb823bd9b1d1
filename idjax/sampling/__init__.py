"""Sampling: ODE samplers, layouts, the batched/sharded Generator, video files."""

from idjax.sampling.samplers import sample, step, timesteps

