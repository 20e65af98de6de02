"""`imagic`: Imagic (Kawar et al., CVPR 2023, arXiv 2210.09276) on a latent diffusion backbone.

A. Text optimisation (`invert`): the target prompt's embedding e_tgt is optimised toward the input
   image with the diffusion loss, UNet frozen, giving e_opt. This is the group's state.
B. Model fine-tuning (`edit`, per sample): a float32 copy of the UNet is fine-tuned with the same
   loss on the frozen e_opt. One model per image, so samples are fine-tuned one after another;
   the copy is dropped when the sample is done (`finetuned_unet`), and the worker's UNet is
   never modified. `finetune_steps: 0` skips this stage (text optimisation only).
C. Sampling: guided DDIM from Gaussian noise with e = eta * e_tgt + (1 - eta) * e_opt. Every edit
   point of a sample (eta, guidance, steps) runs in one batched loop on that sample's model, from
   one noise draw (common random numbers across points).

Stage B runs inside `edit` (a fine-tuned UNet is not a state of plain tensors), so the method sets
`edit_points_together`: the worker passes every edit point of a group in one call and each image
is fine-tuned once (a call split after running out of memory fine-tunes again, with identical
results: generators are fresh per call).

Choices where the sources read here leave room (the paper's method section and diffusers'
community `imagic_stable_diffusion` pipeline, an SD re-implementation):
- the sampling noise is drawn from the sample's generator before fine-tuning draws its noise and
  timesteps from it, so the noise is the same whatever `finetune_steps` is;
- the clean latent is the VAE posterior mean (the pipeline samples the posterior once);
- sampling is deterministic DDIM (eta_DDIM 0), the sampler every editsweep method shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.diffusion.finetuning import draw_noise, finetune_unet, finetuned_unet, optimize_target_embeddings
from editsweep.diffusion.inputs import target_prompts
from editsweep.methods.base import Method, Params, State, register_method


class ImagicInvertParams(Params):
    """Stages A and B: shared by every edit point of a group.

    Defaults are those of the Stable Diffusion re-implementation (diffusers' community
    `imagic_stable_diffusion` pipeline: Adam, 500 embedding steps at lr 1e-3, then 1000 UNet
    fine-tuning steps at lr 2e-6). The paper's own numbers are for Imagen; its full text (and so
    any SD-specific setting it gives) was not reachable from this machine.
    """

    text_steps: int = Field(500, ge=0, le=100_000, description="stage A: Adam steps on the target embedding")
    text_lr: float = Field(1e-3, gt=0, le=1, description="stage A: learning rate of the embedding")
    finetune_steps: int = Field(
        1000, ge=0, le=100_000, description="stage B: Adam steps on the UNet copy (0: text optimisation only)"
    )
    finetune_lr: float = Field(2e-6, gt=0, le=1e-2, description="stage B: learning rate of the UNet copy")


class ImagicEditParams(Params):
    """Stage C: what only changes the sampling (an eta sweep shares stages A and B).

    eta 0.7 sits in the middle of the range the paper shows editing while keeping the input
    (about 0.6-0.8); diffusers' community pipeline defaults to 1.2. DDIM 50 steps, CFG 7.5 as there.
    """

    eta: float = Field(
        0.7,
        ge=0,
        le=2,
        description="e = eta * e_tgt + (1 - eta) * e_opt; 0 reconstructs, 1 is the target prompt, > 1 extrapolates",
    )
    guidance: float = Field(7.5, ge=0, le=50, description="CFG scale (null-prompt unconditional)")
    steps: int = Field(50, ge=1, le=1000, description="DDIM sampling steps")


@register_method
class Imagic(Method):
    """Text optimisation, per-image UNet fine-tuning, and sampling from an interpolated embedding."""

    name = "imagic"
    edit_points_together = True
    InvertParams = ImagicInvertParams
    EditParams = ImagicEditParams

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: ImagicInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        latents, optimized = optimize_target_embeddings(
            backbone, samples, generators, params.text_steps, params.text_lr
        )
        return {"latents": latents, "embeddings": optimized}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: ImagicInvertParams,
        edit_params: Sequence[ImagicEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        latents = self.edit_latents(backbone, state, samples, invert_params, edit_params, generators)
        return list(backbone.decode(latents).split(len(samples)))

    def edit_latents(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: ImagicInvertParams,
        edit_params: Sequence[ImagicEditParams],
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor:
        """Edited clean latents (points x samples, C, h, w), point-major like the images."""
        if len(generators) != len(samples):
            raise ValueError(f"imagic needs one generator per sample: got {len(generators)} for {len(samples)}")
        target = backbone.encode_text(target_prompts(samples)).float()
        null = backbone.encode_text([""]).float()
        per_sample = []
        for b, generator in enumerate(generators):
            clean, optimized = state["latents"][b : b + 1], state["embeddings"][b : b + 1].float()
            noise = draw_noise([generator], clean.shape[1:], clean.device)
            if invert_params.finetune_steps == 0:
                per_sample.append(self._sample(backbone, noise, target[b : b + 1], optimized, null, edit_params))
                continue
            with finetuned_unet(backbone) as unet:
                finetune_unet(
                    backbone,
                    unet,
                    clean,
                    optimized,
                    [generator],
                    invert_params.finetune_steps,
                    invert_params.finetune_lr,
                )
                per_sample.append(self._sample(backbone, noise, target[b : b + 1], optimized, null, edit_params))
        return torch.stack(per_sample, dim=1).flatten(0, 1)

    @staticmethod
    def _sample(
        backbone: Backbone,
        noise: torch.Tensor,
        target: torch.Tensor,
        optimized: torch.Tensor,
        null: torch.Tensor,
        edit_params: Sequence[ImagicEditParams],
    ) -> torch.Tensor:
        """One sample's edits (points, C, h, w): points sharing a step count go through one loop."""
        results: list[torch.Tensor | None] = [None] * len(edit_params)
        by_steps: dict[int, list[int]] = {}
        for k, p in enumerate(edit_params):
            by_steps.setdefault(p.steps, []).append(k)
        for steps, indices in by_steps.items():
            eta = torch.tensor([edit_params[k].eta for k in indices], device=noise.device).view(-1, 1, 1)
            guidance = torch.tensor([edit_params[k].guidance for k in indices], device=noise.device)
            cond = eta * target + (1 - eta) * optimized
            latents = ddim_sample(
                backbone,
                noise.repeat(len(indices), 1, 1, 1),
                make_schedule(backbone, steps),
                cond,
                null.expand(len(indices), -1, -1),
                guidance,
            )
            for k, latent in zip(indices, latents):
                results[k] = latent
        return torch.stack(results)
