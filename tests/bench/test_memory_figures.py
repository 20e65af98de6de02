"""The memory figures of BENCHMARKS.md (bench/memory_figures.py), run on `tiny`."""

from editsweep.bench.memory_figures import CONFIGS, measure, peak_bytes


def test_every_configuration_is_measured_on_one_backbone():
    figures = measure("tiny", "cpu", "float32", 1)
    assert set(figures["configs"]) == set(CONFIGS)
    assert figures["text_encoder_bytes"] == 4 * 1_600_672  # the tiny CLIP's parameters in float32
    assert all(row["peak_mib"] >= 0 and row["seconds"] > 0 for row in figures["configs"].values())


def test_the_cpu_peak_sees_an_allocation():
    import torch

    assert peak_bytes(lambda: torch.ones(64, 2**20).sum(), torch.device("cpu")) >= 200 * 2**20
