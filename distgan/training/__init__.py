"""Training as small parts: state, step, graph, checkpoint, run directory, signals, actions, and the loop."""

from distgan.training.errors import TrainingError
from distgan.training.loop import train

__all__ = ["TrainingError", "train"]
