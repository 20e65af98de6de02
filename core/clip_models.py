"""open_clip models by name, shared by the CLIP scorers (bench/metrics/) and the methods that
train or guide with CLIP (diffusion/clip_guidance.py).

A pretrained (architecture, tag) resolves the tag's Hugging Face Hub file in the local cache first
and fails fast offline (open_clip itself would retry the download for ~46 s), safetensors first; a
local checkpoint file or open_clip folder (`open_clip_config.json` + weights) loads as given; the
toy CLIP ships with the package (toy/weights/clip). open_clip and huggingface_hub are imported on
use (importing open_clip takes ~15 s on CPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from editsweep.core.hub import WeightsError, hf_cache_dir, hf_offline

_LOCAL_DIR = "local-dir:"
_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # open_clip's default hub file name
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # and its safetensors alternative


def _candidate_files(filename: str) -> list[str]:
    """The hub file names open_clip would try for a tag, safetensors alternative first."""
    if filename == _HF_WEIGHTS_NAME:
        return [_HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def open_clip_tag_kwargs(model: str, tag: str) -> dict[str, Any]:
    """`create_model` keywords that make any weights for `model` behave like the tag's.

    The tag says how its weights were trained: QuickGELU (e.g. ViT-L-14:openai, which the plain
    ViT-L-14 config lacks) and preprocessing; use it for files and random weights as well.
    """
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    return {
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
        "force_preprocess_cfg": {k: tag_cfg[k] for k in _TAG_PREPROCESS_KEYS if k in tag_cfg},
    }


def resolve_pretrained_checkpoint(model: str, tag: str, scorer: str = "CLIP-T") -> str:
    """Local path of the checkpoint for an open_clip (model, tag): from the HF cache, or downloaded.

    `scorer` names who needs the weights in the error message.

    Raises `WeightsError` at once when the file is not cached and HF_HUB_OFFLINE is set,
    and after the first connection failure otherwise.
    """
    import open_clip
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise WeightsError(f"open_clip has no pretrained tag {tag!r} for model {model!r} (known tags: {known})")
    if not cfg.get("hf_hub"):
        raise WeightsError(f"open_clip tag {model}:{tag} has no hub entry; set weights: /path/to/file")
    repo_id, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" means open_clip's default file name
    candidates = _candidate_files(filename or _HF_WEIGHTS_NAME)
    cache_dir = hf_cache_dir()
    for name in candidates:
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            return cached

    def missing(reason: str) -> WeightsError:
        return WeightsError(
            f"{scorer} weights for open_clip {model}:{tag} are not available ({reason}): none of "
            f"{', '.join(candidates)} from hub repo {repo_id} is in the HF cache {cache_dir}. Provide them: "
            f"on a connected machine run `hf download {repo_id} {candidates[0]}` (or {candidates[-1]}) with the "
            f"same HF_HOME/HF_HUB_CACHE, or copy the file here and set the scorer's "
            f"`weights: /path/to/open_clip_weights.safetensors|.bin` (or a local-dir folder with "
            f"open_clip_config.json + weights); `weights: random` gives uncomparable scores for smoke tests."
        )

    if hf_offline():
        raise missing("HF_HUB_OFFLINE is set")
    error: Exception | None = None
    for name in candidates:
        try:
            return hf_hub_download(repo_id, name, cache_dir=cache_dir)
        except LocalEntryNotFoundError as exc:  # no connection: the other names would fail the same way
            raise missing(f"download failed: {exc}") from exc
        except (HfHubHTTPError, EntryNotFoundError) as exc:  # the hub answered "not here": try the next name
            error = exc
        except OSError as exc:
            raise missing(f"download failed: {exc}") from exc
    raise missing(f"download failed: {error}") from error


TOY_CLIP_SOURCE = "toy:clip"


def toy_clip_dir() -> Path:
    """The toy CLIP's open_clip folder, shipped with the package (trained by `toy/train.py`)."""
    from editsweep.toy.models import CLIP_FOLDER, WEIGHTS_DIR

    return WEIGHTS_DIR / CLIP_FOLDER


def _local_dir(weights: str) -> Path | None:
    """The folder when `weights` names an open_clip model folder, else None."""
    path = Path(weights.removeprefix(_LOCAL_DIR)).expanduser()
    return path if weights.startswith(_LOCAL_DIR) or path.is_dir() else None


def load_local_clip(
    model_name: str, weights: str, tag_kwargs: dict[str, Any], scorer: str = "CLIP-T"
) -> tuple[torch.nn.Module, str, str]:
    """(model, weights_source, tokenizer name) from a local checkpoint file or open_clip folder."""
    import open_clip

    local_dir = _local_dir(weights)
    if local_dir is not None:
        if not (local_dir / "open_clip_config.json").is_file():
            raise WeightsError(f"{scorer} weights folder {local_dir} has no open_clip_config.json")
        name, kwargs, source = f"{_LOCAL_DIR}{local_dir}", {}, f"{_LOCAL_DIR}{local_dir}"
    else:
        checkpoint = str(Path(weights).expanduser())
        if not os.path.isfile(checkpoint):
            raise WeightsError(f"{scorer} weights file {checkpoint} does not exist (weights: {weights!r})")
        name, kwargs, source = model_name, {"pretrained": checkpoint, **tag_kwargs}, f"{model_name}:{checkpoint}"
    try:
        model = open_clip.create_model(name, require_pretrained=True, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:
        raise WeightsError(f"{scorer} weights {source} cannot be loaded into open_clip: {exc}") from exc
    return model, source, name
