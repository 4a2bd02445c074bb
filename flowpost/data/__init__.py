"""Datasets that need no download: toys, small image sets, and a user's own files.

Example:
    >>> from flowpost.data import DataConfig, load_data
    >>> split = load_data(DataConfig(name="mixture1d", n_train=100, n_heldout=50))
    >>> split.train.x.shape, split.heldout.x.shape
    (torch.Size([100, 1]), torch.Size([50, 1]))
"""

from flowpost.data.base import ArrayData, Batch, DataSpec
from flowpost.data.registry import DATASETS, DataConfig, DataSplit, load_data

__all__ = ["ArrayData", "Batch", "DataSpec", "DATASETS", "DataConfig", "DataSplit", "load_data"]
