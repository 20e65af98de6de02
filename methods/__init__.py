"""Editing methods, each one registered module (importing this package registers them)."""

from editsweep.methods import (  # noqa: F401  (registration side effect)
    blended_diffusion,
    blended_latent,
    controlnet,
    copy_input,
    cycle_diffusion,
    cyclenet,
    ddim_edit,
    ddim_p2p,
    diffedit,
    diffusion_clip,
    direct_inversion,
    edict,
    flow_inversion,
    flowedit,
    imagic,
    inpaint,
    infedit,
    instruct_pix2pix,
    invert_edit,
    layer_diffusion,
    ledits_pp,
    negative_prompt,
    null_text,
    p_plus,
    precomputed,
    prompt_tuning,
    sdedit,
    style_diffusion,
    t2i_adapter,
    text2live,
    timestep_injection,
    vae_roundtrip,
)
from editsweep.methods.base import METHODS, Method, Params, State, get_method_class, register_method

__all__ = ["METHODS", "Method", "Params", "State", "get_method_class", "register_method"]
