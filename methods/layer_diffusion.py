"""`layer_diffusion`: LayerDiffusion (Li, Huang, Ding, Li 2023, arXiv 2305.18676).

An Imagic-style optimise / fine-tune / sample method that treats the object and the background as
two layers, each with its own text embedding and its own loss region:

1. Mask (`diffusion/masks.py`): the object's region M, from the dataset or a mask provider.
2. Layered controlled optimisation (`invert`, batched over the group's images, UNet frozen):
   the object-property embedding e_o and the background embedding e_b start from the text
   embeddings of the sample's `meta["object_prompt"]` / `meta["background_prompt"]` (the target
   prompt when absent) and minimise
       lambda_f * mean_M ||eps - eps(x_t, t, e_o)||^2 + lambda_b * mean_B ||eps - eps(b_t, t, e_b)||^2,
   where x is the input latent, b the reference background's latent (`meta["background"]`, a PIL
   image) or else the input, and B the whole image when a reference is given, else 1 - M.
3. Layered diffusion training (`edit`, per image on a discarded float32 copy of the UNet,
   `finetuned_unet`): the same two-term loss on the UNet's weights with e_o, e_b frozen.
4. Sampling (`edit`, batched over edit points): DDIM from Gaussian noise with classifier-free
   guidance, conditioned on the layered embedding e = alpha * e_o + (1 - alpha) * e_b, with the
   iterative guidance strategy: every `target_every`-th step (step index divisible by it) is
   guided by the target prompt's embedding instead, which pulls the sample toward the text while
   the other steps hold it to the learned object and background.

Paper defaults: 500 optimisation steps at lr 1e-3, 250 fine-tuning steps at lr 2e-6, loss weights
lambda_f = 2, lambda_b = 1, interpolation weight alpha = 0.7. Where the method text was not
available to us, these are our readings: the form of alpha (the weight of e_o against e_b in the
sampled embedding), the iterative guidance schedule (alternating every `target_every` steps), the
masked means (each loss is the mean squared error over its region's latent cells and channels),
and drawing separate noise for the two terms. A term whose region is empty or whose weight is 0 is
left out entirely (no UNet call, no noise drawn), so an all-background mask gives exactly the
result of lambda_f = 0. Fine-tuning happens in `edit` because a fine-tuned UNet is not a state of
plain tensors; `edit_points_together` makes the worker pass every edit point of a group in one
call, so each image is fine-tuned once (a split after running out of memory repeats it, with
identical results: each edit call gets fresh generators).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from editsweep.datasets.base import Sample
from editsweep.datasets.images import fit_square
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import Schedule, ddim_move, make_schedule, predict_noise
from editsweep.diffusion.finetuning import finetune_unet, finetuned_unet, optimize_embeddings
from editsweep.diffusion.inputs import images_tensor, target_prompts
from editsweep.diffusion.masks import CLIPSEG_MODEL, MaskProvider, object_masks
from editsweep.methods.base import Method, Params, State, register_method


class LayerInvertParams(Params):
    """What is shared by every edit point: the mask, the optimisation, the fine-tuning, the schedule."""

    text_steps: int = Field(500, ge=0, le=10000, description="Adam steps of the layered embedding optimisation")
    text_learning_rate: float = Field(1e-3, gt=0, le=1, description="learning rate of the embedding optimisation")
    finetune_steps: int = Field(250, ge=0, le=10000, description="Adam steps of layered fine-tuning (0: none)")
    finetune_learning_rate: float = Field(2e-6, gt=0, le=1, description="learning rate of the UNet fine-tuning")
    foreground_weight: float = Field(2.0, ge=0, le=100, description="lambda_f: weight of the object-region loss")
    background_weight: float = Field(1.0, ge=0, le=100, description="lambda_b: weight of the background loss")
    sample_steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the final sampling")
    mask_provider: MaskProvider = Field(
        "attention", description="mask for samples without meta['mask']: cross-attention map or CLIPSeg"
    )
    mask_threshold: float = Field(0.5, ge=0, le=1, description="binarisation threshold of the provider's map")
    mask_steps: int = Field(20, ge=1, le=1000, description="DDIM inversion steps of the attention-mask pass")
    segmentation_model: str = Field(CLIPSEG_MODEL, description="Hub id or local folder of the CLIPSeg model")
    object_word: str | None = Field(
        None, description="the object's word when samples carry no meta['object_word'] (default: inferred)"
    )


class LayerEditParams(Params):
    """What only changes the sampling."""

    alpha: float = Field(0.7, ge=0, le=1, description="object-property interpolation weight: alpha*e_o+(1-alpha)*e_b")
    guidance: float = Field(7.5, ge=0, le=50, description="classifier-free guidance scale while sampling")
    target_every: int = Field(
        2, ge=0, le=1000, description="iterative guidance: every n-th step uses the target prompt (0: never)"
    )


@dataclass(frozen=True)
class LayeredLoss:
    """The rows of the two-term loss for a set of images: which image and which term each row is.

    Row r denoises `latents[r]` under `embedding_rows[r]`; `weights[r]` is lambda * region / |region|,
    so that summing (weights * squared error) over cells and channels gives lambda times the masked
    mean. Terms with an empty region or weight 0 have no row.
    """

    images: list[int]  # the image of each row
    is_object: list[bool]  # True: object term (e_o, input latent), False: background term
    latents: torch.Tensor  # (R, C, h, w)
    weights: torch.Tensor  # (R, h, w)

    def reduce(self, error: torch.Tensor) -> torch.Tensor:
        """Per-row weighted masked means of a squared error map (R, C, h, w) -> (R,)."""
        return (error * self.weights[:, None] / error.shape[1]).flatten(1).sum(1)

    def embeddings(self, objects: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
        """Each row's embedding, taken from per-image object and background embeddings (B, L, D)."""
        return torch.stack([(objects if o else backgrounds)[i] for i, o in zip(self.images, self.is_object)])


def layered_loss(state: State, images: Sequence[int], params: LayerInvertParams) -> LayeredLoss:
    """The loss rows of `images` (indices into the state's batch): object rows first, then background."""
    rows: list[tuple[int, bool, torch.Tensor, torch.Tensor]] = []
    for is_object, weight, mask_key, latent_key in (
        (True, params.foreground_weight, "foreground_mask", "latents"),
        (False, params.background_weight, "background_mask", "background"),
    ):
        for i in images:
            region = state[mask_key][i]
            if weight > 0 and bool(region.any()):
                rows.append((i, is_object, state[latent_key][i], weight * region / region.sum()))
    if not rows:
        return LayeredLoss([], [], torch.empty(0), torch.empty(0))
    index, kinds, latents, weights = zip(*rows, strict=True)
    return LayeredLoss(list(index), list(kinds), torch.stack(latents).float(), torch.stack(weights).float())


def reference_backgrounds(
    backbone: Backbone, samples: Sequence[Sample], latents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of each sample's reference background (`meta["background"]`, a PIL image, fitted like
    the input), or of the input itself; and a (B,) bool of which samples had one."""
    background = latents.clone()
    given = torch.zeros(len(samples), dtype=torch.bool, device=latents.device)
    for i, sample in enumerate(samples):
        reference = sample.meta.get("background")
        if reference is None:
            continue
        if not hasattr(reference, "convert"):
            raise ValueError(
                f"sample {sample.id!r}: meta['background'] must be a PIL image (the reference background), "
                f"got {type(reference).__name__}"
            )
        image = fit_square(reference.convert("RGB"), backbone.resolution)
        pixels = images_tensor([Sample(id=sample.id, image=image, target_prompt="")], backbone.device)
        background[i] = backbone.encode_images(pixels)[0].float()
        given[i] = True
    return background, given


@torch.no_grad()
def layered_sample(
    backbone: Backbone,
    noise: torch.Tensor,
    layered: torch.Tensor,
    target: torch.Tensor,
    guidance: torch.Tensor,
    target_every: torch.Tensor,
    schedule: Schedule,
) -> torch.Tensor:
    """DDIM (eta 0) from noise with CFG; row r is conditioned on `target[r]` at the steps i with
    i % target_every[r] == 0 (never when it is 0) and on `layered[r]` at the others."""
    uncond = backbone.encode_text([""]).float().expand(len(noise), -1, -1)
    x = noise.float()
    for i in range(schedule.steps):
        use_target = (target_every > 0) & (i % target_every.clamp_min(1) == 0)
        cond = torch.where(use_target.view(-1, 1, 1), target, layered)
        a_from, a_to = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = predict_noise(backbone, x, schedule.timesteps[i], cond, uncond, guidance, alpha=a_from)
        x = ddim_move(x, eps, a_from, a_to)
    return x


@register_method
class LayerDiffusion(Method):
    """LayerDiffusion: layered embedding optimisation and fine-tuning under an object mask."""

    name = "layer_diffusion"
    edit_points_together = True
    InvertParams = LayerInvertParams
    EditParams = LayerEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The segmentation model, when CLIPSeg provides the masks."""
        return {"segmentation": invert_params.segmentation_model} if invert_params.mask_provider == "clipseg" else {}

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: LayerInvertParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        """Mask, reference background and the layered-optimised e_o, e_b (batched over the images)."""
        latents = backbone.encode_images(images_tensor(samples, backbone.device)).float()
        foreground = object_masks(
            backbone,
            samples,
            latents,
            params.mask_provider,
            params.mask_threshold,
            params.object_word,
            params.mask_steps,
            params.segmentation_model,
        )
        background, given = reference_backgrounds(backbone, samples, latents)
        state: State = {
            "latents": latents,
            "background": background,
            "foreground_mask": foreground,
            "background_mask": torch.where(given.view(-1, 1, 1), torch.ones_like(foreground), 1 - foreground),
            "object_embedding": backbone.encode_text(
                [s.meta.get("object_prompt", s.target_prompt) for s in samples]
            ).float(),
            "background_embedding": backbone.encode_text(
                [s.meta.get("background_prompt", s.target_prompt) for s in samples]
            ).float(),
        }
        loss = layered_loss(state, range(len(samples)), params)
        if loss.images:
            tuned = optimize_embeddings(
                backbone,
                loss.latents,
                loss.embeddings(state["object_embedding"], state["background_embedding"]),
                [generators[i] for i in loss.images],
                params.text_steps,
                params.text_learning_rate,
                loss.reduce,
            )
            for row, (i, is_object) in enumerate(zip(loss.images, loss.is_object, strict=True)):
                state["object_embedding" if is_object else "background_embedding"][i] = tuned[row]
        return state

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: LayerInvertParams,
        edit_params: Sequence[LayerEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        """Per image: fine-tune a discarded UNet copy, then sample every edit point in one batch.

        Without fine-tuning, every image and point goes through one batch on the worker's UNet.
        """
        batch, n_points = len(samples), len(edit_params)
        shape = state["latents"].shape[1:]
        # Drawn before fine-tuning, so the start noise does not depend on the fine-tuning settings.
        noise = torch.stack([torch.randn(tuple(shape), generator=g, device=g.device) for g in generators])
        noise = noise.to(backbone.device)
        target = backbone.encode_text(target_prompts(samples)).float()
        schedule = make_schedule(backbone, invert_params.sample_steps)
        alpha = torch.tensor([p.alpha for p in edit_params], device=backbone.device).view(-1, 1, 1, 1)
        layered = alpha * state["object_embedding"] + (1 - alpha) * state["background_embedding"]  # (P, B, L, D)

        def sample_rows(images: list[int]) -> torch.Tensor:
            """Clean latents (P * len(images), C, h, w), point-major."""
            rows = len(images)
            return layered_sample(
                backbone,
                noise[images].repeat(n_points, 1, 1, 1),
                layered[:, images].flatten(0, 1),
                target[images].repeat(n_points, 1, 1),
                torch.tensor([p.guidance for p in edit_params], device=backbone.device).repeat_interleave(rows),
                torch.tensor([p.target_every for p in edit_params], device=backbone.device).repeat_interleave(rows),
                schedule,
            )

        if invert_params.finetune_steps == 0:
            latents = sample_rows(list(range(batch))).view(n_points, batch, *shape)
        else:
            per_image = []
            for i in range(batch):
                loss = layered_loss(state, [i], invert_params)
                with finetuned_unet(backbone) as unet:
                    if loss.images:
                        cond = loss.embeddings(state["object_embedding"], state["background_embedding"])
                        finetune_unet(
                            backbone,
                            unet,
                            loss.latents,
                            cond,
                            [generators[i]] * len(loss.images),
                            invert_params.finetune_steps,
                            invert_params.finetune_learning_rate,
                            loss.reduce,
                        )
                    unet.eval()
                    per_image.append(sample_rows([i]))
            latents = torch.stack(per_image, dim=1)
        images = backbone.decode(latents.flatten(0, 1))
        return list(images.split(batch))
