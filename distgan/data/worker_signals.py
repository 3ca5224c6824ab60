"""Loader workers leave SIGTERM and SIGINT to their rank.

SLURM (scancel, preemption, a time limit without `--signal`), `kill -- -PGID` and Ctrl-C signal
every process of a job, the DataLoader workers included. A worker that died of it would make its
rank's SIGCHLD handler (torch's) raise "DataLoader worker ... is killed by signal: Terminated" in
the middle of whatever the rank was doing, before it could checkpoint. So workers start with both
signals blocked (`stop_signals_blocked` around the fork, so there is no moment in which they
could die of one) and `ignore_stop_signals`, their `worker_init_fn`, leaves them blocked and has a
thread take them off the queue: SIGTERM from the worker's own rank (the DataLoader ending a worker
that did not stop on its own) ends the worker quietly, as torch's own worker handler does; any
other SIGTERM or SIGINT is dropped and the rank decides. A worker killed outright (SIGKILL, the
OOM killer) still fails its rank with torch's "DataLoader worker (pid N) is killed by signal: Killed".
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in this thread (and in the processes it forks) for the block's length;
    one that arrives meanwhile is delivered when it ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: this worker no longer dies of SIGTERM or SIGINT (see the module)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # where the worker was not forked blocked
    threading.Thread(target=_take_stop_signals, args=(os.getppid(),), name=f"stop-signals-{worker_id}",
                     daemon=True).start()


def _take_stop_signals(rank_pid: int) -> None:
    """Dequeue the blocked SIGTERM and SIGINT for good; exit on a SIGTERM from the rank."""
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == rank_pid:
            os._exit(0)
