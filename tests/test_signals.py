"""SIGTERM to a whole job, as SLURM sends it on scancel, on preemption and at a time limit without --signal:
every process of the process group gets it (launcher, ranks, loader workers). Real processes, real signals.
The loader workers must ignore it and leave the decision to their rank, which checkpoints at the next step
boundary and exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LAUNCH_2_CPU, REPO, TINY, run_env

pytestmark = pytest.mark.slow

def train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """distgan/train.py and its arguments: tiny model, 2 loader workers, long enough to be stopped mid-run."""
    return [str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs/fashion_dcgan.yaml"),
            f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, "data.num_workers=2",
            "train.steps=5000", "train.checkpoint_every=100000", *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} not written within {timeout:.0f}s")
        time.sleep(0.1)


def start_in_own_session(cmd: list[str], run: Path) -> subprocess.Popen:
    """`cmd` as the leader of a process group of its own, once it has logged a step (workers up)."""
    proc = subprocess.Popen(cmd, env=run_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1"), stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(run / "metrics.jsonl", proc, 240)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Wait for the group leader; then no process of its group may be left (no orphaned loader worker)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return proc.returncode, err
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"processes of the job outlived it: {err[-2000:]}")


def term_the_group_midrun(cmd: list[str], run: Path, timeout: float = 120) -> tuple[int, str]:
    """What `scancel` does to a job: SIGTERM to every process of it, mid-run."""
    proc = start_in_own_session(cmd, run)
    os.killpg(proc.pid, signal.SIGTERM)
    return finish(proc, timeout)


def assert_one_complete_checkpoint_at_the_stop(run: Path, log: str, ranks: int = 1) -> int:
    stopped = int(re.search(r"stopped at step (\d+)", log).group(1))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{stopped:07d}"]
    last = run / "checkpoints" / f"step-{stopped:07d}"
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == stopped > 0 and state["world_size"] == ranks
    assert all((last / f"random_states_{r}.pkl").exists() for r in range(ranks))
    assert not (run / "COMPLETED").exists() and (run / "STOPPED").exists()
    return stopped


def resume_to(cmd: list[str], run: Path, stopped: int) -> None:
    env = run_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    resumed = subprocess.run([*cmd, f"train.steps={stopped + 4}"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run}/checkpoints/step-{stopped:07d}" in resumed.stderr
    assert (run / "COMPLETED").read_text().strip() == str(stopped + 4) and not (run / "STOPPED").exists()


def test_sigterm_to_the_process_group_of_one_process_with_two_loader_workers(shards, tmp_path):
    """Before: the workers died of it and the rank failed mid-checkpoint with 'DataLoader worker (pid N)
    is killed by signal: Terminated', exit 1, no checkpoint."""
    data, _ = shards
    run, cmd = tmp_path / "t", [sys.executable, *train_args(data, tmp_path)]
    rc, err = term_the_group_midrun(cmd, run)
    assert rc == 0, err[-3000:]
    stopped = assert_one_complete_checkpoint_at_the_stop(run, err)
    resume_to(cmd, run, stopped)


def launcher_status_after_a_forwarded_sigterm() -> int:
    """What `accelerate launch` exits with once torchrun's agent has forwarded a SIGTERM and both ranks stopped
    cleanly. The agent re-raises the signal by torch's design; accelerate >= 1.16 turns that into 128 + 15 = 143
    (its `_run_torchrun` catches `SignalException`), earlier versions exit 1 with the traceback. Neither says
    how the ranks ended: distgan's own verdict is `STOPPED` plus the checkpoint (README, slurm/common.sh)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("accelerate").split(".")[:2])
    return 143 if (major, minor) >= (1, 16) else 1


def test_sigterm_to_the_whole_group_of_a_two_rank_launch(shards, tmp_path):
    """Launcher, 2 gloo ranks and their 2 workers each get SIGTERM. torchrun's agent (under accelerate launch)
    forwards it to the ranks, waits for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default, then SIGKILL)
    and then re-raises it, so the launcher's status is the launcher's (see above) while what distgan promises
    is checked directly: both ranks stopped on their own (no rank failed or was killed), one complete
    checkpoint of both ranks, and the STOPPED marker. (Resuming is tested with one process above and with two
    ranks on SLURM.)"""
    data, _ = shards
    run = tmp_path / "t"
    rc, err = term_the_group_midrun([*LAUNCH_2_CPU, *train_args(data, tmp_path)], run)
    assert rc in (0, launcher_status_after_a_forwarded_sigterm()), err[-3000:]
    assert "killed by signal" not in err and "ChildFailedError" not in err, err[-3000:]
    assert_one_complete_checkpoint_at_the_stop(run, err, ranks=2)


def test_a_loader_worker_killed_outright_fails_its_rank_with_a_clear_error(shards, tmp_path):
    data, _ = shards
    proc = start_in_own_session([sys.executable, *train_args(data, tmp_path)], tmp_path / "t")
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(workers) == 2, workers
    os.kill(int(workers[0]), signal.SIGKILL)
    rc, err = finish(proc)
    assert rc != 0 and f"DataLoader worker (pid {workers[0]}) is killed by signal: Killed" in err, err[-3000:]
