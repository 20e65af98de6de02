"""Benchmark datasets, each one registered module (importing this package registers them)."""

from editsweep.datasets import coco, imagenet, pie_bench, shapes, synthetic, tedbench  # noqa: F401  (registration side effect)
from editsweep.datasets.base import DATASETS, Dataset, DatasetError, Sample, get_dataset_class, register_dataset

__all__ = ["DATASETS", "Dataset", "DatasetError", "Sample", "get_dataset_class", "register_dataset"]
