"""Where pretrained weights come from: the Hugging Face Hub's offline switch and cache folder.

Read at call time, not at import time (huggingface_hub's constants are frozen when it is imported),
so that every loader - backbone, image encoder, scorers - agrees on whether it may download.
"""

from __future__ import annotations

import os


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
