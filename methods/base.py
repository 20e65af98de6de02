"""The `Method` API that every editing method implements, and the method registry.

A method is one registered file: a `Method` subclass naming its `InvertParams` (what changes the
inversion, so shared by every edit point of a group) and its `EditParams` (what only changes the
edit), and two batch-first calls. `invert` runs once per group; `edit` receives every edit point
of the grid at once, so a method can batch them through one denoising loop.
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
from editsweep.diffusion.inputs import images_tensor

State = dict[str, torch.Tensor]
"""What `invert` hands to `edit`: plain tensors, batch-first, so it can be cached by group key."""


class Method(ABC):
    """A text-guided image editing method.

    Both calls receive the samples of a batch in order, and `generators`: one CPU torch.Generator
    per sample, seeded from (sweep seed, sample id) by the worker, so a sample's result does not
    depend on which other samples share its batch (draw noise on the CPU with it, then move it to
    the device: CUDA generators give other numbers). `invert` also receives `seeds`, each sample's
    sweep seed, for methods that look up per-seed results (`precomputed`); sampling methods use
    `generators` instead.
    """

    name: ClassVar[str]
    InvertParams: ClassVar[type[Params]] = Params
    EditParams: ClassVar[type[Params]] = Params
    # True for methods whose `edit` does costly per-group work before sampling (fine-tuning a UNet
    # copy per image): the worker then passes every edit point of a group in one call instead of
    # chunks of `edit_batch_size`, so that work runs once (it splits only after running out of memory).
    edit_points_together: ClassVar[bool] = False
    # Backbone families the method runs on (diffusion/backbone.py `family_of`): "sd" (SD 1.x/2.x,
    # `Backbone`), "sd3" and "flux" (rectified flows, diffusion/flow.py `FlowBackbone`). Checked at
    # spec validation for backbones whose family is known by name, and by `refuse_family` at load.
    families: ClassVar[tuple[str, ...]] = ("sd",)

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """Models the method loads besides the backbone: name -> weights source, ending in ':random'
        for random weights. Recorded in every row next to the backbone's and the scorers'."""
        return {}

    @classmethod
    def refuse(cls, invert_params: Params, edit_params: Params) -> str | None:
        """Why this method cannot run one (invert point, edit point) combination, or None; checked
        for every combination when the spec is validated (e.g. an editor that cannot use an inversion)."""
        return None

    @classmethod
    def refuse_backbone(cls, backbone: str) -> str | None:
        """Why this method cannot run on a backbone (a preset, Hub id or folder as the spec names it),
        or None; checked for every backbone of the spec when it is validated, before any model loads.
        What only the loaded model can tell (an unknown Hub id's UNet) is checked by `invert`."""
        return None

    @classmethod
    def refuse_family(
        cls, family: str | None, invert_params: Params | None = None, edit_params: Params | None = None
    ) -> str | None:
        """Why this method cannot run on a backbone of `family`, or None (also None when unknown);
        given an invert and an edit point, why they cannot (an inversion x editor pair's members
        declare families of their own, methods/pairs.py)."""
        if family is None or family in cls.families:
            return None
        return (
            f"{cls.name} runs on backbone families {', '.join(cls.families)}, not {family!r} "
            "(editsweep list methods shows each method's families)"
        )

    @abstractmethod
    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        """Prepare the inputs for editing (e.g. DDIM-invert them): batch-first tensors, row b for
        sample b. Runs once per group and is shared by every edit point of the grid; the worker
        passes `seeds` (one per sample) always, and None only when a caller has no sweep seeds."""

    @abstractmethod
    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Params,
        edit_params: Sequence[Params],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        """Edit every sample at every edit point: one (B, 3, H, W) tensor in [0, 1] per point.

        The output contract, checked by the worker after every call (bench/worker.py,
        `check_edit_output`): a list (or tuple) with exactly `len(edit_params)` tensors, in the
        order of `edit_params`; tensor k holds the samples in the order of `samples`, has shape
        (len(samples), 3, H, W) with H, W the input size (the backbone's resolution), is floating
        point and within [0, 1] (up to 1e-3, which is clamped). A call that breaks it fails all of
        its tasks with a message naming what came back; NaN or infinite pixels fail only their image.
        The worker may call `edit` again on a subset of the samples (each alone, inverted alone) or
        of the points to isolate a failure, so results must not depend on the batch's composition.
        """


class EncodesInput(Method):
    """A method without an inversion (SDEdit, InfEdit, latent blending): `invert` only encodes the
    inputs, to `state["latents"]`, for `edit` to noise or denoise from."""

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Params,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        return {"latents": backbone.encode_images(images_tensor(samples, backbone.device))}


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register
get_method_class = METHODS.__getitem__
