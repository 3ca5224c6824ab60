"""One writer per run directory: runs/NAME/LOCK, held by rank 0 for the run's life.

Two starts on one directory (a job submitted twice, a requeued job starting while the
old one still drains, an orphaned launch) would write the same files. The second start
is refused before it writes anything, with the holder named.

What it relies on, so that it works on NFS (v3 and v4) and Lustre as clusters mount them:
- taking a free lock is `link(2)` of a private, fully written file onto `LOCK`: atomic
  on the server, and it fails with EEXIST when LOCK exists (the classic NFS-safe lock;
  `flock` is not used: on NFS it is emulated, or local to one client);
- taking over a stale lock is `rename(2)` of LOCK to a name of its own (atomic: of two
  takers only one finds the file), then the same link;
- the holder renews a lease: every `RENEW_S` its heartbeat thread rewrites LOCK
  (write a temporary file, `rename` over LOCK) with the time of renewal. The renewal
  also checks that LOCK still names this holder; if not (a human forced it, or a lease
  expired while the holder was frozen), the run stops at its next sync;
- the hosts' clocks agree within a few seconds (NTP, as on every cluster), since a
  lease's age is read against the reader's clock.

A holder is stale, and its lock taken over with a warning, when: it ran on this host and
its pid is gone; its lease was not renewed for `LEASE_S`; or it is this same SLURM job
(a requeue keeps the job id, and the old step is gone when the new one starts).
`train.force_unlock=true` takes it in any case (a human decided).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from distgan.training.errors import TrainingError

log = logging.getLogger("distgan")

LOCK_NAME = "LOCK"
RENEW_S = 15.0  # how often the holder renews its lease
LEASE_S = 120.0  # a lease not renewed for this long is stale (8 missed renewals: a frozen NFS client, not a busy one)


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory, as written in LOCK (one JSON object)."""

    host: str
    pid: int
    job_id: str  # SLURM_JOB_ID, or "" outside SLURM
    since: float  # time.time() when taken
    renewed: float  # time.time() of the last lease renewal
    token: str  # unique per start: tells this holder from a later one with the same host and pid

    @classmethod
    def this_process(cls) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID", ""), now, now, uuid.uuid4().hex)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        job = f", SLURM job {self.job_id}" if self.job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, since {since} (lease renewed {time.time() - self.renewed:.0f} s ago)"


def read_holder(path: Path) -> Holder | None:
    """The holder LOCK names; None when there is no LOCK (or it vanished while read)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return Holder(str(data["host"]), int(data["pid"]), str(data["job_id"]), float(data["since"]),
                      float(data["renewed"]), str(data["token"]))
    except (ValueError, KeyError, TypeError):
        # Unreadable: a lock of an unknown writer. Old enough (by the file's own time), it is stale like any.
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return Holder("unknown", -1, "", mtime, mtime, "")


def why_stale(holder: Holder, me: Holder) -> str | None:
    """The reason a holder may be taken over, or None while it may still be writing."""
    if holder.job_id and holder.job_id == me.job_id:
        return f"it is this SLURM job ({holder.job_id}), requeued"
    if holder.host == me.host and holder.pid > 0 and not _pid_alive(holder.pid):
        return f"its process {holder.pid} on this host is gone"
    age = time.time() - holder.renewed
    if age > LEASE_S:
        return f"its lease was last renewed {age:.0f} s ago (a holder renews every {RENEW_S:.0f} s; stale after {LEASE_S:.0f} s)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """`lock = RunLock(run_path); lock.acquire(force)` ... `lock.release()`; `lock.lost` names a takeover."""

    def __init__(self, run_path: Path):
        self.path = run_path / LOCK_NAME
        self.me = Holder.this_process()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_directory = False

    def acquire(self, force: bool = False) -> None:
        """Take the lock, or raise TrainingError naming its holder. Writes nothing else."""
        self._made_directory = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # each round: a link, or one takeover; a racing start makes another round
            if self._link():
                break
            holder = read_holder(self.path)
            if holder is None:
                continue  # released meanwhile
            reason = "train.force_unlock=true" if force else why_stale(holder, self.me)
            if reason is None:
                raise TrainingError(
                    f"{self.path.parent} is in use by another run ({holder.describe()}); refusing to start a second "
                    f"writer. Wait for it to end, stop it, or if it is surely gone, start with train.force_unlock=true")
            if self._take_over(holder):
                log.warning("took over %s from %s: %s", self.path, holder.describe(), reason)
        else:
            raise TrainingError(f"{self.path}: could not take the lock (other starts raced for it); try again")
        self._thread = threading.Thread(target=self._renew_until_released, name="distgan-run-lock", daemon=True)
        self._thread.start()

    def _link(self) -> bool:
        private = self.path.with_name(f".{LOCK_NAME}.{self.me.token}")
        private.write_text(json.dumps(asdict(self.me)))
        try:
            os.link(private, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            private.unlink(missing_ok=True)

    def _take_over(self, holder: Holder) -> bool:
        """Move the stale LOCK aside (one taker wins the rename); False when it was another holder's by then."""
        aside = self.path.with_name(f".{LOCK_NAME}.stale-{self.me.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = read_holder(aside)
        if moved is not None and moved.token != holder.token:  # a newer holder took it meanwhile: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def renew(self) -> None:
        """Renew the lease, if LOCK still names this start; else record that it was taken (`lost`)."""
        holder = read_holder(self.path)
        if holder is None or holder.token != self.me.token:
            if self.lost is None:
                self.lost = f"{self.path} was taken over by {holder.describe() if holder else 'nobody (removed)'}"
                log.error("%s; this run stops at its next sync", self.lost)
            return
        private = self.path.with_name(f".{LOCK_NAME}.{self.me.token}")
        private.write_text(json.dumps({**asdict(self.me), "renewed": time.time()}))
        os.replace(private, self.path)

    def _renew_until_released(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self.renew()
            except OSError as exc:  # a full disk, an unreachable mount: the lease may lapse; say so, keep trying
                log.warning("could not renew %s (%s)", self.path, exc)

    def release(self) -> None:
        """Stop renewing and remove LOCK, if it is still this start's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            holder = read_holder(self.path)
            if holder is not None and holder.token == self.me.token:
                self.path.unlink(missing_ok=True)
            if self._made_directory and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()  # a start refused at setup leaves no empty run directory behind
