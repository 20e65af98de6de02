"""Test-only methods for the driver's fault handling (tests/bench/test_runner_faults.py).

- `runner_hang`: copy whose inversion never returns on chosen samples (a hung method), optionally
  only while a flag file exists (so a retry on a fresh actor can succeed).
"""

from __future__ import annotations

import time
from pathlib import Path

from editsweep.methods.base import Params, register_method
from editsweep.methods.copy_input import Copy


class HangParams(Params):
    samples: list[str] = []
    flag_file: str = ""  # when set, hang only while this file exists
    once: bool = False  # remove the flag file when the hang starts: the retry runs normally


@register_method
class RunnerHang(Copy):
    name = "runner_hang"
    InvertParams = HangParams

    def invert(self, backbone, samples, params, generators, seeds=None):
        armed = not params.flag_file or Path(params.flag_file).exists()
        if armed and any(s.id in params.samples for s in samples):
            if params.once:
                Path(params.flag_file).unlink()
            while True:  # a method that never returns
                time.sleep(60)
        return super().invert(backbone, samples, params, generators, seeds)
