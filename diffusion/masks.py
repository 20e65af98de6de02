"""Object masks for mask-driven methods (LayerDiffusion): a (B, h, w) float mask, 1 = object.

Each sample's mask comes from, in order:
1. the dataset: `sample.meta["mask"]`, a (H, W) boolean numpy array at the dataset image's original
   resolution (1 = edited/object region), brought to the mask size by `fit_square_mask` (the
   image's center crop, nearest-neighbour resize);
2. the configured provider, for the samples the dataset left without one:
   - `attention` (offline default): the cross-attention map of the object word, averaged over heads,
     over the cross-attention layers at P2P's mask resolution (16x16 on SD at 512 px) and over every
     step of a DDIM inversion of the input (guidance 1, a prompt holding the word), upsampled to the
     mask size, min-max normalised per image and binarised at `threshold`. The maps are recorded by `AttentionRecorder` through `P2PAttnProcessor` on the
     cross-attention layers only; self-attention keeps the UNet's own processors;
   - `clipseg`: a text-prompted segmentation model loaded by Hub id or local folder through
     transformers (default `CIDAS/clipseg-rd64-refined`) with the object word as its prompt; the
     sigmoid of its logits is binarised at `threshold`. CLIPSeg rather than SAM because it takes the
     word itself as the prompt; SAM would need points or boxes derived from another mask.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from editsweep.datasets.base import Sample
from editsweep.datasets.images import fit_square_mask
from editsweep.diffusion.attention import AttentionRecorder, P2PAttnProcessor
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.ddim import ddim_invert, make_schedule
from editsweep.diffusion.inputs import images_tensor
from editsweep.diffusion.p2p import attention_map_tokens
from editsweep.diffusion.prompt_alignment import word_positions

MaskProvider = Literal["attention", "clipseg"]
CLIPSEG_MODEL = "CIDAS/clipseg-rd64-refined"

# Words never taken as the object when it is inferred from the prompts: articles, prepositions and
# the "a photo of" framing that source and target prompts share without naming anything in the image.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to with and or for from by into onto over under is are its their his her "
    "photo image picture".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


class MaskError(ValueError):
    """A mask cannot be made: bad dataset mask, no object word, or a model that cannot be loaded."""


def require_dataset_masks(method: str, samples: Sequence[Sample]) -> None:
    """Raise `MaskError` naming the samples without `meta["mask"]`, for a method run with `mask: dataset`."""
    if missing := [s.id for s in samples if s.meta.get("mask") is None]:
        raise MaskError(
            f"{method} with mask: dataset needs each sample's meta['mask']; samples {missing} have none "
            "(this dataset gives no edit masks: use `mask: diffedit` in the invert params)"
        )


def prompt_words(prompt: str | None) -> list[str]:
    """The lower-cased words of a prompt, punctuation dropped."""
    return _WORD.findall((prompt or "").lower())


def object_word(sample: Sample, configured: str | None = None) -> str:
    """The word naming the object: `sample.meta["object_word"]` if present, else `configured` (a
    method parameter), else the last word of the target prompt that also occurs in the source
    prompt, function words ("a", "of", "photo"...) skipped. Raises `MaskError` when none is found."""
    if sample.meta.get("object_word"):
        return str(sample.meta["object_word"]).lower()
    if configured:
        return configured.lower()
    source = set(prompt_words(sample.source_prompt)) - FUNCTION_WORDS
    shared = [w for w in prompt_words(sample.target_prompt) if w in source]
    if not shared:
        raise MaskError(
            f"sample {sample.id!r}: no object word for its mask (the target prompt "
            f"{sample.target_prompt!r} shares no content word with the source prompt {sample.source_prompt!r}); "
            "set `object_word` in the method's invert parameters, or give the sample meta['object_word'] "
            "or meta['mask']"
        )
    return shared[-1]


def dataset_mask(sample: Sample, size: tuple[int, int]) -> torch.Tensor | None:
    """The sample's own mask at the square `size` (h, w) as a float tensor, or None when it has none."""
    mask = sample.meta.get("mask")
    if mask is None:
        return None
    array = np.asarray(mask)
    if array.ndim != 2 or not (array.dtype == bool or np.isin(array, (0, 1)).all()):
        raise MaskError(
            f"sample {sample.id!r}: meta['mask'] must be a (H, W) boolean array at the image's original "
            f"resolution (1 = object), got dtype {array.dtype} and shape {array.shape}"
        )
    # The same center crop as `fit_square` applies to the image, so mask and image stay aligned.
    return torch.from_numpy(fit_square_mask(array, size[0]).astype(np.float32))


def object_masks(
    backbone: Backbone,
    samples: Sequence[Sample],
    latents: torch.Tensor,
    provider: MaskProvider = "attention",
    threshold: float = 0.5,
    word: str | None = None,
    steps: int = 20,
    segmentation_model: str = CLIPSEG_MODEL,
) -> torch.Tensor:
    """(B, h, w) 0/1 masks at the latent size: the dataset's where given, else the provider's.

    `latents` are the inputs' (B, C, h, w) latents (the attention provider inverts them).
    """
    size = tuple(latents.shape[-2:])
    masks = [dataset_mask(s, size) for s in samples]
    missing = [i for i, m in enumerate(masks) if m is None]
    if missing:
        todo = [samples[i] for i in missing]
        words = [object_word(s, word) for s in todo]
        if provider == "attention":
            made = attention_masks(backbone, todo, latents[missing], words, threshold, steps)
        elif provider == "clipseg":
            images = images_tensor(todo, backbone.device)
            made = clipseg_masks(images, words, size, threshold, segmentation_model)
        else:
            raise MaskError(f"unknown mask provider {provider!r}: use 'attention' or 'clipseg'")
        for i, m in zip(missing, made, strict=True):
            masks[i] = m
    return torch.stack([m.to(latents.device) for m in masks])


def word_map(maps: Sequence[torch.Tensor], positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w): per layer, the head-averaged maps (B, heads, queries, L) of the token `positions`
    (B, L) summed, upsampled to `size`; averaged over the layers."""
    total = torch.zeros(len(positions), *size, device=positions.device)
    for probs in maps:
        probs = probs.float().mean(1)
        side = int(round(probs.shape[1] ** 0.5))
        word = (probs * positions[:, None]).sum(-1).view(-1, 1, side, side)
        total += F.interpolate(word, size=size, mode="bilinear", align_corners=False)[:, 0]
    return total / max(1, len(maps))


@contextmanager
def recording_cross_attention(backbone: Backbone) -> Iterator[AttentionRecorder]:
    """Record the cross-attention maps at P2P's mask resolution (`attention_map_tokens`: 16x16 on SD
    at 512 px) of every UNet call in the block; restores the processors."""
    unet = backbone.unet
    original = unet.attn_processors
    recorder = AttentionRecorder(map_tokens=attention_map_tokens(backbone))
    # Only cross-attention ("attn2") layers materialise their maps; self-attention keeps SDPA.
    unet.set_attn_processor(
        {name: P2PAttnProcessor(recorder) if ".attn2." in name else proc for name, proc in original.items()}
    )
    try:
        yield recorder
    finally:
        unet.set_attn_processor(original)


@torch.no_grad()
def attention_maps(
    backbone: Backbone, samples: Sequence[Sample], latents: torch.Tensor, words: Sequence[str], steps: int
) -> torch.Tensor:
    """(B, h, w) cross-attention maps of each sample's word over a DDIM inversion of its latents,
    min-max normalised to [0, 1] per image (a map that is nearly flat still spans the range, so the
    threshold separates its stronger half from the rest instead of keeping everything)."""
    prompts = []
    positions = torch.zeros(len(samples), backbone.tokenizer.model_max_length, device=latents.device)
    for i, (sample, word) in enumerate(zip(samples, words, strict=True)):
        prompt = next(
            (p for p in (sample.source_prompt, sample.target_prompt) if p and word in prompt_words(p)), None
        )
        found = word_positions(backbone.tokenizer, prompt, word) if prompt else []
        if not found:
            raise MaskError(
                f"sample {sample.id!r}: the object word {word!r} is in neither its source prompt "
                f"{sample.source_prompt!r} nor its target prompt {sample.target_prompt!r}; the attention "
                "mask needs a prompt that names the object (or give meta['mask'])"
            )
        prompts.append(prompt)
        positions[i, found] = 1.0
    cond = backbone.encode_text(prompts)
    with recording_cross_attention(backbone) as recorder:
        ddim_invert(backbone, latents, make_schedule(backbone, steps), cond)
    maps = word_map(recorder.take(), positions, tuple(latents.shape[-2:])).flatten(1)
    low, high = maps.amin(1, keepdim=True), maps.amax(1, keepdim=True)
    return ((maps - low) / (high - low).clamp_min(1e-12)).view(-1, *latents.shape[-2:])


def attention_masks(
    backbone: Backbone,
    samples: Sequence[Sample],
    latents: torch.Tensor,
    words: Sequence[str],
    threshold: float,
    steps: int,
) -> torch.Tensor:
    """(B, h, w) 0/1 masks: the normalised word maps above `threshold`."""
    return (attention_maps(backbone, samples, latents, words, steps) > threshold).float()


@functools.lru_cache(maxsize=2)
def load_clipseg(model: str, device: str) -> tuple[object, torch.nn.Module]:
    """CLIPSeg's processor and model from a Hub id or local folder, loaded once per worker."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    try:
        processor = CLIPSegProcessor.from_pretrained(model)
        network = CLIPSegForImageSegmentation.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise MaskError(
            f"cannot load the segmentation model {model!r} for the clipseg mask provider ({e.__class__.__name__}). "
            f"Download it while online (`huggingface-cli download {model}`, then it is read from the HF cache), "
            "or pass `segmentation_model: <local folder with its config, processor files and safetensors>`, "
            "or use `mask_provider: attention` (offline)"
        ) from e
    return processor, network.to(device).eval()


@torch.no_grad()
def clipseg_masks(
    images: torch.Tensor, words: Sequence[str], size: tuple[int, int], threshold: float, model: str = CLIPSEG_MODEL
) -> torch.Tensor:
    """(B, h, w) 0/1 masks: CLIPSeg prompted with each word, sigmoid above `threshold`, resized."""
    processor, network = load_clipseg(model, str(images.device))
    pixels = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    inputs = processor(text=list(words), images=list(pixels), padding=True, truncation=True, return_tensors="pt")
    inputs = inputs.to(images.device)
    logits = network(**inputs).logits.float()
    logits = logits.view(len(words), 1, *logits.shape[-2:])
    probs = F.interpolate(logits.sigmoid(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return (probs > threshold).float()
