"""Faults a real cluster brings (issue 22): one writer per run directory, a log with each step once, exact resume
under lazy R1. Real processes and real signals where a process is what fails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, run_env
from distgan import training as trainer
from distgan.config import load_config
from distgan.training import run_lock
from distgan.training.run_lock import Holder, RunLock

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def train_cmd(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs/fashion_dcgan.yaml"),
            f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, "data.num_workers=0", *extra]


def tiny(data: Path, run_dir: Path, *extra: str):
    return load_config(REPO / "configs/fashion_dcgan.yaml", [f"data.path={data}", f"run_dir={run_dir}", "name=t",
                                                             *TINY, *extra])


def write_lock(run: Path, **fields) -> Holder:
    """A LOCK as another start would have left it."""
    now = time.time()
    holder = Holder(**{"host": socket.gethostname(), "pid": os.getpid(), "job_id": "", "since": now, "renewed": now,
                       "token": "other", **fields})
    run.mkdir(parents=True, exist_ok=True)
    (run / "LOCK").write_text(json.dumps(holder.__dict__))
    return holder


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the run-directory lock ------------------------------------------------------------------------------------


def test_a_second_start_on_a_held_directory_is_refused_before_it_writes(shards, tmp_path):
    """Before: both trained into the same files (every metrics line twice). The holder here is this test's own
    live process, as a first `distgan-train` would be."""
    data, _ = shards
    run = tmp_path / "t"
    write_lock(run, job_id="4242")
    proc = subprocess.run(train_cmd(data, tmp_path, "train.steps=4"), env=run_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("distgan-train: error: ") and "in use by another run" in error[0]
    for detail in (f"host {socket.gethostname()}", f"pid {os.getpid()}", "SLURM job 4242", "since "):
        assert detail in error[0], detail
    assert sorted(p.name for p in run.iterdir()) == ["LOCK"]  # nothing written, the holder's LOCK untouched
    assert json.loads((run / "LOCK").read_text())["token"] == "other"


@pytest.mark.parametrize("stale, reason", [
    ({"pid": None}, "is gone"),  # same host, its process gone (a SIGKILLed launch)
    ({"host": "elsewhere", "renewed": time.time() - run_lock.LEASE_S - 5}, "lease was last renewed"),
    ({"host": "elsewhere", "job_id": "77"}, "this SLURM job (77), requeued"),
])
def test_a_stale_holder_is_taken_over_with_a_warning(stale, reason, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    write_lock(tmp_path, **{k: dead_pid() if v is None else v for k, v in stale.items()})
    lock = RunLock(tmp_path)
    lock.acquire()
    try:
        assert reason in caplog.text and "took over" in caplog.text
        assert json.loads((tmp_path / "LOCK").read_text())["token"] == lock.me.token
    finally:
        lock.release()
    assert not (tmp_path / "LOCK").exists()


def test_a_live_holder_is_kept_unless_a_human_forces_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    write_lock(tmp_path, host="elsewhere", job_id="1")
    with pytest.raises(trainer.TrainingError, match="host elsewhere, pid .*SLURM job 1.*force_unlock"):
        RunLock(tmp_path).acquire()
    forced = RunLock(tmp_path)
    forced.acquire(force=True)
    forced.release()


def test_a_holder_whose_lock_was_taken_over_learns_it_at_its_next_renewal(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    second = RunLock(tmp_path)
    second.acquire(force=True)
    first.renew()
    assert first.lost and "taken over by host" in first.lost
    first.release()  # leaves the new holder's LOCK alone
    assert json.loads((tmp_path / "LOCK").read_text())["token"] == second.me.token
    second.release()


# --- metrics.jsonl: each step once ----------------------------------------------------------------------------


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def complete_steps(run: Path) -> list[int]:
    """The steps of metrics.jsonl's whole lines (one may be half-written while the run writes it)."""
    steps = []
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else ():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return steps


def without_timing(rows: list[dict]) -> list[dict]:
    """Each record without its wall-clock figures (images/s): everything else is arithmetic, equal bit for bit."""
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


@pytest.mark.slow
def test_a_crash_before_the_first_checkpoint_leaves_each_step_once(shards, tmp_path):
    """Before: the restart kept the crashed start's lines and logged the same steps again."""
    data, _ = shards
    env = run_env(OMP_NUM_THREADS="1")
    steps = ["train.steps=8", "train.checkpoint_every=1000"]
    subprocess.run(train_cmd(data, tmp_path / "straight", *steps), env=env, check=True, capture_output=True,
                   timeout=300)
    killed = tmp_path / "killed" / "t"
    proc = subprocess.Popen(train_cmd(data, tmp_path / "killed", "train.steps=100000", "train.checkpoint_every=1000"),
                            env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not ((killed / "metrics.jsonl").exists() and len(metrics(killed)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints").exists() or not any((killed / "checkpoints").iterdir())
    resumed = subprocess.run(train_cmd(data, tmp_path / "killed", *steps), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "took over" in resumed.stderr  # the SIGKILLed start's LOCK
    assert without_timing(metrics(killed)) == without_timing(metrics(tmp_path / "straight" / "t"))
    aside = [json.loads(line) for line in (killed / "metrics.jsonl.discarded-1").read_text().splitlines()]
    assert len(aside) >= 2 and aside[0]["step"] == 2


def wandb_history_steps(offline_run: Path) -> list[int]:
    """The steps of the history rows (those with a loss) in one offline W&B run directory. Its run-ID.wandb file
    is W&B's record log: a 7-byte header (':W&B', magic, version), then LevelDB-log chunks (crc32c, length,
    type; 32 KiB blocks) holding protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = next(offline_run.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B", offline_run
    steps, pos, block, parts = [], 7, 32768, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            if record.WhichOneof("record_type") == "history" and any((i.key or "/".join(i.nested_key)) == "loss/d"
                                                                           for i in record.history.item):
                steps.append(record.history.step.num)
    return steps


@pytest.mark.slow
def test_a_resume_never_sends_a_step_to_wandb_twice(shards, tmp_path):
    """SIGKILLed with steps logged past its checkpoint, then resumed from that checkpoint: the resumed start replays
    those steps (metrics.jsonl has them once, the killed start's lines set aside) but sends none of them to W&B again;
    both starts log into one W&B run id, and every step after the replay reaches W&B once."""
    data, _ = shards
    env = run_env(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    extra = ["train.checkpoint_every=4", "train.keep_checkpoints=1000", "log.log_with=wandb"]
    run = tmp_path / "t"
    proc = subprocess.Popen(train_cmd(data, tmp_path, "train.steps=100000", *extra), env=env,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not any(step >= 8 for step in complete_steps(run)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # W&B's service too: it is in the same session
    proc.wait()
    last_logged = complete_steps(run)[-1]
    steps = last_logged + 4
    resumed = subprocess.run(train_cmd(data, tmp_path, f"train.steps={steps}", *extra,
                                       f"train.resume={run / 'checkpoints' / 'step-0000004'}"),
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in metrics(run)] == list(range(2, steps + 1, 2))
    run_id = (run / "wandb_id.txt").read_text().strip()
    killed_start, resumed_start = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    first, second = wandb_history_steps(killed_start), wandb_history_steps(resumed_start)
    # The killed start's W&B service may not have written its last rows before the SIGKILL (README: a gap in W&B,
    # never a duplicate); what it wrote is in order and within what metrics.jsonl had.
    assert first == sorted(set(first)) and set(first) <= set(range(2, last_logged + 1, 2))
    assert second == list(range(last_logged + 2, steps + 1, 2))


# --- exact resume under lazy R1 -------------------------------------------------------------------------------


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    last = sorted((run / "checkpoints").iterdir())[-1]
    return {f"{name}:{k}": v for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors")
            for k, v in load_file(str(last / name)).items()}


def test_a_resume_between_lazy_r1_steps_continues_bitwise(shards, tmp_path):
    """r1_every=3 with a resume at step 5 (not a multiple): the penalty falls on the same D updates as in an
    uninterrupted run. Before: the counter restarted at 0 on resume, and the weights differed."""
    data, _ = shards
    r1 = ["loss.r1_gamma=1.0", "loss.r1_every=3", "train.checkpoint_every=1000"]
    assert trainer.train(tiny(data, tmp_path / "straight", "train.steps=8", *r1)) == "completed"
    assert trainer.train(tiny(data, tmp_path / "resumed", "train.steps=5", *r1)) == "completed"
    assert trainer.train(tiny(data, tmp_path / "resumed", "train.steps=8", *r1)) == "completed"
    a, b = final_weights(tmp_path / "straight" / "t"), final_weights(tmp_path / "resumed" / "t")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


# --- a bad chunk's images never reach G or D ---------------------------------------------------------------


def corrupt_a_chunk(data: Path) -> tuple[str, set[int]]:
    """Flip a byte in the images of one chunk of a middle shard; returns (the shard, the ids of that chunk)."""
    import io

    import numpy as np

    from conftest import flip_byte, image_ids, tar_members

    shard = sorted(data.glob("train-*.tar"))[3]
    members = tar_members(shard)
    name = sorted(n for n in members if n.endswith(".npy") and "images" in n)[1]
    _, offset, size = members[name]
    raw = shard.read_bytes()[offset:offset + size]
    ids = set(image_ids(np.load(io.BytesIO(raw))).tolist())
    flip_byte(shard, offset + size - 1)
    return shard.name, ids


@pytest.mark.slow
@pytest.mark.parametrize("ranks, workers", [(1, 0), (1, 2), (2, 1), (2, 2)])
def test_no_image_of_a_corrupt_chunk_reaches_the_step(ranks, workers, shards, tmp_path):
    """Every real batch each rank hands to the step is recorded: none holds an image of the chunk that failed its
    hash, while the ranks train on (a rank that met it repeats its last good batch until the next sync), and the
    run stops with the shard named, no checkpoint written after the error."""
    from conftest import LAUNCH_2_CPU

    data, _ = shards
    shard, bad_ids = corrupt_a_chunk(data)
    launch = [sys.executable] if ranks == 1 else LAUNCH_2_CPU
    out = tmp_path / "seen"
    out.mkdir()
    proc = subprocess.run([*launch, str(REPO / "tests" / "ddp_bad_chunk_probe.py"), str(out), "--config",
                           str(REPO / "configs/fashion_dcgan.yaml"), f"data.path={data}", f"run_dir={tmp_path}",
                           "name=t", *TINY, f"data.num_workers={workers}", "train.steps=80",
                           "train.checkpoint_every=1000", "train.sync_every=5"],
                          env=run_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and shard in proc.stderr, proc.stderr[-3000:]
    for rank in range(ranks):
        batches = json.loads((out / f"rank{rank}.json").read_text())
        assert not bad_ids & {i for batch in batches for i in batch}, rank
    assert not (tmp_path / "t" / "checkpoints").exists() and not (tmp_path / "t" / "COMPLETED").exists()


@pytest.mark.slow
def test_the_fault_injection_suite_short_mode_survives_every_fault(tmp_path):
    """bench/faults.py --short: 3 trials (a rank SIGKILLed, the launcher SIGKILLed, SIGTERM to the group), each
    resumed to the end and checked against an uninterrupted run (weights bitwise, each metrics step once, no
    process left, no complete checkpoint lost)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "faults.py"), "--short"],
                          env=run_env(TMPDIR=str(tmp_path)), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 3 and summary["failures"] == [], summary
    assert summary["survived"] == summary["tried"] == {"kill_rank": 1, "kill_launcher": 1, "term_group": 1}


def test_a_start_refused_at_setup_leaves_no_empty_run_directory(shards, tmp_path):
    """configs/small_data.yaml (64 px) on 28-px shards: one line naming the key, exit 2, and runs/NAME not left
    behind (the lock made it; nothing else was written)."""
    data, _ = shards
    proc = subprocess.run([sys.executable, str(REPO / "distgan" / "train.py"), "--config",
                           str(REPO / "configs/small_data.yaml"), f"data.path={data}", f"run_dir={tmp_path}", "name=t"],
                          env=run_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("distgan-train: error: config: model.arch 'dcgan64' needs")
    assert "Traceback" not in proc.stderr and not (tmp_path / "t").exists()
