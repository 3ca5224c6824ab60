"""LAPGAN's level trainer when something goes wrong on one rank or between launches: real processes, 2 gloo ranks
where ranks are involved. What one rank learns (a level it cannot load, a checkpoint it cannot write) stops every
rank with one line from rank 0, never a peer's gloo traceback; a changed pyramid is refused naming its keys; a
level has one writer (levels/level-K/LOCK); each level's marker says its own outcome."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import LAUNCH_2_CPU, run_env
from test_lapgan_stops import finish, long_run, marker, train_cmd, wait_until_training


def run(data: Path, run_dir: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(data, run_dir, *extra, launcher=launcher),
                          env=run_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                          timeout=300)


def ranks_part(stderr: str) -> str:
    """What the ranks wrote: without torch's elastic agent's own log lines ('E1205 08:03:20.305000 ...') and its
    report of their exit statuses (a ChildFailedError traceback in the launcher process, last)."""
    head, launcher, tail = stderr.rpartition("Traceback (most recent call last):")
    ranks = head if launcher and "ChildFailedError" in tail else stderr
    return "".join(line for line in ranks.splitlines(keepends=True) if not re.match(r"[IWEF]\d{4} \d\d:", line))


def failed_alike(stderr: str) -> bool:
    """Both ranks exited 2 (an error every rank knows), but for one the launcher ended first: torch's elastic agent
    SIGTERMs the other ranks once one has exited non-zero, and either may be first. Its failure report says."""
    found = re.findall(r"rank\s*: (\d+) \(local_rank.*\n\s*exitcode\s*: (-?\d+)", stderr)
    statuses = {int(rank): int(code) for rank, code in found}
    return set(statuses) == {0, 1} and 2 in statuses.values() and set(statuses.values()) <= {2, -signal.SIGTERM}


def test_a_rank_that_cannot_load_its_level_stops_every_rank_in_one_line(tmp_path, shards):
    """Rank 1 owns level 1, whose checkpoint lacks its EMA; rank 0 owns level 0, which loads. Before: rank 1 exited
    2 and rank 0 died in its next collective with a gloo 'Connection closed by peer' traceback."""
    data, _ = shards
    assert run(data, tmp_path, "train.levels=[0, 1]", "train.steps=1").returncode == 0
    ema = tmp_path / "lap" / "levels" / "level-1" / "step-0000001" / "ema.safetensors"
    ema.unlink()
    result = run(data, tmp_path, "train.levels=[0, 1]", "train.steps=2", launcher=LAUNCH_2_CPU)
    assert result.returncode != 0 and failed_alike(result.stderr), result.stderr[-3000:]
    ranks = ranks_part(result.stderr).strip().splitlines()
    assert len(ranks) == 1 and ranks[0].startswith("distgan-train: error: rank 1: ") and str(ema) in ranks[0], ranks
    assert "Connection closed by peer" not in result.stderr
    assert not (tmp_path / "lap" / "levels" / "level-0" / "step-0000002").exists()  # rank 0 trained nothing


def test_a_changed_pyramid_is_refused_naming_its_keys(tmp_path, shards):
    """Before: rank 0 alone compared lapgan.json, and a ValueError escaped as a traceback."""
    data, _ = shards
    assert run(data, tmp_path, "train.levels=[2]", "train.steps=1").returncode == 0
    spec = (tmp_path / "lap" / "levels" / "lapgan.json").read_text()
    result = run(data, tmp_path, "train.levels=[2]", "train.steps=1", "model.ngf=16", "model.nz=8")
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert err[0].startswith("distgan-train: error: ") and "lapgan.json" in err[0]
    assert "model.ngf (ngf 8 -> 16)" in err[0] and "model.nz (coarse_nz 16 -> 8)" in err[0]
    assert "model.ndf" not in err[0]
    assert (tmp_path / "lap" / "levels" / "lapgan.json").read_text() == spec


def test_a_failed_stop_checkpoint_fails_every_rank_without_stopped(tmp_path, shards):
    """A run-wide STOP on 2 ranks (level 1 on rank 0, level 2 on rank 1); level 2's stop checkpoint cannot be
    written (its staging names are taken by files). Before: each rank marked its level STOPPED on its own; now
    every rank learns of the failure before any marker is written."""
    data, _ = shards
    run_path = tmp_path / "lap"
    proc = long_run(data, tmp_path, "[1, 2]", launcher=LAUNCH_2_CPU)
    wait_until_training(proc, run_path, (1, 2))
    level_2 = run_path / "levels" / "level-2"
    for step in range(100000):  # whatever step the stop comes at, its staging directory cannot be made
        (level_2 / f".tmp-step-{step:07d}").touch()
    (run_path / "STOP").touch()
    code, err = finish(proc)
    assert code != 0 and failed_alike(err), err[-3000:]
    ranks = [line for line in ranks_part(err).splitlines() if "error" in line]
    assert len(ranks) == 1 and "rank 1: writing level 2's checkpoint at step" in ranks[0], ranks
    assert "Traceback" not in ranks_part(err)
    assert all(marker(run_path, k, name) is None for k in (1, 2) for name in ("STOPPED", "COMPLETED"))
    assert not (run_path / "STOPPED").exists() and not list(level_2.glob("step-*"))


def test_a_second_start_of_a_level_is_refused_before_it_writes(tmp_path, shards):
    """Two launches of level 1 into one run: the second is refused in one line naming the holder, and writes
    nothing; the first trains on, stops and releases the LOCK."""
    data, _ = shards
    run_path = tmp_path / "lap"
    first = long_run(data, tmp_path, "[1]")
    try:
        wait_until_training(first, run_path, (1,))
        level_1 = run_path / "levels" / "level-1"
        before = {p.name: p.stat().st_mtime_ns for p in level_1.iterdir() if p.name != "metrics.jsonl"}
        spec = (run_path / "levels" / "lapgan.json").stat().st_mtime_ns
        second = run(data, tmp_path, "train.levels=[1]", "train.steps=1")
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr[-3000:]
        assert "in use by another run" in err[0] and f"pid {first.pid}" in err[0] and str(level_1) in err[0]
        assert {p.name: p.stat().st_mtime_ns for p in level_1.iterdir() if p.name != "metrics.jsonl"} == before
        assert (run_path / "levels" / "lapgan.json").stat().st_mtime_ns == spec
        assert json.loads((level_1 / "LOCK").read_text())["pid"] == first.pid
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
    code, err = finish(first)
    assert code == 0 and marker(run_path, 1, "STOPPED") is not None, err[-3000:]
    assert not (run_path / "levels" / "level-1" / "LOCK").exists()


def test_a_stale_level_lock_is_taken_over_and_a_live_one_only_when_forced(tmp_path, shards):
    data, _ = shards
    level_1 = tmp_path / "lap" / "levels" / "level-1"
    level_1.mkdir(parents=True)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": ended.pid, "job_id": "", "since": now, "renewed": now,
              "token": "gone"}
    (level_1 / "LOCK").write_text(json.dumps(holder))
    result = run(data, tmp_path, "train.levels=[1]", "train.steps=1")
    assert result.returncode == 0 and "took over" in result.stderr and "is gone" in result.stderr, result.stderr
    assert not (level_1 / "LOCK").exists() and marker(tmp_path / "lap", 1, "COMPLETED") == "1\n"
    (level_1 / "LOCK").write_text(json.dumps({**holder, "pid": os.getpid(), "token": "alive"}))  # this test: live
    refused = run(data, tmp_path, "train.levels=[1]", "train.steps=2")
    assert refused.returncode == 2 and "train.force_unlock=true" in refused.stderr
    forced = run(data, tmp_path, "train.levels=[1]", "train.steps=2", "train.force_unlock=true")
    assert forced.returncode == 0 and marker(tmp_path / "lap", 1, "COMPLETED") == "2\n", forced.stderr[-3000:]


def test_a_finished_level_is_completed_while_another_ranks_level_stops(tmp_path, shards):
    """2 ranks: level 1 (rank 0) already at train.steps, level 2 (rank 1) at step 1 with its own STOP file. Before:
    the launch's 'stopped' marked level 1 STOPPED too, though it had reached the end."""
    data, _ = shards
    run_path = tmp_path / "lap"
    assert run(data, tmp_path, "train.levels=[1]", "train.steps=3").returncode == 0
    assert run(data, tmp_path, "train.levels=[2]", "train.steps=1").returncode == 0
    (run_path / "levels" / "level-2" / "STOP").touch()
    result = run(data, tmp_path, "train.levels=[1, 2]", "train.steps=3", launcher=LAUNCH_2_CPU)
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker(run_path, 1, "COMPLETED") == "3\n" and marker(run_path, 1, "STOPPED") is None
    assert marker(run_path, 2, "STOPPED") == "1\n" and marker(run_path, 2, "COMPLETED") is None
    assert "stopped: level 1 at step 3" in result.stderr


def test_a_data_error_on_one_rank_of_a_level_stops_both_at_the_sync(tmp_path, shards):
    """Level 1 on 2 ranks (DDP within the level, disjoint shares of the data): a corrupt chunk that one rank
    reads. Before: that rank raised at once and its peer died in the next all-reduce with a gloo traceback; now
    the rank trains on stand-in batches until the next sync, where every rank stops, the shard named once."""
    from test_faults import corrupt_a_chunk
    data, _ = shards
    shard, _ = corrupt_a_chunk(data)
    result = run(data, tmp_path, "train.levels=[1]", "train.steps=80", "train.sync_every=5",
                 "train.checkpoint_every=1000", launcher=LAUNCH_2_CPU)
    assert result.returncode != 0 and failed_alike(result.stderr), result.stderr[-3000:]
    ranks = ranks_part(result.stderr).strip().splitlines()
    errors = [line for line in ranks if line.startswith("distgan-train: error: ")]
    assert len(errors) == 1 and shard in errors[0] and "level 1: " in errors[0], ranks
    assert "Traceback" not in ranks_part(result.stderr) and "Connection closed by peer" not in result.stderr
    level_1 = tmp_path / "lap" / "levels" / "level-1"
    assert not list(level_1.glob("step-*")) and marker(tmp_path / "lap", 1, "COMPLETED") is None
