"""No orphan ranks: a rank whose launcher died stops, with a checkpoint when it can.

A launcher killed outright (SIGKILL from the OOM killer, a closed terminal's session
ending, `kill -9`) cannot forward anything: its ranks would train on, unobserved, holding
the GPUs. Each rank started by a launcher (`accelerate launch`, `torchrun`: they set
LOCAL_RANK; the rank's parent is torchrun's agent, in the launcher's process) watches its
parent from a daemon thread: once the parent is gone (the rank was re-parented), the rank
sends itself SIGINT: a first one checkpoints at the next step boundary and exits, like a
preempted run; after a Ctrl-C the agent forwarded (it exits on the second press without
forwarding it) it is that second Ctrl-C, which stops at once (signals.py). If the rank
has not ended within `GRACE_S`, it exits at once (a checkpoint write cut so leaves the
previous checkpoint intact). Every rank notices on its own, so
they stop together. Its loader workers follow it: torch's DataLoader workers exit when
their rank is gone (they poll their parent every 5 s).

A watchdog rather than `prctl(PR_SET_PDEATHSIG)`: the death signal fires when the *thread*
that forked the rank ends, which in an agent that starts ranks from a worker thread would
stop a healthy run; `getppid()` changes only when the process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger("distgan")

POLL_S = 1.0  # how often a rank looks at its parent
GRACE_S = 20.0  # from the launcher's death to the rank's exit at the latest (the bound: 30 s)


def watch_launcher() -> threading.Thread | None:
    """Start the watchdog in a rank that a launcher started (LOCAL_RANK set); None in a plain process."""
    if "LOCAL_RANK" not in os.environ:
        return None
    launcher = os.getppid()
    thread = threading.Thread(target=_watch, args=(launcher,), name="distgan-launcher-watch", daemon=True)
    thread.start()
    return thread


def _watch(launcher: int) -> None:
    stop = threading.Event()
    while os.getppid() == launcher:
        stop.wait(POLL_S)
    log.warning("the launcher (pid %d) is gone: this rank stops as on a Ctrl-C (exiting at once if that takes "
                "over %.0f s)", launcher, GRACE_S)
    os.kill(os.getpid(), signal.SIGINT)
    stop.wait(GRACE_S)
    log.error("the launcher is gone and the rank did not stop within %.0f s: exiting now", GRACE_S)
    os._exit(1)
