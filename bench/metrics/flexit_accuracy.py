"""FlexIT's classifier accuracy: does a DeiT-B distilled 384 classifier see the target class in the edit?

As in FlexIT's eval.py: each edit is resized (short side 384, bilinear) and center-cropped to 384;
the classifier's logits (mean of the class and distillation heads, as the distilled DeiT predicts
in eval mode) are restricted to the target classes of the query list and their argmax is the
prediction. "accuracy" is 1 when it is the query's target class, "unedited" 1 when it is the source
class; the report's means times 100 are FlexIT's "%Correctly edited" and "% Unedited (DeiT)".
The target classes come from each sample's meta (`target_classes`, `target_id`, `source_id`;
the `imagenet` dataset provides them).

Quirk named here: eval.py defines the ImageNet mean/std normalisation but the visible code does not
apply it (its `batch_forward` helper is not in the published snapshot). DeiT was trained with it,
so `imagenet_normalize: true` is the default; set it to false to feed [0, 1] pixels instead.

Weights: `facebook/deit-base-distilled-patch16-384` through transformers (HF cache or download; a
local folder works too); offline and uncached, an error names the model and how to fetch it.
"random" builds a tiny seeded DeiT (64 px, 1000 classes) for tests.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pydantic import Field

from editsweep.bench.metrics.base import MetricInfo, ScoreBatch, Scorer, ScorerParams, ScorerWeightsError, register_scorer
from editsweep.bench.metrics.inception import resize_center_crop
from editsweep.core.hub import hf_offline
from editsweep.datasets.base import Sample

MODEL_ID = "facebook/deit-base-distilled-patch16-384"
RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FlexitAccuracyParams(ScorerParams):
    """`weights`: "pretrained" (`model` from the HF hub or cache), a local model folder, or "random"."""

    model: str = Field(MODEL_ID, description="Hub id of the distilled DeiT classifier")
    imagenet_normalize: bool = Field(True, description="ImageNet mean/std normalisation before the classifier")
    batch_size: int = Field(32, ge=1, description="images per forward pass")


def _tiny_deit() -> torch.nn.Module:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1000,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return DeiTForImageClassificationWithTeacher(config)


def _load_deit(name: str) -> torch.nn.Module:
    """The distilled DeiT from a Hub id or a local folder; ScorerWeightsError naming it when unavailable."""
    from transformers import DeiTForImageClassificationWithTeacher

    try:
        return DeiTForImageClassificationWithTeacher.from_pretrained(name)
    except (OSError, ValueError) as e:
        offline = hf_offline()
        raise ScorerWeightsError(
            f"flexit_accuracy cannot load the DeiT classifier {name!r}"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {e}. Provide it: on a connected machine run "
            f"`hf download {MODEL_ID}` with the same HF_HOME, or set `weights:` to a local folder with its "
            "config.json and model.safetensors; `weights: random` gives uncomparable scores for smoke tests."
        ) from e


@register_scorer
class FlexitAccuracyScorer(Scorer):
    """FlexIT accuracy: DeiT-B distilled 384 argmax over the target classes equals the target (1/0)."""

    name = "flexit_accuracy"
    columns = {
        "accuracy": MetricInfo("Accuracy (DeiT)", True, "more on-target"),
        "unedited": MetricInfo("Unedited (DeiT)", False, "more edited"),
    }
    Params = FlexitAccuracyParams

    def __init__(self, params: FlexitAccuracyParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        p: FlexitAccuracyParams = self.params
        if p.weights == "random":
            model, self._source = _tiny_deit(), "tiny-deit:random"
        elif p.weights == "pretrained":
            model, self._source = _load_deit(p.model), p.model
        else:
            model, self._source = _load_deit(os.path.expanduser(p.weights)), p.weights
        self.model = model.to(device).eval()
        self.size = int(self.model.config.image_size)
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @property
    def weights_source(self) -> str:
        """The Hub id, the local folder, or 'tiny-deit:random'."""
        return self._source

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1000) logits of a (N,3,H,W) [0,1] batch after resize + center crop to the model's size."""
        out = []
        for chunk in images.split(self.params.batch_size):
            x = resize_center_crop(chunk.to(self.device, torch.float32), self.size)
            if self.params.imagenet_normalize:
                x = (x - self._mean) / self._std
            out.append(self.model(pixel_values=x).logits.float().cpu())
        return torch.cat(out)

    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """Per image: "accuracy" (restricted argmax == target) and "unedited" (== source)."""
        for s in samples:
            missing = [k for k in ("target_id", "source_id", "target_classes") if k not in s.meta]
            if missing:
                raise ValueError(
                    f"flexit_accuracy needs class ids in the sample's meta ({', '.join(missing)} missing for sample "
                    f"{s.id!r}): use it with the imagenet dataset"
                )
        logits = self.logits(edited)
        classes = torch.tensor(samples[0].meta["target_classes"], dtype=torch.long)
        if any(tuple(s.meta["target_classes"]) != tuple(samples[0].meta["target_classes"]) for s in samples):
            raise ValueError("flexit_accuracy: the samples of one batch restrict the argmax to different class sets")
        predicted = classes[logits[:, classes].argmax(dim=-1)]
        target = torch.tensor([int(s.meta["target_id"]) for s in samples])
        source = torch.tensor([int(s.meta["source_id"]) for s in samples])
        return ScoreBatch(scores={"accuracy": (predicted == target).float(), "unedited": (predicted == source).float()})
