"""`editsweep bench`: time a sweep from scratch and say where the wall time goes.

Reports seconds per edit and the fraction of wall time spent outside method code (planning, Ray
startup and model loading, sample loading, scoring, storage, scheduling), from one run measured
side by side: the method's own seconds are timed inside the worker around `invert` and `edit`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from editsweep.bench.runner import run_sweep
from editsweep.bench.spec import load_spec
from editsweep.bench.store import RunStore


def benchmark_sweep(spec_path: str | Path, out: str | None = None, backbone: str | None = None) -> dict[str, Any]:
    """Run `spec_path` into a fresh directory (no resume) and return the timing breakdown.

    `backbone` replaces the spec's backbone name (e.g. `sd-v1-arch` on a GPU).
    """
    spec = load_spec(spec_path)
    if backbone is not None:
        spec = spec.model_copy(update={"backbone": spec.backbones[0].model_copy(update={"name": backbone})})
    run_dir = Path(out or tempfile.mkdtemp(prefix="editsweep-bench-")) / "run"
    if RunStore(str(run_dir)).list_files("results"):
        raise FileExistsError(f"{run_dir} already holds results; a benchmark needs a fresh directory")
    summary = run_sweep(spec, run_dir, progress=False)
    edits = summary.n_ok + summary.n_error
    n_workers = max(1, len(summary.workers))
    worker_wall = summary.wall_seconds * n_workers  # worker-seconds available during the run
    method_s = summary.seconds["invert"] + summary.seconds["edit"]
    after_start = (summary.wall_seconds - summary.startup_seconds) * n_workers
    result = dict(
        spec=str(spec_path),
        run_dir=str(run_dir),
        edits=edits,
        workers=n_workers,
        devices=sorted({w["device"] for w in summary.workers}),
        wall_seconds=round(summary.wall_seconds, 3),
        seconds_per_edit=round(summary.wall_seconds / max(edits, 1), 4),
        method_seconds_per_edit=round(method_s / max(edits, 1), 4),
        fraction_outside_method=round(1 - method_s / worker_wall, 4),
        fraction_outside_method_after_startup=round(1 - method_s / max(after_start, 1e-9), 4),
        breakdown_seconds=dict(
            startup=round(summary.startup_seconds, 3),
            **{k: round(v, 3) for k, v in sorted(summary.seconds.items())},
        ),
        invert_calls=summary.invert_calls,
        edit_calls=summary.edit_calls,
        per_method=_per_method(RunStore(str(run_dir))),
    )
    RunStore(str(run_dir)).write_json("bench.json", result)
    return result


# Published seconds per image (SD 1.4, 512 px, 50 steps), from ../shared/METRICS.md: inversion and
# edit where the paper splits them, else the whole edit as `total_s`. Absolute times are not
# comparable with a tiny CPU backbone; the cost relative to DDIM+P2P (`ddim_p2p`) is.
PUBLISHED: dict[str, dict[str, Any]] = {
    "ddim_p2p": dict(invert_s=11, edit_s=13, hardware="A40", source="PnP Inversion (PIE-Bench) paper"),
    "null_text": dict(invert_s=132, edit_s=13, hardware="A40", source="PnP Inversion (PIE-Bench) paper"),
    "negative_prompt": dict(invert_s=4, edit_s=13, hardware="A40", source="PnP Inversion (PIE-Bench) paper"),
    "direct_inversion": dict(invert_s=17, edit_s=13, hardware="A40", source="PnP Inversion (PIE-Bench) paper"),
    "style_diffusion": dict(invert_s=810, edit_s=28, hardware="A40", source="StyleDiffusion paper"),
    "prompt_tuning": dict(total_s=60, hardware="V100", source="Prompt Tuning Inversion paper"),
    "timestep_injection": dict(total_s=75, hardware="not stated", source="seed paper, ~1-1.5 min"),
    "layer_diffusion": dict(total_s=120, hardware="A100", source="LayerDiffusion paper, ~2 min"),
}


def _per_method(store: RunStore) -> dict[str, dict[str, float]]:
    """Seconds per inversion (per image) and per edited image of each method (each pair of
    `invert_edit`), from the stored rows.

    A row's `invert_s` is its share of a batched inversion, so a group's rows add up to the
    time its image took to invert.
    """
    rows = store.read_results()
    rows = rows[rows["status"] == "ok"].copy()
    # `invert_edit` rows are timed per pair ("null_text+masactrl"): its inversion time per image over
    # every row of that inversion (its groups are shared by the editors), its edit time per editor.
    pair = rows["method"] == "invert_edit"
    rows["inversion"] = rows["method"].astype(str)
    rows.loc[pair, "inversion"] = [f"invert_edit:{json.loads(p)['inversion']}" for p in rows.loc[pair, "invert_params"]]
    rows["key"] = rows["method"].astype(str)
    rows.loc[pair, "key"] = [
        f"{json.loads(i)['inversion']}+{json.loads(e)['editor']}"
        for i, e in zip(rows.loc[pair, "invert_params"], rows.loc[pair, "edit_params"])
    ]
    inversion_s = {
        name: part["invert_s"].sum() / part["group_key"].nunique() for name, part in rows.groupby("inversion")
    }
    out = {}
    for key, part in rows.groupby("key"):
        out[str(key)] = dict(
            invert_s_per_image=round(inversion_s[part["inversion"].iloc[0]], 4),
            edit_s_per_image=round(part["edit_s"].mean(), 4),
            score_s_per_image=round(part["score_s"].mean(), 4),
            edits=len(part),
        )
    reference = out.get("ddim_p2p")
    for method, timing in out.items():
        if reference is not None:
            measured = timing["invert_s_per_image"] + timing["edit_s_per_image"]
            timing["x_ddim_p2p"] = round(measured / (reference["invert_s_per_image"] + reference["edit_s_per_image"]), 2)
        published = PUBLISHED.get(method)
        if published is not None:
            timing["published"] = published
            paper = published.get("total_s", published.get("invert_s", 0) + published.get("edit_s", 0))
            timing["published_x_ddim_p2p"] = round(paper / 24, 2)  # DDIM+P2P: 11 s + 13 s
    return out
