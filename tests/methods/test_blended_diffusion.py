"""`blended_diffusion`: the background kept bit for bit, plain masked DDPM at guidance 0 (diffusers'
`DDPMScheduler` stepped by hand), CLIP guidance towards the prompt on the toy world, batch independence,
the ranking of candidates, and its checks."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.images import fit_square
from editsweep.datasets.shapes import ShapesDataset
from editsweep.diffusion.backbone import load_backbone
from editsweep.diffusion.clip_guidance import load_clip_guide, spherical_distance
from editsweep.diffusion.blending import upsample_mask
from editsweep.diffusion.ddim import encoding_start, make_schedule
from editsweep.diffusion.diffedit_mask import binarise, diffedit_maps
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.masks import MaskError, dataset_mask
from editsweep.methods.base import get_method_class
from editsweep.methods.blended_diffusion import Guide, best_candidates, candidate_streams, guided_blended_sample

MASK = np.zeros((64, 64), dtype=bool)
MASK[16:40, 24:48] = True  # latent cells [2:5, 3:6] of the tiny backbone's 8x8 latent


@pytest.fixture
def masked(generated_samples):
    return [
        dataclasses.replace(s, target_prompt="a photo of a dog", meta={"mask": MASK}) for s in generated_samples[:2]
    ]


@pytest.fixture
def method():
    return get_method_class("blended_diffusion")()


def quick(method, **kw):
    return method.EditParams(**{"steps": 6, "candidates": 1, "augmentations": 2, **kw})


def test_background_is_the_inputs_latent_then_its_pixels_and_batches_equal_samples_alone(
    tiny_backbone, masked, method, generators, monkeypatch
):
    """The last step's latent outside the latent mask is the input's bit for bit; with `background:
    pixel` (default) the pixels outside the dataset mask are the input's bit for bit. Each sample of a
    batch gets what it gets alone (up to the batched UNet's rounding)."""
    backbone = tiny_backbone
    invert = method.InvertParams(clip="random")
    points = [quick(method, clip_lambda=100.0), quick(method, clip_lambda=100.0, background="none")]
    state = method.invert(backbone, masked, invert, generators(2))
    decoded = []
    decode = backbone.decode
    monkeypatch.setattr(backbone, "decode", lambda x: decoded.append(x) or decode(x))
    pasted, plain = method.edit(backbone, state, masked, invert, points, generators(2))
    monkeypatch.undo()

    latent_mask = dataset_mask(masked[0], (8, 8)).bool()
    (final,) = decoded  # both points share one loop: 2 points x 2 samples
    for rows in final.split(2):
        assert torch.equal(rows[:, :, ~latent_mask], state["latents"][:, :, ~latent_mask])
        assert (rows - state["latents"])[:, :, latent_mask].abs().max() > 1e-2
    inputs = images_tensor(masked, backbone.device)
    assert torch.equal(pasted[:, :, ~MASK], inputs[:, :, ~MASK])
    assert torch.equal(pasted[:, :, MASK], plain[:, :, MASK])
    for b, sample in enumerate(masked):
        single = method.invert(backbone, [sample], invert, generators(2)[b : b + 1])
        alone = method.edit(backbone, single, [sample], invert, points, generators(2)[b : b + 1])
        torch.testing.assert_close(alone[0][0], pasted[b], atol=1e-4, rtol=0)


def test_guidance_0_is_plain_masked_ddpm_as_diffusers_steps_it(tiny_backbone, masked, method, generators):
    """With every loss weight 0 the sampler is DDPM from the noised input with the input's noised
    latent blended outside the mask: diffusers' `DDPMScheduler` (fixed_small) stepped by hand from
    the same draws gives the same latents."""
    backbone = tiny_backbone
    point = quick(method, clip_lambda=0.0, range_lambda=0.0, steps=8)
    invert = method.InvertParams(clip="random")
    state = method.invert(backbone, masked, invert, generators(2))
    clean, pixel_mask, latent_mask = state["latents"], state["pixel_mask"], state["latent_mask"]
    inputs = images_tensor(masked, backbone.device)
    clip = load_clip_guide("random", "openai", torch.device("cpu"), "test")
    guide = Guide(backbone, clip, None, inputs * 2 - 1, pixel_mask, clip.text_embeddings(["a dog"] * 2))
    start = encoding_start(point.steps, point.strength)
    ours = guided_blended_sample(backbone, guide, clean, latent_mask, point.steps, start, 1, 1, [point], generators(2))

    scheduler = DDPMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(point.steps)
    assert torch.equal(scheduler.timesteps, make_schedule(backbone, point.steps).timesteps)
    streams = generators(2)
    own = [g for row in candidate_streams(streams, 1) for g in row]  # one candidate per sample
    draw = lambda gens: torch.stack([torch.randn((4, 8, 8), generator=g) for g in gens])  # noqa: E731
    abar = scheduler.alphas_cumprod
    t0 = scheduler.timesteps[start]
    x = abar[t0] ** 0.5 * clean + (1 - abar[t0]) ** 0.5 * draw(own)
    uncond = backbone.encode_text([""] * 2)
    inside = latent_mask[:, None]
    for i, t in enumerate(scheduler.timesteps[start:], start):
        last = i == point.steps - 1
        eps = backbone.unet(x, t, encoder_hidden_states=uncond).sample
        if last:
            x = scheduler.step(eps, t, x).prev_sample
            background = clean
        else:
            # the scheduler draws its noise with one generator per batch: split the batch
            steps = [scheduler.step(eps[b : b + 1], t, x[b : b + 1], generator=own[b]) for b in range(2)]
            x = torch.cat([s.prev_sample for s in steps])
            prev = abar[scheduler.timesteps[i + 1]]
            background = prev**0.5 * clean + (1 - prev) ** 0.5 * draw(streams)
        x = inside * x + (1 - inside) * background
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=0)


def test_clip_guidance_moves_the_masked_region_towards_the_prompt_on_the_toy_world(method):
    """Toy backbone and toy CLIP, two colour swaps of the toy world from the same noise: with CLIP
    guidance the masked region is closer in CLIP to the target prompt than without. (The latent
    gradient passes through the decoder: the paper's pixel-space lambda 1000 overshoots here, 10 works.)"""
    toy = load_backbone("toy")
    dataset = ShapesDataset({"n": 4, "edit_types": ["color"], "seed": 1})
    samples = [dataset.load(i) for i in dataset.sample_ids()[1::2]]
    for s in samples:
        s.image = fit_square(s.image, toy.resolution)
    invert = method.InvertParams(clip="toy")
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(samples))]  # noqa: E731
    state = method.invert(toy, samples, invert, gens())
    points = [method.EditParams(steps=20, candidates=1, augmentations=4, clip_lambda=lam) for lam in (0.0, 10.0)]
    plain, guided = method.edit(toy, state, samples, invert, points, gens())
    clip = load_clip_guide("toy", "openai", torch.device("cpu"), "test")
    texts = clip.text_embeddings([s.target_prompt for s in samples])
    inside = torch.stack([torch.from_numpy(s.meta["mask"]).float() for s in samples])[:, None]

    def similarity(images):
        return (clip.image_embeddings(images * inside + 0.5 * (1 - inside)) * texts).sum(-1)

    assert (similarity(guided) - similarity(plain)).mean() > 0.1, (similarity(plain), similarity(guided))


def test_candidates_do_not_depend_on_how_many_share_a_loop(tiny_backbone, masked, method, generators):
    """Each candidate draws from its own stream: 3 candidates in loops of 1 give the latents of one loop
    of 3 (up to the UNet's batch rounding), so `CANDIDATE_CHUNK` only bounds memory."""
    backbone = tiny_backbone
    invert = method.InvertParams(clip="random")
    state = method.invert(backbone, masked[:1], invert, generators(1))
    clean, pixel_mask, latent_mask = state["latents"], state["pixel_mask"], state["latent_mask"]
    inputs = images_tensor(masked[:1], backbone.device)
    clip = load_clip_guide("random", "openai", torch.device("cpu"), "test")
    guide = Guide(backbone, clip, None, inputs * 2 - 1, pixel_mask, clip.text_embeddings(["a dog"]))
    point = quick(method, clip_lambda=100.0, augmentations=3)
    run = lambda chunk: guided_blended_sample(  # noqa: E731
        backbone, guide, clean, latent_mask, 6, 3, 3, 3, [point], generators(1), chunk=chunk
    )
    together, apart = run(3), run(1)
    torch.testing.assert_close(apart, together, atol=1e-4, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-2


def test_the_candidate_closest_to_the_prompt_is_kept():
    clip = load_clip_guide("toy", "openai", torch.device("cpu"), "test")
    texts = clip.text_embeddings(["a large red circle in the center on a white background"])
    images = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full = torch.ones(1, 32, 32)
    best = best_candidates(clip, images, full, texts)
    distances = spherical_distance(clip.image_embeddings(images[0]), texts)
    assert torch.equal(best[0], images[0, distances.argmin()])


def test_params_mask_and_backbone_checks(tiny_backbone, generated_samples, method, generators):
    p = method.EditParams()
    assert (p.steps, p.strength, p.clip_lambda, p.range_lambda) == (100, 0.75, 1000.0, 50.0)
    assert (p.l2_lambda, p.lpips_lambda, p.augmentations, p.candidates) == (10000.0, 1000.0, 8, 32)
    assert p.background == "pixel"
    assert method.InvertParams().clip == "ViT-B-16" and not method.InvertParams().background_loss
    with pytest.raises(MaskError, match="meta\\['mask'\\]"):
        method.invert(tiny_backbone, generated_samples[:1], method.InvertParams(clip="random"), generators(1))
    with_loss = method.InvertParams(clip="random", background_loss=True, lpips_weights="random")
    sources = method.model_sources(with_loss)
    assert sources == {"guidance_clip": "tiny-clip:random", "background_lpips": "vgg:random"}
    spec = {
        "name": "x",
        "backbone": {"name": "tiny-ip2p"},
        "datasets": [{"name": "synthetic"}],
        "methods": [{"name": "blended_diffusion", "invert": {"clip": "random"}}],
        "metrics": {"psnr": {}},
    }
    with pytest.raises(SpecError, match="4 input channels"):
        load_spec(spec)


def test_background_loss_and_full_mask_run(tiny_backbone, masked, method, generators):
    """The background-preservation loss (MSE + LPIPS on random VGG) pulls the estimate's background
    towards the input's, and `mask: full` edits everything."""
    invert = method.InvertParams(clip="random", background_loss=True, lpips_weights="random", mask="full")
    state = method.invert(tiny_backbone, masked[:1], invert, generators(1))
    (out,) = method.edit(tiny_backbone, state, masked[:1], invert, [quick(method, steps=2)], generators(1))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert (out - images_tensor(masked[:1], tiny_backbone.device)).abs().max() > 1e-2


def test_diffedit_mask_is_diffedits_from_the_prompts(tiny_backbone, generated_samples, method, generators):
    """`mask: diffedit` (datasets without masks): DiffEdit's map of source vs target prompt on a
    `mask_steps` schedule, binarised, its cells upsampled to the pixel mask; the edit keeps the
    input's latent outside it."""
    backbone = tiny_backbone
    samples = [dataclasses.replace(s, target_prompt="a photo of a dog") for s in generated_samples[1:3]]
    invert = method.InvertParams(clip="random", mask="diffedit", mask_samples=2, mask_steps=10)
    state = method.invert(backbone, samples, invert, generators(2))
    maps = diffedit_maps(
        backbone,
        state["latents"],
        [s.source_prompt for s in samples],
        ["a photo of a dog"] * 2,
        make_schedule(backbone, 10),
        invert,
        generators(2),
    )
    expected = binarise(maps, invert.mask_clamp, invert.mask_threshold)
    assert torch.equal(state["latent_mask"], expected) and 0 < expected.mean() < 1
    assert torch.equal(state["pixel_mask"], upsample_mask(expected, (64, 64)))
    (out,) = method.edit(backbone, state, samples, invert, [quick(method, steps=2)], generators(2))
    outside = state["pixel_mask"][:, None].expand_as(out) == 0
    assert torch.equal(out[outside], images_tensor(samples, backbone.device)[outside])
