"""Sampling: ODE samplers, the batched/sharded Generator, samples written during training."""

from idjax.sampling.samplers import sample, step, timesteps

