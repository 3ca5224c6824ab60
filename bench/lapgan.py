"""LAPGAN benchmarks: the levels trained in parallel vs one after the other, and LAPGAN vs DCGAN at equal CPU time.

    python bench/lapgan.py speed --data data/fashion-mnist --steps 200
    python bench/lapgan.py quality --data data/fashion-mnist --domain-model DIR --cpu-seconds 180 --seeds 0,1

speed: `configs/lapgan.yaml` with `train.levels: all` for --steps steps per level, once on 2 gloo ranks (rank 0
owns levels 0 and 2, rank 1 level 1) and once in one process (every level, one step of each in turn), each
process on one thread; the figure is the wall-clock ratio.

quality: class-conditional LAPGAN (configs/lapgan.yaml, all levels in one process) and class-conditional DCGAN
(configs/fashion_cdcgan.yaml) trained for the same CPU time: a short run of each measures CPU seconds per step
(the children's user + system time), the budget sets each one's steps; then each is exported to ONNX and scored
with distgan-eval (domain FID on --n images vs the test split). DCGAN is scored through its EMA generator (the
house export), LAPGAN through its levels' raw generators (it keeps no EMA).

Prints one line per run, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
LAUNCH_2 = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
HARDWARE = "2-core AMD EPYC KVM (shared)"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
            "WANDB_MODE": "disabled"}


def _run(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _train(config: str, data: str, run_dir: Path, name: str, overrides: list[str], launch: list[str] | None = None):
    cmd = [*(launch or [PY]), str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs" / config),
           f"data.path={data}", f"run_dir={run_dir}", f"name={name}", "log.log_with=none", *overrides]
    return _run(cmd)


def speed(args: argparse.Namespace) -> dict:
    common = [f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", "data.num_workers=1"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for turn in range(args.repeats):  # alternate, so that load on the shared machine hits both
            par, _ = _train("lapgan.yaml", args.data, Path(tmp), f"par{turn}", common, LAUNCH_2)
            seq, _ = _train("lapgan.yaml", args.data, Path(tmp), f"seq{turn}", common)
            out.setdefault("parallel_s", []).append(par)
            out.setdefault("sequential_s", []).append(seq)
            print(f"turn {turn}: 2 ranks {par:.1f} s, 1 process {seq:.1f} s ({seq / par:.2f}x)", flush=True)
    par, seq = statistics.median(out["parallel_s"]), statistics.median(out["sequential_s"])
    return {"steps_per_level": args.steps, "parallel_s": par, "sequential_s": seq, "speedup": seq / par,
            "turns": out}


def _score(onnx: Path, args: argparse.Namespace, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "eval.json"
        _run([PY, "-m", "distgan.metrics.cli", "--onnx", str(onnx), "--data", args.data, "--features", "domain",
              "--domain-model", args.domain_model, "--metrics", "fid", "--n", str(args.n), "--device", "cpu",
              "--seed", str(seed), "--out", str(result), "--quiet"])
        return float(json.loads(result.read_text())["metrics"]["fid"])


MODELS = {  # name -> (config, overrides)
    "lapgan": ("lapgan.yaml", ["train.levels=all"]),
    "dcgan": ("fashion_cdcgan.yaml", ["data.batch_size=64", "train.sample_every=1000000"]),
}


def quality(args: argparse.Namespace) -> dict:
    run_dir = Path(args.run_dir)
    per_step = {}
    for model, (config, extra) in MODELS.items():  # CPU seconds per step, net of start-up (two lengths)
        _, short = _train(config, args.data, run_dir, f"cal-{model}-a", [*extra, "train.steps=10"])
        _, long = _train(config, args.data, run_dir, f"cal-{model}-b", [*extra, "train.steps=40"])
        per_step[model] = max((long - short) / 30, 1e-3)
        print(f"{model}: {per_step[model]:.3f} CPU s/step", flush=True)
    fids: dict[str, list[float]] = {m: [] for m in MODELS}
    steps = {m: max(10, int(args.cpu_seconds / per_step[m])) for m in MODELS}
    cpu = {m: [] for m in MODELS}
    for seed in args.seeds:
        for model, (config, extra) in MODELS.items():
            name = f"{model}-s{seed}"
            _, used = _train(config, args.data, run_dir, name, [*extra, f"seed={seed}", f"train.steps={steps[model]}",
                                                                f"train.checkpoint_every={steps[model]}"])
            _run([PY, "-m", "distgan.export.cli", "--onnx", str(run_dir / name)])
            fids[model].append(_score(run_dir / name / "generator.onnx", args, seed))
            cpu[model].append(used)
            print(f"{name}: {steps[model]} steps, {used:.0f} CPU s, domain FID {fids[model][-1]:.2f}", flush=True)
    return {"cpu_seconds_budget": args.cpu_seconds, "steps": steps, "cpu_seconds": cpu, "fid_seeds": fids,
            "fid": {m: statistics.mean(v) for m, v in fids.items()}, "n": args.n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--data", required=True)
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--repeats", type=int, default=2)
    q = sub.add_parser("quality")
    q.add_argument("--data", required=True)
    q.add_argument("--domain-model", required=True)
    q.add_argument("--cpu-seconds", type=float, default=180.0)
    q.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1])
    q.add_argument("--n", type=int, default=5000)
    q.add_argument("--run-dir", default="runs/bench-lapgan")
    args = parser.parse_args()
    result = speed(args) if args.what == "speed" else quality(args)
    print(json.dumps({"bench": f"lapgan-{args.what}", **result, "hardware": HARDWARE, "date": str(date.today())}))


if __name__ == "__main__":
    main()
