"""The neutral data pipeline: sources of numpy arrays, a seeded split and a resumable order."""

from crossframe.data.dataset import DataInfo, Dataset
from crossframe.data.loader import BatchLoader

__all__ = ["BatchLoader", "DataInfo", "Dataset"]
