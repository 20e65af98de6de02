"""What the shipped toy models can do, checked on held-out scenes of the toy world with the pixel
detector (a fast subset of `editsweep toy eval`, whose full figures are in BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editsweep.datasets.images import fit_square
from editsweep.datasets.shapes import ShapesDataset
from editsweep.diffusion.backbone import TOY_WEIGHTS_PREFIX, load_backbone
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.masks import dataset_mask
from editsweep.methods.base import get_method_class
from editsweep.toy import detector, evaluate, models


@pytest.fixture(scope="module")
def toy():
    return load_backbone("toy")


def _colour_swaps(toy, n: int) -> list:
    """The first `n` colour-swap queries of the toy world (datasets/shapes.py, seed 1) at the backbone's size."""
    dataset = ShapesDataset({"n": n, "edit_types": ["color"], "seed": 1})
    samples = [dataset.load(i) for i in dataset.sample_ids()]
    for s in samples:
        s.image = fit_square(s.image, toy.resolution)
    return samples


def _recoloured_and_kept(samples, edited) -> tuple[list[bool], list[float]]:
    """Per query: did the detector find the target colour at the object, and the PSNR outside the mask."""
    sources = images_tensor(samples, torch.device("cpu"))
    reached, psnr = [], []
    for sample, image, source in zip(samples, edited, sources):
        target = sample.meta["target_scene"]["objects"][0]
        reached.append(any(o.color == target["color"] for o in detector.detect(image).at(target["position"])))
        outside = ~torch.from_numpy(sample.meta["mask"])
        psnr.append(float(10 * torch.log10(1 / ((image - source) ** 2).mean(0)[outside].mean())))
    return reached, psnr


def test_shipped_weights_are_small_and_recorded_as_toy(toy):
    files = [p for p in models.WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    assert toy.weights_source.startswith(TOY_WEIGHTS_PREFIX) and not toy.random_weights
    assert toy.resolution == 32 and toy.vae_scale_factor == 4


def test_vae_round_trip_keeps_held_out_scenes(toy):
    assert evaluate.vae_round_trip(toy, n=32)["psnr_mean"] >= 28.0


def test_generation_draws_the_named_colour_and_shape(toy):
    result = evaluate.generation(toy, seeds=1, steps=50)
    assert result["color_acc"] >= 0.9 and result["shape_acc"] >= 0.8, result


def test_ddim_inversion_reconstructs_at_guidance_1(toy):
    figures = evaluate.reconstruction(toy, n=4, steps=50)
    assert figures["ddim_g1"] >= 25.0, figures
    assert figures["null_text_margin_db"] >= 3.0, figures


def test_toy_clip_reads_colour_and_shape():
    result = evaluate.clip_zero_shot(n=200)
    assert result["color_acc"] >= 0.95 and result["shape_acc"] >= 0.9, result


def test_p2p_word_swap_recolours_the_object_and_keeps_the_rest(toy):
    samples = _colour_swaps(toy, 8)
    method = get_method_class("direct_inversion")()
    invert = method.InvertParams(steps=50)
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    state = method.invert(toy, samples, invert, gens)
    (edited,) = method.edit(toy, state, samples, invert, [method.EditParams(cross_replace=0.8, self_replace=0.4)], gens)
    reached, psnr = _recoloured_and_kept(samples, edited)
    kept = [p >= 24.0 for p in psnr]
    assert np.mean(reached) >= 0.75 and np.mean(kept) >= 0.75, (reached, psnr)


def test_infedit_word_swap_recolours_the_object_and_keeps_the_rest(toy):
    """InfEdit at the reference's defaults (12 DDCM steps, guidance 2.3 / 1, local blend on the
    target colour word) on 8 colour swaps; measured: 7/8 reach the target colour, 8/8 keep >= 24 dB
    PSNR outside the object's mask (25.6 to 44.0 dB)."""
    samples = _colour_swaps(toy, 8)
    method = get_method_class("infedit")()
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    state = method.invert(toy, samples, method.InvertParams(), gens)
    (edited,) = method.edit(toy, state, samples, method.InvertParams(), [method.EditParams()], gens)
    reached, psnr = _recoloured_and_kept(samples, edited)
    kept = [p >= 24.0 for p in psnr]
    assert np.mean(reached) >= 0.75 and np.mean(kept) >= 0.75, (reached, psnr)


def test_toy_eval_command_writes_the_figures(tmp_path, capsys):
    import json

    from editsweep.bench.cli import main

    assert main(["toy", "eval", "--out", str(tmp_path), "--checks", "vae", "clip"]) == 0
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert set(figures) == {"weights", "vae_round_trip", "clip_zero_shot"}
    assert figures["weights"].startswith(TOY_WEIGHTS_PREFIX) and "psnr_mean" in capsys.readouterr().out


def test_diffedit_recolours_the_object_and_keeps_the_rest(toy):
    """8 colour swaps, 10 steps, 4 mask draws (for time; the paper's 10 give the same 7/8), the paper's
    other defaults: measured 7/8 recoloured, PSNR outside the dataset's mask 22.0-43.3 dB (DiffEdit
    finds its own mask)."""
    samples = _colour_swaps(toy, 8)
    method = get_method_class("diffedit")()
    invert = method.InvertParams(steps=10)
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    state = method.invert(toy, samples, invert, gens)
    (edited,) = method.edit(toy, state, samples, invert, [method.EditParams(mask_samples=4)], gens)
    reached, psnr = _recoloured_and_kept(samples, edited)
    assert np.mean(reached) >= 0.625 and min(psnr) >= 20.0, (reached, psnr)


def test_blended_latent_recolours_inside_the_mask_and_keeps_the_round_trip_outside(toy):
    """8 colour swaps with the dataset's masks, 10 steps: measured 7/8 recoloured, PSNR outside the
    mask 25.9-42.3 dB; 2 latent cells (8 px) or more away from the downsampled mask, the pixels are
    the VAE round trip's within 0.091 (the final latent there is the input's exactly; the decoder
    carries the edit that far)."""
    samples = _colour_swaps(toy, 8)
    method = get_method_class("blended_latent")()
    invert = method.InvertParams()
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    state = method.invert(toy, samples, invert, gens)
    (edited,) = method.edit(toy, state, samples, invert, [method.EditParams(steps=10)], gens)
    reached, psnr = _recoloured_and_kept(samples, edited)
    assert np.mean(reached) >= 0.625 and min(psnr) >= 23.0, (reached, psnr)
    round_trip = toy.decode(state["latents"])
    cell, away = toy.vae_scale_factor, []
    for sample, image, kept in zip(samples, edited, round_trip):
        latent_mask = dataset_mask(sample, (toy.resolution // cell,) * 2)[None, None]
        near = torch.nn.functional.max_pool2d(latent_mask, 5, 1, 2)  # within 2 cells
        far = torch.nn.functional.interpolate(near, scale_factor=cell)[0, 0] == 0
        away.append((image - kept)[:, far].flatten())
    away = torch.cat(away)
    assert away.numel() > 0 and away.abs().max() <= 0.15
