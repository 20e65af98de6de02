import dataclasses

import pytest
import torch
from pydantic import ValidationError

import editsweep.methods.imagic as imagic_module
from editsweep.diffusion.ddim import ddim_sample, make_schedule
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class
from editsweep.methods.imagic import ImagicEditParams, ImagicInvertParams

TARGET = "a blue bird in the sky"
# Small stage A (lr raised so that 10 steps move e_opt) shared by the tests below.
TEXT = {"text_steps": 10, "text_lr": 1e-2}


@pytest.fixture(scope="module")
def method():
    return get_method_class("imagic")()


@pytest.fixture(scope="module")
def samples(generated_samples):
    return [dataclasses.replace(s, target_prompt=TARGET) for s in generated_samples]


@pytest.fixture(scope="module")
def state(tiny_backbone, samples, method):
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    return method.invert(tiny_backbone, samples, ImagicInvertParams(**TEXT), gens)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bit_identical(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def one(state, b: int):
    return {k: v[b : b + 1] for k, v in state.items()}


def test_state_is_the_optimised_target_embedding(tiny_backbone, samples, state):
    target = tiny_backbone.encode_text([TARGET] * 3).float()
    assert state["latents"].shape == (3, 4, 8, 8)
    assert state["embeddings"].shape == (3, 77, 32)
    assert not torch.allclose(state["embeddings"], target, atol=1e-3)  # stage A moved it
    assert (state["embeddings"] - target).abs().max() < 0.2  # ... but only a little (10 steps)


def test_finetuning_makes_eta_zero_reconstruct_the_input(tiny_backbone, samples, method, state, generators):
    """Relative latent MSE of eta 0 samples against the input, one image.

    Measured (10 DDIM steps, guidance 1): no fine-tuning 64 (the random UNet barely denoises, so
    samples keep the noise's scale); after 30 fine-tuning steps at lr 5e-3: 9.4.
    """
    x0 = tiny_backbone.encode_images(images_tensor(samples[:1], tiny_backbone.device))
    point = [ImagicEditParams(eta=0, guidance=1, steps=10)]
    errors = []
    for steps in (0, 30):
        params = ImagicInvertParams(**TEXT, finetune_steps=steps, finetune_lr=5e-3)
        out = method.edit_latents(tiny_backbone, one(state, 0), samples[:1], params, point, generators(1))
        errors.append(((out - x0).pow(2).mean() / x0.var()).item())
    assert errors[1] < 0.25 * errors[0]


def test_without_finetuning_eta_one_is_plain_sampling_from_the_sample_noise(
    tiny_backbone, samples, method, state, generators
):
    params = ImagicInvertParams(**TEXT, finetune_steps=0)
    points = [ImagicEditParams(eta=1, guidance=5, steps=10), ImagicEditParams(eta=0, guidance=5, steps=10)]
    edited, reconstructed = method.edit_latents(tiny_backbone, state, samples, params, points, generators(3)).split(3)
    noise = torch.stack([torch.randn(4, 8, 8, generator=g) for g in generators(3)])
    cond = tiny_backbone.encode_text([TARGET] * 3)
    null = tiny_backbone.encode_text([""] * 3)
    expected = ddim_sample(tiny_backbone, noise, make_schedule(tiny_backbone, 10), cond, null, 5.0)
    assert torch.allclose(edited, expected, atol=1e-5)
    assert (edited - reconstructed).abs().mean() > 1e-3  # e_opt differs from e_tgt (measured 7.5e-3)


def test_batched_points_equal_points_one_by_one(tiny_backbone, samples, method, state, generators):
    params = ImagicInvertParams(**TEXT, finetune_steps=3, finetune_lr=1e-3)
    points = [
        ImagicEditParams(eta=0.0, steps=10),
        ImagicEditParams(eta=0.7, guidance=3.0, steps=10),
        ImagicEditParams(eta=1.2, steps=6),
    ]
    together = method.edit(tiny_backbone, one(state, 1), samples[1:2], params, points, generators(1))
    for point, batched in zip(points, together):
        (alone,) = method.edit(tiny_backbone, one(state, 1), samples[1:2], params, [point], generators(1))
        assert torch.allclose(batched, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_worker_weights_are_untouched_by_a_group_even_when_it_fails(
    tiny_backbone, samples, method, state, generators, monkeypatch
):
    original, before = tiny_backbone.unet, snapshot(tiny_backbone.unet)
    params = ImagicInvertParams(**TEXT, finetune_steps=3, finetune_lr=1e-2)
    method.edit(tiny_backbone, state, samples, params, [ImagicEditParams(steps=4)], generators(3))
    assert tiny_backbone.unet is original
    assert_bit_identical(tiny_backbone.unet, before)

    seen = []

    def fail_after_finetuning(backbone, *args, **kwargs):
        seen.append(backbone.unet)
        raise RuntimeError("sampling failed")

    monkeypatch.setattr(imagic_module, "ddim_sample", fail_after_finetuning)
    with pytest.raises(RuntimeError, match="sampling failed"):
        method.edit(tiny_backbone, state, samples, params, [ImagicEditParams(steps=4)], generators(3))
    assert seen and seen[0] is not original  # the error came while the fine-tuned copy was in place
    assert tiny_backbone.unet is original
    assert_bit_identical(tiny_backbone.unet, before)
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.unet.parameters())


def test_a_finetuning_group_does_not_leak_into_the_next(tiny_backbone, samples, method, state, generators):
    params = ImagicInvertParams(**TEXT, finetune_steps=5, finetune_lr=1e-2)
    points = [ImagicEditParams(eta=0.5, steps=6)]
    alone = method.edit(tiny_backbone, one(state, 2), samples[2:], params, points, generators(1, seed=7))
    method.edit(tiny_backbone, one(state, 0), samples[:1], params, points, generators(1))
    after = method.edit(tiny_backbone, one(state, 2), samples[2:], params, points, generators(1, seed=7))
    assert torch.equal(alone[0], after[0])


def test_needs_one_generator_per_sample(tiny_backbone, samples, method, state):
    with pytest.raises(ValueError, match="one generator per sample"):
        method.edit(tiny_backbone, state, samples, ImagicInvertParams(), [ImagicEditParams()], [])


def test_parameter_ranges_name_the_field():
    for field, bad in (("eta", -0.1), ("eta", 2.5), ("guidance", -1), ("steps", 0)):
        with pytest.raises(ValidationError, match=field):
            ImagicEditParams(**{field: bad})
    for field, bad in (("text_steps", -1), ("text_lr", 0), ("finetune_steps", -1), ("finetune_lr", 0.1)):
        with pytest.raises(ValidationError, match=field):
            ImagicInvertParams(**{field: bad})
    with pytest.raises(ValidationError, match="eta"):
        ImagicInvertParams(eta=0.5)  # an edit parameter given as an inversion parameter
    assert ImagicInvertParams() == ImagicInvertParams(
        text_steps=500, text_lr=1e-3, finetune_steps=1000, finetune_lr=2e-6
    )
    assert ImagicEditParams() == ImagicEditParams(eta=0.7, guidance=7.5, steps=50)
