"""The `Sample` type, the `Dataset` API and the dataset registry.

A dataset is one registered module: a `Dataset` subclass with a pydantic `Params` model, listing
its sample ids cheaply (for planning, on the driver) and loading one sample by id (on a worker).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict

from editsweep.core.registry import Registry


@dataclass
class Sample:
    """One editing query: an RGB input image, its prompts and protocol metadata."""

    id: str
    image: Image.Image
    target_prompt: str
    source_prompt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def sample_labels(sample: Sample) -> dict[str, str]:
    """The sample's scalar meta entries as strings, stored in every row so reports can group by
    them (PIE-Bench edit type, ImageNet target class); arrays such as masks are left out."""
    return {k: str(v) for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))}


class DatasetParams(BaseModel):
    """Base of every dataset's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetError(ValueError):
    """A dataset cannot be read: missing folder, corrupt file, missing prompt."""


class Dataset(ABC):
    """A benchmark dataset: ids for the planner, samples for the workers."""

    name: ClassVar[str]
    Params: ClassVar[type[DatasetParams]] = DatasetParams

    def __init__(self, params: DatasetParams | dict[str, Any] | None = None) -> None:
        self.params = params if isinstance(params, DatasetParams) else self.Params(**(params or {}))

    @abstractmethod
    def sample_ids(self) -> list[str]:
        """Every sample id, in a stable order (cheap: no image decoding)."""

    @abstractmethod
    def load(self, sample_id: str) -> Sample:
        """Load one sample; raise `DatasetError` naming the file when it cannot be read."""


DATASETS: Registry[type[Dataset]] = Registry("dataset")
register_dataset = DATASETS.register
get_dataset_class = DATASETS.__getitem__
