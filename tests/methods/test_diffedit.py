"""`diffedit` against diffusers' DiffEdit pipeline (`generate_mask`, `invert`, `__call__`) on the tiny
weights, and its mask guidance."""

import dataclasses

import pytest
import torch

from editsweep.diffusion.ddim import make_schedule
from editsweep.diffusion.diffedit_mask import point_masks
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class

STEPS = 10


@pytest.fixture
def edit_query(generated_samples):
    """A generated cat, edited into a dog."""
    return [dataclasses.replace(generated_samples[0], target_prompt="a photo of a dog")]


def test_diffedit_equals_diffusers_pipeline_with_the_papers_blend(
    tiny_backbone, edit_query, generators, diffedit_pipeline
):
    """Mask, encoding and edit of diffusers' `generate_mask`, `invert` (empty prompt, guidance 1: the
    paper's unconditional encoding) and `__call__` on the same latents, noise and settings.

    The one pinned difference: after step i diffusers blends with the inversion's latent at the level
    step i started from (`image_latents[i]`); the paper (and `diffedit`) with the one at the level it
    reached, the input's latent after the last step. Its `callback` (called with the blended latents,
    which the next step reads) re-blends outside the mask at the paper's level; then the images agree
    to float tolerance, and without it they differ by far more.
    """
    backbone, sample = tiny_backbone, edit_query[0]
    method = get_method_class("diffedit")()
    invert = method.InvertParams(steps=STEPS, encoding_ratio=0.8)
    point = method.EditParams(mask_samples=4)
    state = method.invert(backbone, edit_query, invert, generators(1))
    (ours,) = method.edit(backbone, state, edit_query, invert, [point], generators(1))

    pipe = diffedit_pipeline(backbone)
    latents = backbone.encode_images(images_tensor(edit_query, backbone.device))
    mask = pipe.generate_mask(
        image=latents,
        source_prompt=sample.source_prompt,
        target_prompt=sample.target_prompt,
        num_maps_per_mask=point.mask_samples,
        num_inference_steps=STEPS,
        generator=generators(1)[0],
    )
    inverted = pipe.invert(
        prompt="", image=latents, num_inference_steps=STEPS, inpaint_strength=0.8, guidance_scale=1.0
    ).latents  # (1, levels, C, h, w), noisiest first
    trajectory = state["trajectory"][0]  # input latent first
    torch.testing.assert_close(trajectory[1:].flip(0), inverted[0], atol=1e-5, rtol=1e-4)

    outside = 1 - torch.from_numpy(mask).float()
    n_levels = inverted.shape[1]

    def paper_blend(i, t, x):  # after step i: the level reached, the input's own latent last
        x.copy_(x * (1 - outside) + outside * trajectory[n_levels - 1 - i])

    def call(callback=None):
        return pipe(
            prompt=sample.target_prompt,
            mask_image=mask,
            image_latents=inverted,
            inpaint_strength=0.8,
            num_inference_steps=STEPS,
            guidance_scale=point.guidance,
            output_type="pt",
            callback=callback,
        ).images

    torch.testing.assert_close(ours, call(paper_blend), atol=1e-4, rtol=1e-4)
    assert (ours - call()).abs().max() > 1e-2


def test_outside_the_mask_the_edit_keeps_the_inputs_latent(tiny_backbone, edit_query, generators, monkeypatch):
    """The final latent outside the mask is the input's own (the end of the encoding), bit for bit,
    at every point of a threshold sweep; inside it the edit moved."""
    backbone = tiny_backbone
    method = get_method_class("diffedit")()
    invert = method.InvertParams(steps=STEPS)
    points = [method.EditParams(mask_samples=4, mask_threshold=t) for t in (0.2, 0.5)]
    state = method.invert(backbone, edit_query, invert, generators(1))
    decoded = []
    decode = backbone.decode
    monkeypatch.setattr(backbone, "decode", lambda x: decoded.append(x) or decode(x))
    method.edit(backbone, state, edit_query, invert, points, generators(1))
    source = state["trajectory"][:, 0]
    masks = point_masks(backbone, source.float(), edit_query, make_schedule(backbone, STEPS), points, generators(1))
    final = decoded[0].split(1)
    assert masks[0].sum() > masks[1].sum() > 0
    for mask, x in zip(masks, final, strict=True):
        outside = (mask == 0)[:, None].expand_as(x)
        assert torch.equal(x[outside], source[outside])
        assert (x - source)[~outside].abs().max() > 1e-2
