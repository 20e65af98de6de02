"""Acceptance checks of the trained toy models: `editsweep toy eval`.

Each check measures one property that editing on the toy world relies on, on held-out scenes
(a random stream that the training pool of `toy/train.py` never draws from), judged by the pixel
detector (`toy/detector.py`) or by PSNR - never by the toy CLIP, except where the toy CLIP itself
is what is checked:

- `vae_round_trip`: PSNR of decode(encode(x)) against x;
- `generation`: text-to-image at guidance 7.5 with 50 DDIM steps, every colour x shape prompt
  ("a red star") with several seeds: is the named colour / shape what the detector reads?
- `layout`: text-to-image from whole captions of held-out one-object scenes ("a small red star at
  the top on a blue background"): is each named attribute, position included, what the detector reads?
- `reconstruction`: DDIM inversion then sampling at guidance 1 against the VAE round trip, and at
  guidance 7.5 `ddim_edit` against `null_text` (the gap Null-text inversion exists to close);
- `clip_zero_shot`: the toy CLIP's zero-shot colour and shape accuracy over colour x shape prompts;
- `color_swap`: a sweep (`configs/toy-color-swap.yaml`) of P2P word swaps and SDEdit on colour-swap
  queries of the `shapes` dataset, read back from its results (`color_swap_figures`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.toy import detector, world

HELD_OUT_STREAM = 7  # scene i of a held-out set is drawn from rng [seed, 7, i]; training uses 1
PROMPTS = [f"a {color} {shape}" for color, shape in itertools.product(world.COLORS, world.SHAPES)]


def held_out_scenes(n: int, seed: int = 0, n_objects: int | None = None) -> list[world.Scene]:
    """`n` scenes the training pool never contains (their own random stream)."""
    return [world.random_scene(np.random.default_rng([seed, HELD_OUT_STREAM, i]), n_objects) for i in range(n)]


def scenes_tensor(scenes: Sequence[world.Scene]) -> torch.Tensor:
    """Renders of `scenes`, (N, 3, 32, 32) float in [0, 1]."""
    pixels = np.stack([np.asarray(world.render(s)) for s in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of two (N, 3, H, W) batches in [0, 1] (inf where they are equal), as the
    `psnr` scorer computes it (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a.float(), b.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))


def _mean_psnr(values: torch.Tensor) -> float:
    """Mean PSNR over images, identical ones counted at 100 dB so that the mean stays finite."""
    return float(values.clamp(max=100.0).mean())


@torch.no_grad()
def vae_round_trip(backbone: Backbone, n: int = 256, seed: int = 0) -> dict[str, float]:
    """PSNR of the VAE's round trip on `n` held-out scenes: mean and 5th percentile."""
    x = scenes_tensor(held_out_scenes(n, seed))
    values = torch.cat([psnr(backbone.decode(backbone.encode_images(b)), b) for b in x.split(128)])
    return {"psnr_mean": _mean_psnr(values), "psnr_p05": float(values.quantile(0.05)), "n": n}


@torch.no_grad()
def sample_images(backbone: Backbone, prompts: Sequence[str], steps: int, guidance: float, seed: int = 0) -> torch.Tensor:
    """Text-to-image with DDIM: one image per prompt, (N, 3, H, W) in [0, 1], noise from `seed`."""
    from editsweep.diffusion.ddim import ddim_sample, make_schedule

    gen = torch.Generator().manual_seed(seed)
    side = backbone.unet.config.sample_size
    noise = torch.randn((len(prompts), backbone.unet.config.in_channels, side, side), generator=gen)
    schedule = make_schedule(backbone, steps)
    images = []
    for start in range(0, len(prompts), 96):
        batch = list(prompts[start : start + 96])
        cond = backbone.encode_text(batch)
        uncond = backbone.encode_text([""] * len(batch))
        latents = ddim_sample(backbone, noise[start : start + 96], schedule, cond, uncond, guidance)
        images.append(backbone.decode(latents))
    return torch.cat(images)


@torch.no_grad()
def generation(
    backbone: Backbone, seeds: int = 4, steps: int = 50, guidance: float = 7.5, prompts: Sequence[str] = PROMPTS
) -> dict[str, Any]:
    """Share of images whose detected objects include the prompt's colour / shape / both.

    An image counts for colour when its largest detected object has the named colour, for shape
    when that object has the named shape (so one wrong object is a miss, not a hit by luck).
    """
    prompts = [p for p in prompts for _ in range(seeds)]
    images_all = sample_images(backbone, prompts, steps, guidance)
    color_ok, shape_ok, per_prompt = [], [], {}
    for prompt, image in zip(prompts, images_all):
        _, color, shape = prompt.split()
        found = detector.detect(image).objects
        main = max(found, key=lambda o: o.area) if found else None
        color_ok.append(main is not None and main.color == color)
        shape_ok.append(main is not None and main.shape == shape)
        per_prompt.setdefault(prompt, []).append(bool(color_ok[-1] and shape_ok[-1]))
    return {
        "color_acc": float(np.mean(color_ok)),
        "shape_acc": float(np.mean(shape_ok)),
        "n": len(prompts),
        "worst_prompts": sorted(per_prompt, key=lambda p: np.mean(per_prompt[p]))[:5],
        "images": images_all,
    }


LAYOUT_ATTRIBUTES = ("color", "shape", "size", "position")


def layout(
    backbone: Backbone, n: int = 240, steps: int = 50, guidance: float = 7.5, seed: int = 0
) -> dict[str, Any]:
    """Text-to-image from the full captions of `n` held-out one-object scenes (size, position and
    background named, as in the `shapes` queries): the share of images whose largest detected object
    has the caption's colour / shape / size / position, whose background is the caption's, and
    which hold exactly one object; position also per named position.

    This is what pure generation (SDEdit at strength 1) gets right of a whole caption, the
    ceiling of a sweep's CLIP-T at high strength on this world (BENCHMARKS.md, issue 11).
    """
    scenes = held_out_scenes(n, seed, n_objects=1)
    images = sample_images(backbone, [s.caption() for s in scenes], steps, guidance)
    hits: dict[str, list[bool]] = {key: [] for key in (*LAYOUT_ATTRIBUTES, "background", "one_object")}
    by_position: dict[str, list[bool]] = {position: [] for position in world.POSITIONS}
    for scene, image in zip(scenes, images):
        found = detector.detect(image)
        main = max(found.objects, key=lambda o: o.area) if found.objects else None
        truth = scene.objects[0]
        for key in LAYOUT_ATTRIBUTES:
            hits[key].append(main is not None and getattr(main, key) == getattr(truth, key))
        hits["background"].append(set(found.background) == set(scene.background))
        hits["one_object"].append(len(found.objects) == 1)
        by_position[truth.position].append(hits["position"][-1])
    return {
        **{f"{key}_acc": float(np.mean(values)) for key, values in hits.items()},
        "position_acc_by_position": {p: float(np.mean(v)) for p, v in by_position.items() if v},
        "n": n,
        "images": images,
    }


def reconstruction(backbone: Backbone, n: int = 16, steps: int = 50, seed: int = 0) -> dict[str, float]:
    """Reconstruction PSNR against the VAE round trip of `n` held-out scenes, three ways:

    DDIM inversion and sampling at guidance 1 (`ddim_g1`), `ddim_edit` (inversion at 1, sampling at
    7.5: `ddim_edit_g7.5`) and `null_text` at 7.5 (`null_text_g7.5`), each with the source caption
    as both prompts.
    """
    from editsweep.methods.base import get_method_class

    scenes = held_out_scenes(n, seed)
    x = scenes_tensor(scenes)
    with torch.no_grad():
        reference = backbone.decode(backbone.encode_images(x))
    samples = [
        Sample(id=f"held-{i}", image=world.render(s), source_prompt=s.caption(), target_prompt=s.caption())
        for i, s in enumerate(scenes)
    ]
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    results = {}
    # One inversion per method, shared by its edit points (as the worker shares it).
    runs = {
        "ddim_edit": ({"steps": steps}, {"ddim_g1": {"guidance": 1.0}, "ddim_edit_g7.5": {"guidance": 7.5}}),
        "null_text": ({"steps": steps, "guidance": 7.5}, {"null_text_g7.5": {}}),
    }
    for name, (invert, points) in runs.items():
        method = get_method_class(name)()
        invert_params = method.InvertParams(**invert)
        state = method.invert(backbone, samples, invert_params, gens)
        edits = [method.EditParams(**edit) for edit in points.values()]
        outs = method.edit(backbone, state, samples, invert_params, edits, gens)
        for key, out in zip(points, outs, strict=True):
            results[key] = _mean_psnr(psnr(out, reference))
    results["null_text_margin_db"] = results["null_text_g7.5"] - results["ddim_edit_g7.5"]
    return results


@torch.no_grad()
def clip_zero_shot(n: int = 500, seed: int = 0) -> dict[str, float]:
    """The toy CLIP's zero-shot accuracy on `n` held-out one-object scenes, over `PROMPTS`.

    The predicted prompt is the most similar of the 48 colour x shape prompts; its colour and its
    shape are scored separately.
    """
    from editsweep.bench.metrics.clip_t import ClipTScorer

    scorer = ClipTScorer({"weights": "toy"}, torch.device("cpu"))
    scenes = held_out_scenes(n, seed, n_objects=1)
    image = torch.cat([scorer.image_embeddings(b) for b in scenes_tensor(scenes).split(256)])
    text = scorer.text_embeddings(PROMPTS)
    best = (image @ text.T).argmax(dim=1).tolist()
    predicted = [PROMPTS[k].split()[1:] for k in best]
    truth = [(s.objects[0].color, s.objects[0].shape) for s in scenes]
    return {
        "color_acc": float(np.mean([p[0] == t[0] for p, t in zip(predicted, truth)])),
        "shape_acc": float(np.mean([p[1] == t[1] for p, t in zip(predicted, truth)])),
        "n": n,
    }


def color_swap_figures(results: pd.DataFrame, outside_psnr_min: float = 24.0) -> pd.DataFrame:
    """Per sweep point of a colour-swap run: mean scores, and the share of edits that reach the
    target colour while keeping `outside_psnr` >= `outside_psnr_min` (both in one edit)."""
    ok = results[results["status"] == "ok"].copy()
    scores = pd.DataFrame(list(ok["scores"].map(dict)), index=ok.index)
    ok = ok.join(scores)
    ok["success"] = (ok["attr_acc"] >= 1.0) & (ok["outside_psnr"] >= outside_psnr_min)
    ok["outside_psnr_capped"] = ok["outside_psnr"].clip(upper=100.0)
    grouped = ok.groupby(["method", "invert_params", "edit_params"], sort=True)
    table = grouped.agg(
        n=("success", "size"),
        success=("success", "mean"),
        attr_acc=("attr_acc", "mean"),
        outside_psnr=("outside_psnr_capped", "mean"),
        clip_t=("clip_t", "mean"),
        lpips=("lpips", "mean"),
    )
    return table.reset_index()


def monotone(values: Sequence[float]) -> bool:
    """Whether the values rise strictly, in order."""
    return all(b > a for a, b in zip(values, values[1:])) and not any(math.isnan(v) for v in values)


def color_swap(spec_path: Path, run_dir: Path) -> dict[str, Any]:
    """Run the colour-swap sweep of `spec_path` into `run_dir` (resuming) and read its figures."""
    import json

    from editsweep.bench.runner import run_sweep
    from editsweep.bench.spec import load_spec
    from editsweep.bench.store import RunStore

    summary = run_sweep(load_spec(spec_path), str(run_dir), progress=False)
    table = color_swap_figures(RunStore(summary.run_dir).read_results())
    sdedit = table[table["method"] == "sdedit"].copy()
    sdedit["strength"] = sdedit["edit_params"].map(lambda p: json.loads(p)["strength"])
    sdedit = sdedit.sort_values("strength")
    copy_clip = float(table.loc[table["method"] == "copy", "clip_t"].min())
    return {
        "table": table,
        "sdedit_clip_t_rises": monotone(sdedit["clip_t"].tolist()),
        "sdedit_lpips_rises": monotone(sdedit["lpips"].tolist()),
        "copy_lowest_clip_t": bool(copy_clip <= table.loc[table["method"] != "copy", "clip_t"].min()),
        "errors": summary.n_error,
    }


def save_grid(images: torch.Tensor, columns: int, path: Path, scale: int = 3) -> None:
    """A (N, 3, H, W) batch as one PNG grid, `columns` images per row, upscaled without smoothing."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.ones(3, rows * (h + 2), columns * (w + 2))
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        grid[:, r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = image
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST).save(path)


def run_all(out: Path, spec_path: Path, checks: Sequence[str]) -> dict[str, Any]:
    """Run the named checks on the shipped toy models; figures to `out/eval.json`, pictures beside."""
    import json

    from editsweep.diffusion.backbone import load_backbone

    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("toy")
    figures: dict[str, Any] = {"weights": backbone.weights_source}
    if "vae" in checks:
        figures["vae_round_trip"] = vae_round_trip(backbone)
    if "generation" in checks:
        result = generation(backbone)
        save_grid(result.pop("images"), columns=4 * 6, path=out / "generation.png")
        figures["generation"] = result
    if "layout" in checks:
        result = layout(backbone)
        save_grid(result.pop("images"), columns=24, path=out / "layout.png")
        figures["layout"] = result
    if "reconstruction" in checks:
        figures["reconstruction"] = reconstruction(backbone)
    if "clip" in checks:
        figures["clip_zero_shot"] = clip_zero_shot()
    if "color_swap" in checks:
        result = color_swap(spec_path, out / "color-swap-run")
        table = result.pop("table")
        table.to_csv(out / "color_swap.csv", index=False)
        figures["color_swap"] = {**result, "points": table.to_dict(orient="records")}
    (out / "eval.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return figures
