"""Image-classification data: named datasets, ImageFolder trees and Parquet, decoded once into memory.

``load_splits`` gives fixed-seed train/val/test splits; ``BatchLoader`` yields normalised, batch-augmented tensors.
"""

from fractal_space.data.loader import (
    AUGMENTS,
    BatchLoader,
    DataSplits,
    Normalize,
    augment_batch,
    auto_val_size,
    load_splits,
)
from fractal_space.data.sources import (
    NAMED,
    DataError,
    DataNotFoundError,
    ImageSet,
    cache_dir,
    check_dataset_spec,
    load_split,
    parquet_with_test_subset,
    resolve_data_root,
)

__all__ = [
    "AUGMENTS",
    "NAMED",
    "BatchLoader",
    "DataError",
    "DataNotFoundError",
    "DataSplits",
    "ImageSet",
    "Normalize",
    "augment_batch",
    "auto_val_size",
    "cache_dir",
    "check_dataset_spec",
    "load_split",
    "load_splits",
    "parquet_with_test_subset",
    "resolve_data_root",
]
