"""The one error type of the training package: the run cannot go on, and the message says why and what to do."""


class TrainingError(RuntimeError):
    """The run cannot go on (too many non-finite steps, a config that differs from the run's, a lost rank).

    `every_rank`: raised alike on every rank, so rank 0 alone reports it; False for what one rank alone
    knows (that its peer is gone), which that rank reports."""

    def __init__(self, message: str, every_rank: bool = True):
        super().__init__(message)
        self.every_rank = every_rank
