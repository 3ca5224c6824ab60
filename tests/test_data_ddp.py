"""The loader in a real 2-process DDP job (gloo ranks started by accelerate launch)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_env

pytestmark = pytest.mark.slow


def launch_probe(data: Path, out: Path, timeout: float = 180) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", str(REPO / "tests" / "ddp_data_probe.py"),
           "--data", str(data), "--out", str(out)]
    proc = subprocess.run(cmd, env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=timeout)
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return proc, reports


def test_two_ranks_disjoint_whole_split_equal_counts(shards, tmp_path):
    data, _ = shards  # 1000 images in 7 uneven shards
    proc, reports = launch_probe(data, tmp_path / "probe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["rank"] for r in reports] == [0, 1] and reports[0]["world_size"] == 2
    for epoch in range(2):
        per_rank = [r["epochs"][epoch] for r in reports]
        assert len(per_rank[0]) == len(per_rank[1]) == 1000 // 2 // 16
        ids = [{i for batch in batches for i in batch} for batches in per_rank]
        assert not ids[0] & ids[1]
        assert len(ids[0] | ids[1]) == 2 * 31 * 16  # the whole split but the 8 dropped-last
    first = [i for b in reports[0]["epochs"][0] for i in b]
    second = [i for b in reports[0]["epochs"][1] for i in b]
    assert first != second  # reshuffled each epoch


def test_corrupt_shard_stops_every_rank_promptly(shards, tmp_path):
    data, _ = shards
    for name in ("train-000000.tar", "train-000004.tar"):  # same size, wrong bytes
        victim = data / name
        raw = bytearray(victim.read_bytes())
        raw[5000] ^= 0xFF
        victim.write_bytes(bytes(raw))
    start = time.time()
    proc, reports = launch_probe(data, tmp_path / "probe", timeout=120)
    assert time.time() - start < 90
    assert proc.returncode != 0
    assert len(reports) == 2, proc.stderr[-3000:]
    for report in reports:
        assert "sha256 does not match" in report["error"]
        assert "train-000000.tar" in report["error"] or "train-000004.tar" in report["error"]


def test_truncated_shard_refused_at_start_on_every_rank(shards, tmp_path):
    data, _ = shards
    victim = data / "train-000005.tar"
    victim.write_bytes(victim.read_bytes()[:1000])
    proc, reports = launch_probe(data, tmp_path / "probe", timeout=120)
    assert proc.returncode != 0 and len(reports) == 2
    for report in reports:
        assert "train-000005.tar" in report["error"] and not report["epochs"]
