"""Test-only methods, loaded through a spec's `imports:` like any user plugin.

- `counting_ddim`: ddim_edit that records every sample it inverts (in-process tests read it);
- `together_ddim`: ddim_edit with `edit_points_together`, recording the points of each edit call;
- `faulty`: copy that misbehaves on chosen samples: raises, returns NaN, or kills its process
  (optionally only while a flag file exists, which lets a test "repair" the fault between runs);
- `misbehaving`: copy that breaks the output contract of `Method.edit` in a chosen way;
- `edit_fault`: copy whose `edit` raises whenever a chosen sample is in the batch (at chosen points).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from editsweep.methods.base import Params, register_method
from editsweep.methods.copy_input import Copy
from editsweep.methods.ddim_edit import DDIMEdit

INVERTED: list[str] = []
EDIT_CALLS: list[int] = []  # edit points per `edit` call of `together_ddim`


@register_method
class CountingDDIM(DDIMEdit):
    name = "counting_ddim"

    def invert(self, backbone, samples, params, generators, seeds=None):
        INVERTED.extend(s.id for s in samples)
        return super().invert(backbone, samples, params, generators, seeds)


@register_method
class TogetherDDIM(DDIMEdit):
    """ddim_edit that asks for every edit point of a group in one call (as fine-tuning methods do)."""

    name = "together_ddim"
    edit_points_together = True

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        EDIT_CALLS.append(len(edit_params))
        return super().edit(backbone, state, samples, invert_params, edit_params, generators)


class FaultParams(Params):
    fault: str = "raise"  # raise | nan | exit
    samples: list[str] = []
    flag_file: str = ""  # when set, the fault happens only while this file exists
    once: bool = False  # remove the flag file when the fault fires


@register_method
class Faulty(Copy):
    name = "faulty"
    InvertParams = FaultParams

    def invert(self, backbone, samples, params, generators, seeds=None):
        hit = [s.id for s in samples if s.id in params.samples]
        armed = not params.flag_file or Path(params.flag_file).exists()
        if hit and armed:
            if params.once:
                Path(params.flag_file).unlink()
            if params.fault == "exit":
                os._exit(1)
            if params.fault == "raise":
                raise RuntimeError(f"injected failure on {hit}")
        return super().invert(backbone, samples, params, generators, seeds)

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        out = super().edit(backbone, state, samples, invert_params, edit_params, generators)
        if invert_params.fault == "nan":
            for images in out:
                for b, s in enumerate(samples):
                    if s.id in invert_params.samples:
                        images[b] = torch.nan
        return out


class MemoryParams(Params):
    max_points: int = 1  # more edit points than this in one call "runs out of GPU memory"


class PointParams(Params):
    k: int = 0  # only there to make a grid of edit points


@register_method
class MemoryHungry(Copy):
    name = "memory_hungry"
    InvertParams = MemoryParams
    EditParams = PointParams

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        if len(edit_params) > invert_params.max_points:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().edit(backbone, state, samples, invert_params, edit_params, generators)


class StubParams(Params):
    log: str  # one line appended per edited image: counts method executions across processes
    sleep_ms: int = 0  # controlled duration of each invert call
    kill_worker_at: list[int] = []  # the worker kills itself when the log reaches these counts
    kill_driver_at: int = 0  # ... and kills the driver (pid in `driver_pid_file`) at this count
    driver_pid_file: str = ""


def _once(marker: str) -> bool:
    """True for exactly one caller across processes (atomic exclusive create)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


@register_method
class Stub(Copy):
    """Copy with a controlled duration and scheduled process kills, for fault-injection tests."""

    name = "stub"
    InvertParams = StubParams

    def invert(self, backbone, samples, params, generators, seeds=None):
        import signal
        import time

        done = len(Path(params.log).read_text().splitlines()) if Path(params.log).exists() else 0
        for count in params.kill_worker_at:
            if done >= count and _once(f"{params.log}.worker-{count}"):
                os._exit(1)
        if params.kill_driver_at and done >= params.kill_driver_at and _once(f"{params.log}.driver"):
            os.kill(int(Path(params.driver_pid_file).read_text()), signal.SIGKILL)
        time.sleep(params.sleep_ms / 1000)
        return super().invert(backbone, samples, params, generators, seeds)

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        with open(invert_params.log, "a") as log:
            log.write("".join(f"{s.id}\n" for s in samples for _ in edit_params))
        return super().edit(backbone, state, samples, invert_params, edit_params, generators)


@register_method
class PointFault(Copy):
    """Copy whose edit raises whenever edit point k = 3 is asked for."""

    name = "point_fault"
    EditParams = PointParams

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        if any(p.k == 3 for p in edit_params):
            raise ValueError("injected failure at k=3")
        return super().edit(backbone, state, samples, invert_params, edit_params, generators)


class ContractParams(Params):
    # extra_image | extra_tensor | half_size | scale_255 | overshoot (within the worker's tolerance)
    output: str = "extra_image"


@register_method
class Misbehaving(Copy):
    """Copy that returns something other than one (B, 3, H, W) tensor in [0, 1] per edit point."""

    name = "misbehaving"
    InvertParams = ContractParams

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        out = super().edit(backbone, state, samples, invert_params, edit_params, generators)
        kind = invert_params.output
        if kind == "extra_image":
            return [torch.cat([images, images[:1]]) for images in out]
        if kind == "extra_tensor":
            return out + out[:1]
        if kind == "half_size":
            return [images[..., ::2, ::2] for images in out]
        if kind == "scale_255":
            return [images * 255 for images in out]
        if kind == "overshoot":
            return [torch.full_like(images, 1.0009) for images in out]
        raise ValueError(f"unknown output {kind!r}")


class SampleFaultParams(Params):  # scalars: a list in a spec's `invert:` is a grid axis
    sample: str = ""
    at_k: int = -1  # -1: every edit point


EDIT_LOG: list[tuple[tuple[str, ...], tuple[int, ...]]] = []  # (sample ids, ks) of every `edit_fault` call


@register_method
class EditFault(Copy):
    """Copy whose edit raises when a chosen sample is in the batch and a chosen point is asked for."""

    name = "edit_fault"
    InvertParams = SampleFaultParams
    EditParams = PointParams

    def edit(self, backbone, state, samples, invert_params, edit_params, generators):
        EDIT_LOG.append((tuple(s.id for s in samples), tuple(p.k for p in edit_params)))
        hit = [s.id for s in samples if s.id == invert_params.sample]
        at = invert_params.at_k == -1 or any(p.k == invert_params.at_k for p in edit_params)
        if hit and at:
            raise ValueError(f"injected edit failure on {hit}")
        return super().edit(backbone, state, samples, invert_params, edit_params, generators)
