"""The identity-preserving video diffusion model (see docs/architecture.md, "Model")."""

from idjax.models.dit import VideoDiT, build_model, count_params, dummy_inputs
from idjax.models.flops import forward_flops
from idjax.models.identity import IdentityInputs
from idjax.models.wan.identity_dit import WanIdentityDiT

__all__ = ["IdentityInputs", "VideoDiT", "WanIdentityDiT", "build_model", "count_params",
           "dummy_inputs", "forward_flops"]
