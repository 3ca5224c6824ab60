"""The one error type of the training package: the run cannot go on, and the message says why and what to do."""


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite steps, a config that differs from the run's, a lost rank)."""
