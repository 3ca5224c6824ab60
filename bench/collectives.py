"""Host collectives per training step of a 2-rank gloo run (CPU), for this checkout or another one.

    python bench/collectives.py [--repo PATH_TO_A_DISTGAN_CHECKOUT] [--sync-every 20]

Runs the real trainer twice under `accelerate launch` (2 gloo ranks, tiny DCGAN on made-up shards), for
20 and 60 steps, counting every torch.distributed call made from Python on each rank
(tests/ddp_collectives_probe.py); the difference over the 40 extra steps is the per-step figure, free
of start-up and final-checkpoint collectives. DDP's own gradient all-reduce (C++ reducer) is not counted:
it is the one collective a step must make. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import TINY, make_idx_dataset  # noqa: E402


def count(repo: Path, data: Path, out: Path, steps: int, extra: list[str]) -> list[int]:
    out.mkdir(parents=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(REPO / "tests/ddp_collectives_probe.py"), str(out), str(REPO / "configs/fashion_dcgan.yaml"),
           f"data.path={data}", f"run_dir={out}", "name=t", *TINY, f"train.steps={steps}",
           "train.log_every=1000", "train.sample_every=1000", "train.checkpoint_every=1000", *extra]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    return [json.loads((out / f"rank{r}.json").read_text())["host_collectives"] for r in (0, 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the distgan checkout whose trainer is measured")
    parser.add_argument("--sync-every", type=int, help="train.sync_every (checkouts that have it)")
    args = parser.parse_args()
    extra = [f"train.sync_every={args.sync_every}"] if args.sync_every else []
    with tempfile.TemporaryDirectory() as tmp:
        from distgan.data.shards import write_shards
        from distgan.data.sources import read_idx_dataset

        make_idx_dataset(Path(tmp) / "raw", n_train=1000, n_test=100)
        data = Path(tmp) / "shards"
        write_shards(read_idx_dataset("fashion-mnist", Path(tmp) / "raw"), data, samples_per_shard=150)
        short, long = (count(args.repo, data, Path(tmp) / f"s{n}", n, extra) for n in (20, 60))
    per_step = [(b - a) / 40 for a, b in zip(short, long)]
    print(f"{args.repo}: host collectives per step, rank 0 / rank 1: {per_step[0]:.3f} / {per_step[1]:.3f}")
    print(json.dumps({"repo": str(args.repo), "host_collectives_per_step": per_step, "sync_every": args.sync_every,
                      "date": str(date.today())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
