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


def _edited(toy, samples, name: str, invert: dict, edit: dict) -> torch.Tensor:
    """Method `name`'s edit of `samples` at one edit point (params as in a spec), seed i for sample i."""
    method = get_method_class(name)()
    invert_params = method.InvertParams.model_validate(invert)
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    state = method.invert(toy, samples, invert_params, gens)
    (edited,) = method.edit(toy, state, samples, invert_params, [method.EditParams.model_validate(edit)], gens)
    return edited


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


def test_layout_draws_whole_captions_but_position(toy):
    """Whole captions of 40 held-out scenes; measured on 240 (`editsweep toy eval --checks layout`):
    colour, size and background >= 92%, position 42.5% (centre 100%, the four sides 22-57%): the
    toy UNet hardly reads position words, what SDEdit loses at high strength (BENCHMARKS.md)."""
    result = evaluate.layout(toy, n=40)
    assert result["images"].shape == (40, 3, 32, 32)
    assert min(result["color_acc"], result["size_acc"], result["background_acc"]) >= 0.85, result
    assert result["position_acc_by_position"]["center"] >= 0.75, result


def test_ddim_inversion_reconstructs_at_guidance_1(toy):
    figures = evaluate.reconstruction(toy, n=4, steps=50)
    assert figures["ddim_g1"] >= 25.0, figures
    assert figures["null_text_margin_db"] >= 3.0, figures


def test_toy_clip_reads_colour_and_shape():
    result = evaluate.clip_zero_shot(n=200)
    assert result["color_acc"] >= 0.95 and result["shape_acc"] >= 0.9, result


def test_p2p_word_swap_recolours_the_object_and_keeps_the_rest(toy):
    """Direct inversion + P2P word swap (50 steps, guidance 7.5, cross 0.8, self 0.4) on 8 colour
    swaps; measured: 8/8 reach the target colour, 7/8 keep >= 24 dB PSNR outside the object's mask
    (20.4 to 42.7 dB)."""
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


@pytest.mark.parametrize(
    ("name", "invert", "edit", "recoloured", "kept", "floor"),
    [
        pytest.param("invert_edit", {"inversion": "ddim"}, {"editor": "plain"}, 6, 5, 17.0, id="ddim-plain"),
        pytest.param(
            "invert_edit",
            {"inversion": "ddim"},
            {"editor": "masactrl", "start_layer": 3},
            6,
            5,
            17.0,
            id="ddim-masactrl",
        ),
        pytest.param(
            "invert_edit",
            {"inversion": "ddim"},
            {"editor": "pnp", "feature_layer": 1, "attention_layer": 1},
            6,
            5,
            17.0,
            id="ddim-pnp",
        ),
        pytest.param(
            "invert_edit",
            {"inversion": "p2pzero"},
            {"editor": "pix2pix_zero", "guidance": 5.0, "xa_guidance": 15.0},
            4,
            4,
            16.0,
            id="p2pzero-pix2pix_zero",
        ),
        pytest.param(
            "invert_edit",
            {"inversion": "ddpm", "skip": 40},
            {"editor": "plain", "guidance": 15.0},
            5,
            4,
            15.0,
            id="ddpm-plain",
        ),
        pytest.param("invert_edit", {"inversion": "ddpm"}, {"editor": "p2p", "guidance": 15.0}, 7, 5, 21.0, id="ddpm-p2p"),
        pytest.param("edict", {"strength": 0.7}, {}, 5, 5, 15.0, id="edict"),
        pytest.param("cycle_diffusion", {}, {}, 4, 4, 14.0, id="cycle_diffusion"),
    ],
)
def test_editor_recolours_the_object_and_keeps_the_rest(toy, name, invert, edit, recoloured, kept, floor):
    """Each pair or method at its paper's defaults (or, where said, a point of the range its paper or
    reference code documents) on 8 colour swaps: at least `recoloured` of 8 reach
    the target colour (detector), `kept` of 8 keep >= 24 dB PSNR outside the object's mask, none
    below `floor` dB. Measured (recoloured; >= 24 dB; PSNR outside the mask):

    - ddim + plain (50 steps, guidance 7.5; `ddim_edit`): 7/8; 6/8; 18.8-43.2 dB.
    - ddim + masactrl (50 steps, guidance 7.5, start step 4, start layer 3: the toy's first decoder
      block, as SD's 10 is in its decoder; methods/editors/masactrl.py): 7/8; 6/8; 18.4-37.2 dB.
      Mutual self-attention does not keep the source's colour here: from layer 0 and step 0 it
      still recolours 7/8 (presumably the target prompt's cross-attention decides a flat colour).
    - ddim + pnp (50 steps, guidance 7.5, features at decoder layer 1 for 80% of the steps, queries
      and keys from layer 1 for 50%; SD's 4 of 12; methods/editors/pnp.py): 7/8; 6/8; 18.6-42.5 dB.
    - p2pzero + pix2pix_zero (the paper's inversion: 50 steps, lambda 20/20, 5 rounds; CFG 5;
      xa_guidance 15: the paper's 0.1 is 10 at the toy's scale, methods/editors/pix2pix_zero.py,
      and its README advises raising it in steps of 0.05 when the structure is lost; 0.15 is also
      its code's value for synthetic images): 5/8; 5/8; 17.6-39.4 dB. At 10: 5/8; 4/8; 13.3-39.0
      dB; at 20: 5/8; 6/8; 16.9-39.8 dB. The source prompt as negative prompt (the paper's)
      recolours and limits: with the inversion's empty prompt instead (xa 15) 2/8; 8/8; 25.1-37.9
      dB; with it, CFG 5 amplifies every target-source difference and leaves stray colour blobs
      on 4, 6 and 7. Not the inversion: its source rows come back at 28-38 dB of the VAE round trip.
    - ddpm + plain (edit-friendly DDPM, the paper's 100 steps, source CFG 3.5, guidance 15; skip
      40, the top of the reference code's suggested [0, 40] (its README), methods/inversions/
      ddpm.py): 6/8; 5/8; 16.6-40.1 dB. At the paper's skip 36: 4/8; 4/8; 14.4-40.1 dB (the
      triangles of 2 and 4 lose their shape; guidance 7-9 there: 5/8; 5/8). Under 24 dB: 2 and 5
      (the two-tone backgrounds: an extra blob on 2, a bell for a triangle on 5) and 7 (its
      triangle redrawn narrower).
    - ddpm + p2p (the same inversion, the paper's DDPM + P2P combination, P2P's defaults): 8/8; 6/8;
      22.1-38.6 dB.
    - edict (the paper's 50 steps, p 0.93, guidance 3; strength 0.7, inside the reference code's
      "typically [0.6, 0.9]", `EDICT_editing`): 6/8; 6/8; 16.6-43.9 dB (0.6: 6/8; 6/8; 16.3-43.2).
      At the preset's 0.8: 5/8; 4/8; 16.0-43.1 dB. The two failures are the two orange-triangle
      targets (4, 7): the toy redraws the triangle lower.
    - cycle_diffusion (diffusers' defaults: 50 steps, strength 0.8, eta 0.1, guidance 7.5): 5/8;
      5/8; 15.5-41.7 dB.

    The ddim pairs' two queries under 24 dB are the two on two-tone backgrounds (2 and 5). Bounds:
    one query below each measured count, 1-2 dB below each measured minimum.
    """
    samples = _colour_swaps(toy, 8)
    reached, psnr = _recoloured_and_kept(samples, _edited(toy, samples, name, invert, edit))
    assert sum(reached) >= recoloured, (reached, psnr)
    assert sum(p >= 24.0 for p in psnr) >= kept and min(psnr) >= floor, (reached, psnr)


def test_ledits_pp_recolours_the_toy_world_with_whole_prompts_and_its_finest_maps(toy):
    """LEDITS++ at diffusers' defaults (30 steps after skipping 15%, edit guidance 5, warm-up 0,
    threshold 0.9) but `concepts_from: prompts` (the target caption added, the source caption
    removed) and `m1_resolution: 1.0` (M1 from the toy's 8x8 maps) on 8 colour swaps; measured: 6/8
    reach the target colour, 6/8 keep >= 24 dB PSNR outside the object's mask (14.7-35.5 dB; the
    worst, query 2 on a two-tone background, loses the object).

    What limits the defaults (measured, same 8 queries; methods/ledits_pp.py): the colour words
    alone, 1/8 recoloured, 8/8 kept (24.5-48.0 dB): the toy text encoder, trained on whole captions,
    puts 10% of a lone word's M1 cells on the object's mask (the captions: 81%), and without any
    mask (threshold 0) the words recolour 3/8 while repainting the background (6.6-24.5 dB). Whole
    prompts alone (M1 at the reference's 1/4, which falls back to the toy's 4x4 maps): 4/8; 4/8.
    The 8x8 maps alone: 2/8; 8/8. Run with
    `OMP_NUM_THREADS=1 uv run pytest tests/toy/test_semantics.py -k ledits -x -q`."""
    samples = _colour_swaps(toy, 8)
    edited = _edited(toy, samples, "ledits_pp", {}, {"concepts_from": "prompts", "m1_resolution": 1.0})
    reached, psnr = _recoloured_and_kept(samples, edited)
    assert sum(reached) >= 5, (reached, psnr)
    assert sum(p >= 24.0 for p in psnr) >= 5 and min(psnr) >= 13.0, (reached, psnr)


@pytest.mark.slow  # 12-16 s: two InfEdit runs of 8 queries
def test_infedit_mutual_words_keep_the_background_of_colour_swaps_closer_to_the_input(toy):
    """InfEdit at its defaults on the 8 colour swaps, with and without "background" (a word of both
    prompts) as the reference's source-blend ("mutual") word: 4 px or more away from the object's
    mask, the MSE against the input over the 8 queries' pixels drops from 2.5e-4 to 7.3e-5 (measured;
    per query the PSNR there rose on 6 of 8, 26.9 -> 41.4 dB on the worst). The cost: the toy's blend maps are 2x2 cells
    (latent / 4), so the source's "background" mask also covers the object on some queries and
    takes its recolouring back there: 3/8 reach the target colour against 7/8 without."""
    import dataclasses

    samples = _colour_swaps(toy, 8)
    mutual = [dataclasses.replace(s, meta={**s.meta, "mutual_words": ["background"]}) for s in samples]
    method = get_method_class("infedit")()
    gens = [torch.Generator().manual_seed(i) for i in range(len(samples))]
    state = method.invert(toy, samples, method.InvertParams(), gens)
    (plain,) = method.edit(toy, state, samples, method.InvertParams(), [method.EditParams()], gens)
    (kept,) = method.edit(toy, state, mutual, method.InvertParams(), [method.EditParams()], gens)
    sources = images_tensor(samples, torch.device("cpu"))
    errors = {"plain": [], "kept": []}
    for sample, a, b, source in zip(samples, plain, kept, sources):
        mask = torch.from_numpy(sample.meta["mask"]).float()[None, None]
        far = torch.nn.functional.max_pool2d(mask, 9, 1, 4)[0, 0] == 0
        errors["plain"].append(((a - source) ** 2).mean(0)[far])
        errors["kept"].append(((b - source) ** 2).mean(0)[far])
    plain_mse, kept_mse = (torch.cat(errors[k]).mean() for k in ("plain", "kept"))
    assert kept_mse < 0.5 * plain_mse, (plain_mse, kept_mse)
