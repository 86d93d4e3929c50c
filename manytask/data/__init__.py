"""Data sources; each module registers loaders that return a MultiTaskData."""
from .base import MultiTaskData, PackedRows, Split, batches, combine, random_split_indices

__all__ = ["MultiTaskData", "PackedRows", "Split", "batches", "combine", "random_split_indices"]
