"""The `Inversion` API: the first half of an (inversion, editor) pair, and its registry.

An inversion is one registered file in this folder: its `Params` (every one changes the
inversion, so it runs once per group and is shared by every editor and edit point of the group),
`invert` (batch-first, cached by the worker as a method's state), and `inverted`, which turns that
state into what every editor reads (diffusion/inverted.py). Pairs are composed by
methods/pairs.py; editors live in methods/editors/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from editsweep.core.params import Params
from editsweep.core.registry import Registry
from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inverted import Inverted

State = dict[str, torch.Tensor]


class Inversion(ABC):
    """An inversion of the input images that attention editors can start from."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    # Backbone families it runs on (methods/base.py `Method.families`): "sd" for the DDIM-family
    # inversions, "sd3" and "flux" for the flow inversions (methods/inversions/flow.py).
    families: ClassVar[tuple[str, ...]] = ("sd",)
    # True when `inverted(...).guidance` is set: the result only holds at that scale (Null-text's
    # tuned embeddings), so an edit point may not ask for another one.
    fixes_guidance: ClassVar[bool] = False
    # True when the result's step calls the editor's denoiser itself (`Inverted.sampler`: EDICT's
    # two calls per step on a state of its own), so an editor that moves the latents between its
    # own UNet calls (pix2pix-zero's cross-attention guidance) cannot run on it.
    calls_denoiser: ClassVar[bool] = False

    @abstractmethod
    def invert(
        self, backbone: Backbone, samples: Sequence[Sample], params: Params, generators: Sequence[torch.Generator]
    ) -> State:
        """Invert the samples: batch-first tensors, row b for sample b."""

    @abstractmethod
    def inverted(self, backbone: Backbone, state: State, samples: Sequence[Sample], params: Params) -> Inverted:
        """The inversion's result as editors read it."""


INVERSIONS: Registry[type[Inversion]] = Registry("inversion")
register_inversion = INVERSIONS.register
