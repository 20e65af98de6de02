"""MasaCtrl's mutual self-attention (Cao et al. 2023) on an MMDiT's joint attention (SD3, FLUX):
from a start step and a start block on, the target rows' image tokens attend to the keys and values
of their source row's image tokens (and to their own text tokens), so that an edit keeps the
source's content and appearance while the target prompt reshapes it.

The rows of each model call are [sources (B); targets (points x B)], per classifier-free guidance
half on SD3 ([negative rows; text rows], diffusion/flow.py `predict_velocity`). The control is a
forward hook on the blocks' `attn.to_k` and `attn.to_v`, as diffusion/flow.py's `ValueSharing` is,
so diffusers' attention processors stay as they are: in SD3's joint blocks and FLUX's double-stream
blocks those project the image tokens alone (the text has `add_k_proj` / `add_v_proj`); in FLUX's
single-stream blocks they project [text; image], and only the image tokens are replaced. Keys are
replaced before the processors' RMS norm and rotary embedding, which act per token and position, so
the target rows see exactly the source's normed, rotated keys. The reference code
(TencentARC/MasaCtrl) does this on SD's UNet self-attention (diffusion/mutual_attention.py); its
MMDiT form here is not in the paper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from editsweep.diffusion.flow import FlowBackbone


def attention_blocks(backbone: FlowBackbone) -> list[tuple[torch.nn.Module, bool]]:
    """The transformer's attention modules in forward order, each with whether its `to_k` / `to_v`
    read [text; image] tokens (FLUX's single-stream blocks) rather than the image tokens alone."""
    transformer = backbone.transformer
    blocks = [(block.attn, False) for block in transformer.transformer_blocks]
    return blocks + [(block.attn, True) for block in getattr(transformer, "single_transformer_blocks", [])]


@dataclass
class MutualKV:
    """Which rows and tokens take their source row's keys and values, and when.

    `n_source` source rows lead each guidance half, then the targets, point-major; `start_step`
    and `start_layer` (targets,): the first editing step and block of each target row's control;
    `text_tokens`: the text length ahead of the image tokens in single-stream blocks. The solver
    reports each model call's editing step through `at` (step None: the pass's first evaluation,
    FireFlow's, which belongs to the current step).
    """

    n_source: int
    start_step: torch.Tensor
    start_layer: torch.Tensor
    text_tokens: int
    step: int = 0

    def at(self, step: int | None, call: int) -> None:
        """The editing step of the next model call (the solvers' sharing protocol)."""
        if step is not None:
            self.step = step

    def hook(self, layer: int, joint_sequence: bool):
        """A forward hook for `to_k` / `to_v` of block `layer`."""

        def run(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            active = (self.start_step <= self.step) & (self.start_layer <= layer)
            if not bool(active.any()):
                return None
            return mutual(output, self.n_source, active, self.text_tokens if joint_sequence else 0)

        return run


def mutual(output: torch.Tensor, n_source: int, active: torch.Tensor, first_token: int) -> torch.Tensor:
    """`output` (rows, tokens, dim) with the tokens from `first_token` of every `active` target row
    replaced by its source row's, in each guidance half of the rows (rows = halves x (n_source +
    targets), targets point-major over the sources)."""
    per_half = n_source + active.numel()
    halves = output.shape[0] // per_half
    out = output.clone()
    for h in range(halves):
        rows = out[h * per_half : (h + 1) * per_half]
        sources = rows[:n_source, first_token:].repeat(active.numel() // n_source, 1, 1)
        targets = rows[n_source:, first_token:]
        rows[n_source:, first_token:] = torch.where(active.view(-1, 1, 1), sources, targets)
    return out


@contextlib.contextmanager
def mutual_kv(backbone: FlowBackbone, control: MutualKV) -> Iterator[None]:
    """`control`'s hooks on every block's key and value projections while inside."""
    handles = []
    for layer, (attn, joint_sequence) in enumerate(attention_blocks(backbone)):
        for module in (attn.to_k, attn.to_v):
            handles.append(module.register_forward_hook(control.hook(layer, joint_sequence)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
