"""Training primitives shared by the optimisation-based methods (Imagic and its descendants).

- `denoising_losses`: the diffusion training loss per image, with noise and timesteps drawn from
  each sample's own generator (a sample's result does not depend on its batch mates).
- `optimize_embeddings`: Adam on text embeddings (one per image) under that loss, UNet frozen.
- `optimize_target_embeddings`: Imagic's stage A for a batch of samples (the target prompt's
  embedding pulled toward each input image), shared by Imagic and the timestep-injection method.
- `finetuned_unet`: a context in which `backbone.unet` is a trainable float32 copy of the UNet;
  the worker's own weights are put back untouched when it exits, even on an error, so nothing a
  group learns leaks into the next group on the same worker.

Fine-tuning is per image (one model per input), so methods that fine-tune loop over samples and
batch the edit points of each sample instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.inputs import images_tensor, target_prompts

LossWeights = Callable[[torch.Tensor], torch.Tensor]
"""Maps a per-pixel squared error (B, C, h, w) to per-image losses (B,), e.g. a masked mean."""


def draw_noise(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """One standard normal tensor of `shape` per generator, stacked on `device`."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=g.device) for g in generators]).to(device)


def draw_timesteps(generators: Sequence[torch.Generator], num_train_timesteps: int, device: torch.device) -> torch.Tensor:
    """One uniform training timestep in [0, num_train_timesteps) per generator."""
    return torch.stack(
        [torch.randint(0, num_train_timesteps, (), generator=g, device=g.device) for g in generators]
    ).to(device)


def denoising_losses(
    backbone: Backbone,
    latents: torch.Tensor,
    cond: torch.Tensor,
    generators: Sequence[torch.Generator],
    reduce: LossWeights | None = None,
    unet: UNet2DConditionModel | None = None,
) -> torch.Tensor:
    """Per-image diffusion loss ||eps_theta(x_t, t, cond) - eps||^2 at a random t (B,).

    `reduce` turns the squared error map into per-image losses (default: the mean over C, h, w).
    v-prediction backbones are trained toward v, as they were pretrained.
    """
    unet = unet if unet is not None else backbone.unet
    scheduler = backbone.scheduler
    noise = draw_noise(generators, latents.shape[1:], latents.device)
    t = draw_timesteps(generators, scheduler.config.num_train_timesteps, latents.device)
    alphas = scheduler.alphas_cumprod.to(latents.device)[t].float().view(-1, 1, 1, 1)
    noisy = alphas.sqrt() * latents.float() + (1 - alphas).sqrt() * noise
    goal = noise
    if scheduler.config.prediction_type == "v_prediction":
        goal = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents.float()
    out = unet(noisy.to(unet.dtype), t, encoder_hidden_states=cond.to(unet.dtype)).sample.float()
    error = (out - goal).pow(2)
    return reduce(error) if reduce is not None else error.flatten(1).mean(1)


def optimize_embeddings(
    backbone: Backbone,
    latents: torch.Tensor,
    init: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int,
    learning_rate: float,
    reduce: LossWeights | None = None,
) -> torch.Tensor:
    """Text embeddings (B, L, D), one per image, optimised so the frozen UNet denoises `latents`.

    A batch minimises the sum of per-image losses, so each embedding gets the gradient it would
    get alone. Steps 0 returns `init` unchanged.
    """
    embedding = init.detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([embedding], lr=learning_rate)
    with torch.enable_grad():
        for _ in range(steps):
            loss = denoising_losses(backbone, latents, embedding, generators, reduce).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return embedding.detach()


def optimize_target_embeddings(
    backbone: Backbone,
    samples: Sequence[Sample],
    generators: Sequence[torch.Generator],
    steps: int,
    learning_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Imagic's text optimisation: (clean latents (B, C, h, w), e_opt (B, L, D) float32).

    Each e_opt starts at its sample's target-prompt embedding e_tgt and is optimised with the
    denoising loss on that sample's image, UNet frozen; few steps keep it near e_tgt, so that
    interpolating between the two is meaningful.
    """
    latents = backbone.encode_images(images_tensor(samples, backbone.device))
    target = backbone.encode_text(target_prompts(samples))
    return latents, optimize_embeddings(backbone, latents, target, generators, steps, learning_rate)


@contextmanager
def finetuned_unet(backbone: Backbone) -> Iterator[UNet2DConditionModel]:
    """Swap a trainable float32 copy of the UNet into `backbone` for the duration of the block.

    The original module object is put back on exit (also when the block raises), so the worker's
    weights are never modified; the copy and its optimiser state are dropped with the block.
    """
    original = backbone.unet
    trainable = copy.deepcopy(original).float().train().requires_grad_(True)
    backbone.unet = trainable
    try:
        yield trainable
    finally:
        backbone.unet = original
        del trainable


def finetune_unet(
    backbone: Backbone,
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    cond: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int,
    learning_rate: float,
    reduce: LossWeights | None = None,
) -> None:
    """Adam on every UNet parameter with the diffusion loss on `latents` under frozen `cond`.

    Sampling afterwards should switch the copy back to eval mode (dropout off): `unet.eval()`.
    """
    if steps == 0:
        unet.eval()
        return
    optimizer = torch.optim.Adam(unet.parameters(), lr=learning_rate)
    cond = cond.detach()
    with torch.enable_grad():
        for _ in range(steps):
            loss = denoising_losses(backbone, latents, cond, generators, reduce, unet=unet).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    unet.eval()
