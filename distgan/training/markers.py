"""A directory's stop request and outcome files, apart from any run machinery: the main trainer's run directory
(`run_dir.py`) and each of LAPGAN's level directories (`level_run.py`) take a STOP file and hold their outcome.

    STOP        made by a user or slurm/common.sh: stop at the next sync, with a checkpoint
    STOPPED     a start stopped cleanly before the end, its checkpoint written (the step in it)
    COMPLETED   a start reached train.steps (the step in it)
"""

from __future__ import annotations

from pathlib import Path

from distgan.runtime import write_atomically
from distgan.training.signals import StopSignals


class Markers:
    """STOP / STOPPED / COMPLETED of `path`; only the `is_main` rank reads STOP or writes the markers."""

    def __init__(self, path: Path, is_main: bool):
        self.path, self.is_main = Path(path), is_main

    def stop_file_present(self) -> bool:
        return (self.path / "STOP").exists()

    def stop_wanted(self, signals: StopSignals) -> bool:
        """This rank's own stop request, before the ranks share theirs: a stop signal, or (the main rank) STOP."""
        return signals.requested is not None or (self.is_main and self.stop_file_present())

    def clear_markers(self) -> None:
        """A start's first write: an earlier start's COMPLETED or STOPPED no longer describes the directory."""
        if self.is_main:
            (self.path / "COMPLETED").unlink(missing_ok=True)
            (self.path / "STOPPED").unlink(missing_ok=True)

    def mark_completed(self, step: int) -> None:
        if self.is_main:
            write_atomically(self.path / "COMPLETED", f"{step}\n")

    def mark_stopped(self, step: int) -> None:
        if self.is_main:
            write_atomically(self.path / "STOPPED", f"{step}\n")
