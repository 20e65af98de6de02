"""`precomputed`: files found by pattern (sample id, seed, extension), resized like the inputs, the
folder made absolute by the spec loader, and a sweep where one missing file fails only its sample."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from editsweep.bench.spec import SpecError, load_spec
from editsweep.datasets.base import DatasetError, Sample
from editsweep.datasets.images import fit_square, load_rgb
from editsweep.methods.base import Params, get_method_class
from editsweep.methods.precomputed import PrecomputedInvertParams, resolve_file


def write_image(path, seed: int, size=(96, 128)) -> np.ndarray:
    """A random non-square RGB image at `path` (format from the extension); returns its pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_invert_reads_each_sample_seed_file_resized_like_inputs(tmp_path):
    # The method reads only the backbone's resolution and device: a stand-in spares loading one.
    tiny_backbone = SimpleNamespace(resolution=48, device=torch.device("cpu"))
    generated_samples = [Sample(id=f"gen-{i}", image=Image.new("RGB", (8, 8)), target_prompt="x") for i in range(3)]
    generators = [torch.Generator() for _ in range(3)]
    ids = [s.id for s in generated_samples]
    write_image(tmp_path / f"{ids[0]}-s3.png", 0)
    write_image(tmp_path / f"{ids[1]}-s4.jpg", 1)
    write_image(tmp_path / f"{ids[2]}-s3.webp", 2)
    method = get_method_class("precomputed")()
    params = PrecomputedInvertParams(folder=str(tmp_path), pattern="{sample_id}-s{seed}")
    state = method.invert(tiny_backbone, generated_samples, params, generators, seeds=[3, 4, 3])
    out = method.edit(tiny_backbone, state, generated_samples, params, [Params(), Params()], generators)
    size = tiny_backbone.resolution
    for i, name in enumerate([f"{ids[0]}-s3.png", f"{ids[1]}-s4.jpg", f"{ids[2]}-s3.webp"]):
        expected = np.asarray(fit_square(load_rgb(tmp_path / name), size), dtype=np.float32) / 255
        assert np.array_equal(out[0][i].permute(1, 2, 0).numpy(), expected)
    assert len(out) == 2 and torch.equal(out[0], out[1]) and out[0].shape == (3, 3, size, size)
    with pytest.raises(ValueError, match="seeds"):
        method.invert(tiny_backbone, generated_samples, params, generators)


def test_resolve_file_names_what_is_missing_or_ambiguous(tmp_path):
    (tmp_path / "a.png").touch()
    assert resolve_file(tmp_path, "{sample_id}", "a", 0) == tmp_path / "a.png"
    assert resolve_file(tmp_path, "{sample_id}.png", "a", 0) == tmp_path / "a.png"
    with pytest.raises(FileNotFoundError) as info:
        resolve_file(tmp_path, "{sample_id}_{seed}", "b", 2)
    assert all(str(tmp_path / f"b_2{ext}") in str(info.value) for ext in (".png", ".jpg", ".jpeg", ".webp"))
    (tmp_path / "a.jpg").touch()
    with pytest.raises(FileNotFoundError, match="several files"):
        resolve_file(tmp_path, "{sample_id}", "a", 0)


@pytest.mark.parametrize("sample_id", ["../secret", "link", "/abs"])
def test_a_file_outside_the_folder_is_refused_without_reading_it(tmp_path, sample_id):
    folder, secret = tmp_path / "outs", tmp_path / "secret.png"
    folder.mkdir()
    write_image(secret, 0)
    (folder / "link.png").symlink_to(secret)
    if sample_id == "/abs":
        sample_id = str(tmp_path / "secret")
    with pytest.raises(DatasetError, match=rf"sample {re.escape(repr(sample_id))} seed 0.*(outside|absolute)"):
        resolve_file(folder, "{sample_id}", sample_id, 0)
    backbone = SimpleNamespace(resolution=16, device=torch.device("cpu"))
    samples = [Sample(id=sample_id, image=Image.new("RGB", (8, 8)), target_prompt="x")]
    params = PrecomputedInvertParams(folder=str(folder), pattern="{sample_id}.png")
    with pytest.raises(DatasetError, match="outside|absolute"):
        get_method_class("precomputed")().invert(backbone, samples, params, [torch.Generator()], seeds=[0])


def _raw(folder, **invert):
    return {
        "name": "pre",
        "datasets": [{"name": "synthetic", "params": {"n": 2}}],
        "methods": [{"name": "precomputed", "invert": {"folder": folder, **invert}}],
        "metrics": {"psnr": {}},
    }


def test_spec_makes_the_folder_absolute_relative_to_the_spec_file(tmp_path, monkeypatch):
    import yaml

    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_raw(["outs", str(tmp_path / "elsewhere")])))
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec = load_spec(spec_file)
    assert spec.methods[0].invert["folder"] == [str(tmp_path / "specs" / "outs"), str(tmp_path / "elsewhere")]
    assert [p["folder"] for p in spec.methods[0].invert_grid()] == spec.methods[0].invert["folder"]


@pytest.mark.parametrize(
    ("invert", "message"),
    [
        ({"pattern": "{seed}.png"}, "must contain {sample_id}"),
        ({"pattern": "{sample_id}_{step}.png"}, "unknown placeholders"),
        ({"pattern": "{sample_id"}, "not a valid format string"),
        ({"pattern": "../{sample_id}.png"}, "relative to `folder`"),
        ({"pattern": "/tmp/{sample_id}.png"}, "relative to `folder`"),
    ],
)
def test_bad_patterns_are_spec_errors(tmp_path, invert, message):
    with pytest.raises(SpecError, match=r"methods\[0\]\.invert.*" + message.replace("{", r"\{").replace("}", r"\}")):
        load_spec(_raw(str(tmp_path), **invert))


def test_folder_is_required(tmp_path):
    raw = _raw(str(tmp_path))
    del raw["methods"][0]["invert"]["folder"]
    with pytest.raises(SpecError, match=r"methods\[0\]\.invert\.folder: Field required"):
        load_spec(raw)


@pytest.mark.slow
def test_sweep_scores_the_files_and_a_missing_file_fails_only_its_sample(ray_session, tmp_path):
    from editsweep.bench.runner import run_sweep
    from editsweep.bench.store import RunStore

    outs = tmp_path / "outs"
    outs.mkdir()
    ext = {
        ("syn-0000", 0): ".png",
        ("syn-0000", 1): ".jpg",
        ("syn-0001", 0): ".webp",
        ("syn-0002", 0): ".png",
        ("syn-0002", 1): ".png",
    }  # syn-0001 seed 1 is missing
    for i, ((sample_id, seed), suffix) in enumerate(ext.items()):
        write_image(outs / f"{sample_id}_{seed}{suffix}", i)
    raw = _raw(str(outs), pattern="{sample_id}_{seed}")
    raw["datasets"][0]["params"]["n"] = 3
    spec = load_spec({**raw, "seeds": [0, 1], "execution": {"workers": 1, "batch_size": 4}})
    summary = run_sweep(spec, tmp_path / "run", progress=False)
    assert (summary.n_tasks, summary.n_ok, summary.n_error) == (6, 5, 1)

    rows = RunStore(str(tmp_path / "run")).read_results().set_index(["sample_id", "seed"])
    error = rows.loc[("syn-0001", 1)]
    assert error["status"] == "error" and str(outs / "syn-0001_1.png") in error["error"]
    for (sample_id, seed), suffix in ext.items():
        row = rows.loc[(sample_id, seed)]
        assert row["status"] == "ok"
        stored = np.asarray(Image.open(tmp_path / "run" / row["image_path"]), dtype=np.float64) / 255
        expected = np.asarray(fit_square(load_rgb(outs / f"{sample_id}_{seed}{suffix}"), 64), dtype=np.float64) / 255
        assert np.array_equal(stored, expected)
        source = np.asarray(Image.open(tmp_path / "run" / row["input_path"]), dtype=np.float64) / 255
        psnr = 10 * np.log10(1 / np.mean((stored - source) ** 2))
        assert row["scores"]["psnr"] == pytest.approx(psnr, abs=1e-3)
