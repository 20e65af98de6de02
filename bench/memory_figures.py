"""Peak memory of one prompt encoding and one guided UNet step of an SD backbone, with and without
the memory options (diffusion/memory.py), for BENCHMARKS.md:

    python -m editsweep.bench.memory_figures --backbone sd-v1-arch [--device cuda]

On a GPU the peak is torch's own count of device memory (`torch.cuda.max_memory_allocated`). On a
CPU torch keeps no such count, so the resident set size of the process is sampled every 2 ms
(Linux `/proc/self/statm`) and the peak is reported above the size before the step; there the text
encoders are in host memory either way, so offloading them saves nothing, and what it saves on a
GPU is their weights (`text_encoder_bytes`).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from editsweep.diffusion.backbone import Backbone, load_backbone
from editsweep.diffusion.memory import MemoryOptions, apply_memory_options, text_encoders

CONFIGS = {
    "plain": MemoryOptions(),
    "offload_text_encoders": MemoryOptions(offload_text_encoders=True),
    "attention_slicing=auto": MemoryOptions(attention_slicing="auto"),
    "attention_slicing=max": MemoryOptions(attention_slicing="max"),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes(run: Callable[[], Any], device: torch.device) -> int:
    """Peak memory `run` adds on `device`: torch's allocator count on CUDA, sampled RSS on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    start, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss()) - start


def step(backbone: Backbone, batch: int) -> None:
    """Encode `batch` prompts and their empty prompts, then one classifier-free-guided UNet call."""
    with torch.no_grad():
        text = torch.cat([backbone.encode_text([""] * batch), backbone.encode_text(["a photo of a cat"] * batch)])
        side = backbone.unet.config.sample_size
        latents = torch.randn(2 * batch, 4, side, side, device=backbone.device, dtype=backbone.dtype)
        backbone.unet(latents, 500, encoder_hidden_states=text)


def measure(name: str, device: str, dtype: str, batch: int) -> dict[str, Any]:
    """Each configuration of `CONFIGS` on one loaded backbone: its peak bytes and seconds."""
    backbone = load_backbone(name, device, dtype)
    default_processors = backbone.unet.attn_processors
    step(backbone, batch)  # warm-up: first-call allocations are not the step's
    rows = {}
    for label, options in CONFIGS.items():
        backbone.unet.set_attn_processor(dict(default_processors))
        for encoder in text_encoders(backbone):
            encoder.to(backbone.device)
        apply_memory_options(backbone, options)
        t0 = time.perf_counter()
        peak = peak_bytes(lambda: step(backbone, batch), backbone.device)
        rows[label] = dict(peak_mib=round(peak / 2**20, 1), seconds=round(time.perf_counter() - t0, 2))
    weights = sum(p.numel() * p.element_size() for e in text_encoders(backbone) for p in e.parameters())
    return dict(backbone=name, device=str(backbone.device), dtype=dtype, batch=batch,
                text_encoder_bytes=weights, configs=rows)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="sd-v1-arch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=1, help="images; the UNet sees twice as many (guidance)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.backbone, args.device, args.dtype, args.batch), indent=2))


if __name__ == "__main__":
    main()
