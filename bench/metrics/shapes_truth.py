"""`shapes_truth`: scores of an edit against the toy world's ground truth (`datasets/shapes.py`).

For samples whose meta carries the ground truth of the `shapes` dataset ("target_image",
"mask", "target_scene", "source_scene", "edit_type", "edited_object"), four scores per image:

- "gt_psnr": PSNR (dB, data_range 1, torchmetrics) of the edit against the target render; +inf
  where they are identical;
- "gt_lpips": LPIPS of the edit against the target render, with the `lpips` scorer's model and
  weights (`net`, default alex, and `weights` as in `bench/metrics/lpips_distance.py`);
- "outside_psnr": PSNR against the source image computed on the pixels outside the edit mask only
  (their mean squared error, not the whole image with the mask zeroed as `pie_unedited` does);
  +inf where they are unchanged, NaN where the mask covers the whole image;
- "attr_acc": 1.0 when the pixel detector (`toy/detector.py`) reads the edit's target attribute
  on the edited image, else 0.0: colour / shape / size -> an object of the target colour / the
  object's colour with the target shape / with the target size, at the edited object's position;
  move -> an object of its colour at the new position and none at the old; add -> an object of
  the new colour at the new position; remove -> no object at the removed one's position;
  background -> the target background colour(s) (a gradient's two ends in either order).

Targets and masks are brought to the scored images' size the way the worker brings the input
there: centre crop to a square, then LANCZOS for the target (`fit_square`) and nearest for the
mask (`fit_square_mask`), as `pie_bench.edit_masks` does.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from editsweep.bench.metrics.base import MetricInfo, ScoreBatch, Scorer, ScorerParams, register_scorer
from editsweep.bench.metrics.lpips_distance import LpipsScorer
from editsweep.datasets.base import Sample
from editsweep.datasets.images import fit_square, fit_square_mask
from editsweep.datasets.shapes import scene_from_dict
from editsweep.toy import world
from editsweep.toy.detector import Detection, detect

SCORES = ("gt_psnr", "gt_lpips", "outside_psnr", "attr_acc")
_META_KEYS = ("target_image", "mask", "target_scene", "source_scene", "edit_type", "edited_object")


class ShapesTruthParams(ScorerParams):
    """The LPIPS backbone `net` and its `weights` (pretrained, random or a path), as the `lpips` scorer."""

    net: Literal["alex", "vgg", "squeeze"] = "alex"


@register_scorer
class ShapesTruthScorer(Scorer):
    """Distance to the ground-truth target, preservation outside the mask, and attribute accuracy."""

    name = "shapes_truth"
    columns = {
        "gt_psnr": MetricInfo("PSNR to ground truth", True, "closer to the target"),
        "gt_lpips": MetricInfo("LPIPS to ground truth", False, "closer to the target"),
        "outside_psnr": MetricInfo("PSNR outside the mask", True, "more faithful"),
        "attr_acc": MetricInfo("Attribute accuracy", True, "more on-target"),
    }
    Params = ShapesTruthParams
    params: ShapesTruthParams

    def __init__(self, params: ShapesTruthParams | dict[str, Any] | None, device: torch.device) -> None:
        super().__init__(params, device)
        self._lpips = LpipsScorer({"net": self.params.net, "weights": self.params.weights}, device)

    @property
    def weights_source(self) -> str:
        """The LPIPS backbone, e.g. 'alex:/path/alexnet-owt-7be5be79.pth' (the other scores have no weights)."""
        return self._lpips.weights_source

    @torch.no_grad()
    def score(self, edited: torch.Tensor, sources: torch.Tensor, samples: list[Sample]) -> ScoreBatch:
        """The four scores per image (see the module docstring)."""
        from torchmetrics.functional.image import peak_signal_noise_ratio

        height, width = edited.shape[-2:]
        if height != width:
            raise ValueError(f"{self.name} scores square images (the toy world's); got {width}x{height}")
        truths = [_ground_truth(sample, self.name) for sample in samples]
        a = edited.to(self.device, torch.float32)
        b = sources.to(self.device, torch.float32)
        targets = torch.stack([_target_tensor(t["target_image"], height) for t in truths]).to(self.device)
        keep = torch.stack([torch.from_numpy(~fit_square_mask(t["mask"], height)) for t in truths])
        keep = keep.unsqueeze(1).to(self.device, torch.float32)
        squared = ((a - b) ** 2 * keep).sum(dim=(1, 2, 3))
        count = keep.sum(dim=(1, 2, 3)) * a.shape[1]
        outside = 10 * torch.log10(count / squared)  # 1 / MSE: +inf where unchanged, NaN where no pixel is outside
        outside = outside.masked_fill(count == 0, float("nan"))
        accuracy = torch.tensor([float(attribute_reached(detect(image), truth)) for image, truth in zip(a.cpu(), truths)])
        scores = {
            "gt_psnr": peak_signal_noise_ratio(a, targets, data_range=1.0, reduction="none", dim=(1, 2, 3)),
            "gt_lpips": self._lpips.model(a, targets, normalize=True).flatten(),
            "outside_psnr": outside,
            "attr_acc": accuracy,
        }
        return ScoreBatch(scores={k: v.float().cpu() for k, v in scores.items()})


def attribute_reached(found: Detection, truth: dict[str, Any]) -> bool:
    """Whether `found` (the detection on an edited image) shows the edit's target attribute."""
    edit_type = truth["edit_type"]
    target, source = scene_from_dict(truth["target_scene"]), scene_from_dict(truth["source_scene"])
    if edit_type == "background":
        return set(found.background) == set(target.background)
    index = truth["edited_object"]
    if edit_type == "remove":
        return not found.at(source.objects[index].position)
    goal = target.objects[index]
    there = found.at(goal.position)
    if edit_type in ("color", "add"):
        return any(o.color == goal.color for o in there)
    if edit_type == "shape":
        return any(o.color == goal.color and o.shape == goal.shape for o in there)
    if edit_type == "size":
        return any(o.color == goal.color and o.size == goal.size for o in there)
    if edit_type == "move":
        old = source.objects[index].position
        return any(o.color == goal.color for o in there) and not any(o.color == goal.color for o in found.at(old))
    raise ValueError(f"unknown edit type {edit_type!r}; the world's edit types are {', '.join(world.EDIT_TYPES)}")


def _ground_truth(sample: Sample, scorer: str) -> dict[str, Any]:
    """The sample's ground-truth meta entries, or ValueError naming the sample and what it lacks."""
    meta = sample.meta
    missing = [k for k in _META_KEYS if k not in meta]
    target, mask = meta.get("target_image"), meta.get("mask")
    if not missing and not (isinstance(target, np.ndarray) and target.ndim == 3 and target.shape[-1] == 3):
        missing.append("target_image as an (H, W, 3) uint8 array")
    if not missing and not (isinstance(mask, np.ndarray) and mask.ndim == 2):
        missing.append("mask as an (H, W) bool array")
    if missing:
        raise ValueError(
            f"{scorer} needs the toy world's ground truth in the sample's meta; sample {sample.id!r} lacks "
            f"{', '.join(missing)}: use it with the shapes dataset"
        )
    return meta


def _target_tensor(target: np.ndarray, size: int) -> torch.Tensor:
    """The target render as a (3, size, size) tensor in [0, 1], brought to size as the worker brings inputs."""
    image = fit_square(Image.fromarray(np.asarray(target, dtype=np.uint8), "RGB"), size)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
