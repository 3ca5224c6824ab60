"""Stop requests by signal, for the length of one run: installed on entry, the previous handlers restored on exit.

SIGTERM (scancel, preemption, a time limit without --signal), SIGINT (Ctrl-C) and
SIGUSR1 (`--signal=B:USR1@120` through slurm/common.sh) all mean: finish the step,
write one complete checkpoint, exit 0. A *second* Ctrl-C means "now": the run
stops without a checkpoint, unless a checkpoint write is under way, which is
finished first (a half-written checkpoint is never taken, but it is time lost).

A second Ctrl-C counts wherever the rank runs:
- plain python: the terminal sends each press to the rank's process group (its loader workers ignore it);
- `accelerate launch` / `torchrun`: the ranks run in sessions of their own (torch's agent starts them so), so
  only what the agent sends reaches them: the first press forwarded as SIGINT, the second as a SIGTERM (the
  agent's shutdown). So after a SIGINT, a SIGTERM is the second press too (after a first SIGTERM, as SLURM
  sends it to every process and the agent forwards it once more, a SIGTERM is the same request). Were the
  agent gone (killed), the ranks' launcher watch (launcher_watch.py) sends them a SIGINT instead;
- a rank that shares its launcher's process group (an agent that does not start ranks in their own sessions)
  gets each press twice, from the terminal and forwarded: there a SIGINT within `SAME_PRESS_S` of the first
  is the same press.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

log = logging.getLogger("distgan")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SAME_PRESS_S = 2.0


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop without a checkpoint."""


class StopSignals:
    """`with StopSignals() as stop:` ... `stop.requested` is the signal's name once one arrived."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._critical = 0
        self._stop_now_pending = False
        self._stopped_now = False
        self._presses_arrive_twice = _shares_launchers_process_group()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works there only
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested, self._first_at = name, time.monotonic()
            log.warning("received %s: checkpoint at the next step boundary, then exit (Ctrl-C again: stop at once, "
                        "without a checkpoint)", name)
            return
        again = signum == signal.SIGINT or (signum == signal.SIGTERM and self.requested == "SIGINT")
        if not again or (self._presses_arrive_twice and time.monotonic() - self._first_at < SAME_PRESS_S):
            return
        if self._critical:
            self._stop_now_pending = True
            log.warning("second Ctrl-C: stopping once the checkpoint being written is complete")
            return
        self._stopped_now = True
        raise StopNow("second Ctrl-C: stopped at once, without a checkpoint")

    @property
    def stopped_now(self) -> bool:
        """A second press came (its StopNow raised, or lost): a peer that left meanwhile did so for the same."""
        return self._stopped_now

    def raise_if_stopped_now(self) -> None:
        """The second press's StopNow again, at a step boundary. Raised from the handler it stops the rank where
        it runs, but there it can land where Python ignores exceptions (a finalizer, an at-fork hook while the
        loader forks its workers: seen under a loaded machine) and be lost; the loop calls this every step."""
        if self._stopped_now:
            raise StopNow("second Ctrl-C: stopped at once, without a checkpoint")

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A section a second Ctrl-C must not cut (a checkpoint write): it stops right after it instead."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._stop_now_pending:
            raise StopNow("second Ctrl-C: stopped after the checkpoint write, at once")


def _shares_launchers_process_group() -> bool:
    """A rank in its launcher's process group gets a terminal's Ctrl-C directly and once more forwarded."""
    if "LOCAL_RANK" not in os.environ:
        return False
    try:
        return os.getpgid(os.getppid()) == os.getpgrp()
    except ProcessLookupError:
        return False
