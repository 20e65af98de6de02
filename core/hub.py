"""Where pretrained weights come from: the Hugging Face Hub's offline switch and cache folder.

Read at call time, not at import time (huggingface_hub's constants are frozen when it is imported),
so that every loader - backbone, image encoder, scorers - agrees on whether it may download.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WeightsError(RuntimeError):
    """Model weights are not available or do not load: the message names them and how to provide them."""


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now (not at import time)."""
    from huggingface_hub import constants as hf_constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return hf_constants.HF_HUB_OFFLINE or value.upper() in {"1", "ON", "YES", "TRUE"}


def hf_cache_dir() -> str:
    """The hub cache folder that huggingface_hub would use given the current environment."""
    from huggingface_hub import constants as hf_constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return hf_constants.HF_HUB_CACHE


def load_cache_first(
    source: str,
    load: Callable[[str, bool], T],
    missing: Callable[[bool], str],
    error: type[Exception] = RuntimeError,
) -> T:
    """`load(path_or_id, local_files_only)` of a local folder or Hub id: the cache first (instant;
    offline a network attempt only adds retries), then the Hub when allowed. When neither works it
    raises `error` with `missing(is_folder)`, a message naming the model and how to provide it."""
    local = Path(source).expanduser()
    src = str(local) if local.exists() else source
    with contextlib.suppress(OSError, ValueError):
        return load(src, True)
    if local.exists() or hf_offline():
        raise error(missing(local.exists()))
    try:
        return load(src, False)
    except (OSError, ValueError) as err:
        raise error(f"{missing(False)}\ncause: {err}") from err
