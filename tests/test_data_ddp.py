"""The loader in a real 2-process DDP job (gloo ranks started by accelerate launch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, flip_byte, image_ids, run_env, straddling_shard, tar_members
from distgan.data.manifest import Manifest
from distgan.data.shards import iter_shard_chunks

pytestmark = pytest.mark.slow


def launch_probe(data: list[Path], out: Path, *args: str, timeout: float = 180,
                 ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", str(REPO / "tests" / "ddp_data_probe.py"),
           "--data", *map(str, data), "--out", str(out), *args]
    proc = subprocess.run(cmd, env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=timeout)
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return proc, reports


def test_two_ranks_disjoint_whole_split_equal_counts(shards, tmp_path):
    data, _ = shards  # 1000 images in 7 uneven shards
    proc, reports = launch_probe([data], tmp_path / "probe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["rank"] for r in reports] == [0, 1] and reports[0]["world_size"] == 2
    for epoch in range(2):
        per_rank = [r["runs"][0]["epochs"][epoch] for r in reports]
        assert len(per_rank[0]) == len(per_rank[1]) == 1000 // 2 // 16
        ids = [{i for batch in batches for i in batch} for batches in per_rank]
        assert not ids[0] & ids[1]
        assert len(ids[0] | ids[1]) == 2 * 31 * 16  # the whole split but the 8 dropped-last
    first = [i for b in reports[0]["runs"][0]["epochs"][0] for i in b]
    second = [i for b in reports[0]["runs"][0]["epochs"][1] for i in b]
    assert first != second  # reshuffled each epoch


def test_one_flipped_byte_anywhere_in_a_shared_shard_stops_every_rank_naming_shard_and_chunk(shards, tmp_path):
    """One byte flipped (size unchanged) in the shard that both ranks read part of, 2 workers each, at
    several places: a tar header mid-shard, a .npy header, pixels mid-shard, a label, the last chunk.
    Every rank stops, and every rank's error names the shard and the chunk. Under on_corrupt=skip the
    ranks read on with equal batch counts, count what they skipped, and no image of the bad chunk
    reaches a batch."""
    data, _ = shards  # shards of 150 images (chunks of 64, 64, 22) and one of 100 (64, 36)
    name, _ = straddling_shard(data, world=2, batch=16, seed=5, drop_last=True)
    key = name[:-len(".tar")] + "-{:06d}"
    members = tar_members(data / name)
    last = len([m for m in members if m.endswith(".images.npy")]) - 1
    header, mid, end = (members[key.format(c) + ext] for c, ext in ((1, ".labels.npy"), (1, ".images.npy"),
                                                                     (last, ".images.npy")))
    labels = members[key.format(0) + ".labels.npy"]
    places = {  # what is flipped: (chunk, offset)
        "tar header, mid-shard": (1, header[0] + 100),
        ".npy header": (1, mid[1] + 20),
        "pixels, mid-shard": (1, mid[1] + mid[2] // 2),
        "a label": (0, labels[1] + labels[2] - 8 * 3),
        "last chunk": (last, end[1] + end[2] - 5),
    }
    copies = []
    for i, (chunk, offset) in enumerate([*places.values(), places["pixels, mid-shard"]]):
        copies.append(tmp_path / f"data{i}")
        shutil.copytree(data, copies[-1])
        flip_byte(copies[-1] / name, offset)
    *stopping, skipping = copies
    # Epoch 0 only: there the shard is split between the ranks, so no worker reads it end to end.
    proc, reports = launch_probe(stopping, tmp_path / "stop", "--group", "4", "--epochs", "1", timeout=240)
    assert proc.returncode != 0 and len(reports) == 2, proc.stderr[-3000:]
    for (what, (chunk, _)), runs in zip(places.items(), zip(*(r["runs"] for r in reports))):
        for rank, run in enumerate(runs):
            assert f"{name}: chunk {chunk} ({key.format(chunk)})" in run.get("error", ""), (what, rank, run)
            assert "Traceback" not in run["error"]  # the rank's own words, not a worker's traceback

    manifest = Manifest.from_json((data / "dataset.json").read_text(), "m")
    bad_chunk = list(iter_shard_chunks(str(data / name), manifest))[1]
    proc, reports = launch_probe([skipping], tmp_path / "skip", "--group", "4", "--on-corrupt", "skip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [r["runs"][0] for r in reports]
    assert all(len(epoch) == 31 for run in runs for epoch in run["epochs"])
    assert sum(run["skipped"] for run in runs) >= len(bad_chunk.images)
    delivered = {i for run in runs for epoch in run["epochs"] for batch in epoch for i in batch}
    assert not delivered & set(image_ids(bad_chunk.images).tolist())


def test_truncated_shard_refused_at_start_on_every_rank(shards, tmp_path):
    data, _ = shards
    victim = data / "train-000005.tar"
    victim.write_bytes(victim.read_bytes()[:1000])
    proc, reports = launch_probe([data], tmp_path / "probe", timeout=120)
    assert proc.returncode != 0 and len(reports) == 2
    for report in reports:
        run = report["runs"][0]
        assert "train-000005.tar" in run["error"] and not run["epochs"]
