"""The one training loop and the runner that sets a run up from a config."""

from crossframe.train.loop import Run

__all__ = ["Run"]
