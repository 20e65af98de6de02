"""DiffusionCLIP (methods/diffusion_clip.py): inversion to t0, the per-direction fine-tuned copy
(shared, cached, never the worker's UNet), and its loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import ValidationError

import editsweep.methods.diffusion_clip as dc
from editsweep.diffusion.clip_guidance import load_clip_guide
from editsweep.diffusion.inputs import images_tensor
from editsweep.methods.base import get_method_class
from editsweep.methods.diffusion_clip import (
    DiffusionClipEditParams,
    DiffusionClipParams,
    finetune_direction,
    return_schedule,
)

SMALL = {"clip": "random", "inversion_steps": 10, "train_steps": 3, "iterations": 2, "learning_rate": 1e-3}
EDIT = [DiffusionClipEditParams(steps=10), DiffusionClipEditParams(steps=5)]


@pytest.fixture
def samples(generated_samples):
    """Images 0 and 1 share one direction (cat -> dog), image 2 has another."""
    directions = [("a cat", "a dog"), ("a cat", "a dog"), ("a cat", "a lion")]
    return [
        dataclasses.replace(s, source_prompt=src, target_prompt=tgt)
        for s, (src, tgt) in zip(generated_samples, directions)
    ]


@pytest.fixture
def count_finetunes(monkeypatch):
    calls: list[int] = []
    real = dc.finetune_direction

    def counted(*args, **kwargs):
        calls.append(args[2].shape[0])  # images the copy trains on
        return real(*args, **kwargs)

    monkeypatch.setattr(dc, "finetune_direction", counted)
    return calls


def rows(state: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in state.items()}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_workers_unet_is_untouched_bit_for_bit(tiny_backbone, samples, generators):
    unet = tiny_backbone.unet
    before = snapshot(unet)
    flags = [p.requires_grad for p in unet.parameters()]
    method = get_method_class("diffusion_clip")()
    params = DiffusionClipParams(**SMALL)
    state = method.invert(tiny_backbone, samples, params, generators(3))
    method.edit(tiny_backbone, state, samples, params, EDIT, generators(3))
    assert tiny_backbone.unet is unet and not unet.training
    assert [p.requires_grad for p in unet.parameters()] == flags
    after = unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in unet.parameters())


def test_one_direction_is_fine_tuned_once_and_shared(tiny_backbone, samples, generators, count_finetunes):
    method = get_method_class("diffusion_clip")()
    params = DiffusionClipParams(**SMALL)
    state = method.invert(tiny_backbone, samples, params, generators(3))
    images = method.edit(tiny_backbone, state, samples, params, EDIT, generators(3))
    assert count_finetunes == [2, 1]  # cat -> dog on images 0 and 1 together, cat -> lion on image 2
    again = method.edit(tiny_backbone, rows(state, 1, 2), samples[1:2], params, EDIT[:1], generators(1))
    assert count_finetunes == [2, 1]  # a later group of a known direction reuses its copy
    assert torch.allclose(again[0][0], images[0][1], atol=1e-4)  # up to batch-size-dependent CPU kernels
    other = DiffusionClipParams(**{**SMALL, "learning_rate": 2e-3})
    method.edit(tiny_backbone, rows(state, 0, 1), samples[:1], other, EDIT[:1], generators(1))
    assert count_finetunes == [2, 1, 1]  # other fine-tuning params: another model
    assert len(method._models) == dc.CACHE_SIZE  # the least recently used copy was dropped


def test_fine_tuning_lowers_the_loss_on_tiny(tiny_backbone, samples, generators):
    method = get_method_class("diffusion_clip")()
    params = DiffusionClipParams(**{**SMALL, "iterations": 4})
    state = method.invert(tiny_backbone, samples[:2], params, generators(2))
    guide = load_clip_guide("random", "openai", tiny_backbone.device, "test")
    cond = tiny_backbone.encode_text(["a cat", "a cat"])
    losses: list[float] = []
    finetune_direction(tiny_backbone, guide, state["noised"], state["images"], cond, ("a cat", "a dog"), params, losses)
    assert len(losses) == 8
    assert sum(losses[-2:]) < sum(losses[:2])


def test_without_fine_tuning_generation_reconstructs_the_input(tiny_backbone, samples, generators):
    """Inversion to t0 then generation with the worker's UNet: the VAE round trip, up to DDIM's
    inversion error (measured 1.6e-3 mean absolute pixel error at 10 steps on tiny)."""
    method = get_method_class("diffusion_clip")()
    params = DiffusionClipParams(**{**SMALL, "iterations": 0})
    state = method.invert(tiny_backbone, samples, params, generators(3))
    (edited,) = method.edit(tiny_backbone, state, samples, params, [DiffusionClipEditParams(steps=10)], generators(3))
    roundtrip = tiny_backbone.decode(tiny_backbone.encode_images(images_tensor(samples, tiny_backbone.device)))
    assert (edited - roundtrip).abs().mean() < 1e-2
    assert not method._models


def test_the_return_schedule_spreads_steps_over_zero_to_t0(tiny_backbone):
    schedule = return_schedule(tiny_backbone, 500, 40)
    assert schedule.steps == 40 and schedule.timesteps[0] == 500 and schedule.timesteps[-1] == 0
    assert schedule.alphas[-1] == 1.0
    assert torch.equal(schedule.alphas[:-1], tiny_backbone.scheduler.alphas_cumprod.double()[schedule.timesteps])


def test_params_defaults_and_checks():
    p = DiffusionClipParams()
    assert (p.t0, p.inversion_steps, p.train_steps, p.learning_rate, p.clip_loss_weight, p.l1_loss_weight) == (
        500, 40, 6, 8e-6, 3.0, 1.0
    )
    assert (p.clip, DiffusionClipEditParams().steps) == ("ViT-B-16", 40)
    with pytest.raises(ValidationError):
        DiffusionClipParams(t0=1000)
    with pytest.raises(ValidationError):
        DiffusionClipParams(train_steps=1)
    cls = get_method_class("diffusion_clip")
    assert cls.model_sources(p) == {"clip": "ViT-B-16:openai"}
    assert cls.model_sources(DiffusionClipParams(clip="toy")) == {"clip": "toy:clip"}
    with pytest.raises(ValidationError, match="unknown clip"):
        DiffusionClipParams(clip="ViT-Q-99")
    assert "4 input channels" in cls.refuse_backbone("tiny-ip2p")
    assert cls.refuse_backbone("tiny") is None


def test_listed_with_its_parameters(capsys):
    from editsweep.bench.cli import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "diffusion_clip:" in out and "t0=500" in out and "inversion_steps=40" in out
