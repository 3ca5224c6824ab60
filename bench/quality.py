"""Quality benchmark: train the seed configs on a stated budget, then FID-10k of each EMA generator.

Each config trains in its own process (`python -m distgan.train`, or
`accelerate launch` for --processes > 1) from a fresh run directory, with
W&B off, until `--steps` or `--minutes` run out (the time budget is a STOP
file: the trainer checkpoints, writes generator/ and exits cleanly). Then its
EMA generator is scored against the test split: FID and KID on `--n`
generated images, with the standard TF-FID Inception (or, for a quick CPU
check, the domain classifier). With --onnx the house model is also exported
(fp32 and int8, when distgan.export is there) and scored the same way.

    python bench/quality.py --data data/fashion-mnist --minutes 5 [--features inception] [--n 10000]
    python bench/quality.py --data D --minutes 5 --parallel --phase train   # then, later or elsewhere:
    python bench/quality.py --data D --phase score --features inception --onnx

Prints a table, then one JSON line: fid_<config>, kid_<config>, steps_<config>,
train_seconds_<config>, fid_house_default, hardware, date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout, installed or not

import torch  # noqa: E402

from distgan.metrics.domain import default_domain_dir, find_domain_model  # noqa: E402
from distgan.metrics.evaluate import evaluate, hardware  # noqa: E402
from distgan.metrics.generated import OnnxSource, TorchSource  # noqa: E402

DEFAULT_CONFIGS = "configs/mnist_gan.yaml,configs/fashion_dcgan.yaml,configs/fashion_cdcgan.yaml,configs/fashion_house.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST shards (distgan-data prepare fashion-mnist)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma list of config files")
    parser.add_argument("--house", default="fashion_house", help="stem of the house default config")
    parser.add_argument("--steps", type=int, help="G steps per config (default: the config's own, or unbounded "
                                                  "with --minutes)")
    parser.add_argument("--minutes", type=float, help="wall-clock training budget per config")
    parser.add_argument("--set", action="append", default=[], metavar="[STEM:]KEY=VALUE",
                        help="config override for every run, or for one config with a STEM: prefix")
    parser.add_argument("--processes", type=int, default=1, help="training processes (GPUs) per run")
    parser.add_argument("--n", type=int, default=10_000, help="generated images per FID (default: 10000)")
    parser.add_argument("--features", choices=("inception", "domain"), default="inception")
    parser.add_argument("--domain-model", help="domain classifier dir (default: the cache's; trained if missing)")
    parser.add_argument("--onnx", action="store_true", help="also score the house model's fp32 and int8 ONNX exports")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/quality"), help="run directories go here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parallel", action="store_true",
                        help="train every config at once (small models leave one GPU mostly idle)")
    parser.add_argument("--phase", choices=("all", "train", "score"), default="all",
                        help="train only, score the runs already in --out-dir only, or both")
    args = parser.parse_args(argv)
    if args.phase == "score":
        return args
    if args.steps is None and args.minutes is None:
        parser.error("give --steps and/or --minutes: the benchmark reports figures for a stated budget")
    return args


def overrides_for(stem: str, sets: list[str]) -> list[str]:
    """The --set items for this config: unprefixed ones, and those prefixed with its stem."""
    chosen = []
    for item in sets:
        prefix, _, rest = item.partition(":")
        if rest and "=" not in prefix:
            if prefix == stem:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


TRAINED = "bench_train.json"  # in each run directory: what the budget bought, for --phase score


def train(config: Path, args: argparse.Namespace) -> dict:
    """One fresh training run under the budget; returns (and saves) its steps, seconds and throughput."""
    stem = config.stem
    run = args.out_dir / stem
    shutil.rmtree(run, ignore_errors=True)  # a stated budget means a fresh run, not a resumed one
    steps = args.steps if args.steps is not None else 10**9
    cmd = ["distgan/train.py", "--config", str(config), f"data.path={args.data}", f"run_dir={args.out_dir}",
           f"name={stem}", f"train.steps={steps}", "log.log_with=none", "train.checkpoint_every=100000000",
           *overrides_for(stem, args.set)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"
    else:
        launch = [sys.executable]
    print(f"[{stem}] training: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(launch + cmd, cwd=REPO, env=env)
    stop = threading.Event()
    if args.minutes is not None:
        def stop_later() -> None:
            if not stop.wait(args.minutes * 60):
                run.mkdir(parents=True, exist_ok=True)
                (run / "STOP").touch()
        threading.Thread(target=stop_later, daemon=True).start()
    code = proc.wait()
    seconds = time.perf_counter() - start
    stop.set()
    (run / "STOP").unlink(missing_ok=True)
    if code != 0:
        raise RuntimeError(f"training {config} exited with {code}")
    info = json.loads((run / "generator" / "generator.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["perf/images_per_s"] for r in rows if "perf/images_per_s" in r][1:] or \
        [r["perf/images_per_s"] for r in rows if "perf/images_per_s" in r]  # the first interval holds start-up
    trained = {"steps": info["step"], "train_seconds": round(seconds, 1),
               "images_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
               "budget_steps": args.steps, "budget_minutes": args.minutes, "parallel": args.parallel}
    (run / TRAINED).write_text(json.dumps(trained))
    return trained


def train_all(configs: list[Path], args: argparse.Namespace) -> dict[str, dict | Exception]:
    """Each config's training result (or the exception that stopped it), one after another or all at once."""
    def attempt(config: Path) -> dict | Exception:
        try:
            return train(config, args)
        except Exception as exc:  # one failed config must not cost the others' figures
            return exc

    if not args.parallel:
        return {config.stem: attempt(config) for config in configs}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(configs)) as pool:
        return dict(zip((c.stem for c in configs), pool.map(attempt, configs)))


def trained_before(run: Path) -> dict | Exception:
    path = run / TRAINED
    if not path.is_file():
        return FileNotFoundError(f"{path}: no finished training run here (run --phase train first)")
    return json.loads(path.read_text())


def score(source, args: argparse.Namespace, domain_model: str | None) -> dict:
    result = evaluate(source, args.data, split="test", n=args.n, metrics=["fid", "kid"], features=args.features,
                      device=args.device, domain_model=domain_model)
    return {"fid": round(result["metrics"]["fid"], 4), "kid": round(result["metrics"]["kid"], 6),
            "eval_seconds": result["timings"]["total_s"], "features": result["features"]}


def ensure_domain_model(args: argparse.Namespace) -> tuple[str | None, dict]:
    """--features domain needs the dataset's classifier: found, or trained now (its accuracy is reported)."""
    if args.features != "domain":
        return None, {}
    from distgan.data.loader import read_manifest
    from distgan.metrics.domain import save_domain_classifier, train_domain_classifier

    dataset = read_manifest(str(args.data)).name
    try:
        path = find_domain_model(dataset, args.domain_model)
    except FileNotFoundError:
        if args.domain_model:
            raise
        print(f"no domain classifier for {dataset}: training one", flush=True)
        path = save_domain_classifier(train_domain_classifier(args.data, log=True), default_domain_dir(dataset))
    spec = json.loads((path / "classifier.json").read_text())
    return str(path), {"domain_test_accuracy": spec["record"].get("test_accuracy")}


def onnx_figures(house_run: Path, args: argparse.Namespace, domain_model: str | None) -> dict:
    try:
        from distgan.export import export_onnx
    except ImportError:
        print("--onnx: distgan.export is not available here; skipped", flush=True)
        return {}
    out = {}
    for label, quantize in (("fp32", None), ("int8", "int8")):
        path = export_onnx(house_run, house_run / f"generator-{label}.onnx", quantize=quantize).path
        out[f"fid_house_onnx_{label}"] = score(OnnxSource(path, args.device), args, domain_model)["fid"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data = str(Path(args.data).resolve())
    args.out_dir = args.out_dir.resolve()
    configs = [Path(c) if Path(c).is_absolute() else REPO / c for c in args.configs.split(",") if c]
    if args.phase == "score":
        results = {c.stem: trained_before(args.out_dir / c.stem) for c in configs}
    else:
        results = train_all(configs, args)
    if args.phase == "train":
        print(json.dumps({stem: r if isinstance(r, dict) else f"FAILED: {r}" for stem, r in results.items()}))
        return 0 if all(isinstance(r, dict) for r in results.values()) else 1
    domain_model, summary = ensure_domain_model(args)
    summary.update({"features": args.features, "n": args.n, "split": "test", "processes": args.processes})
    budgets = {(r["budget_steps"], r["budget_minutes"], r["parallel"]) for r in results.values() if isinstance(r, dict)}
    for steps, minutes, parallel in budgets:
        summary.update({"budget_steps": steps, "budget_minutes": minutes, "parallel": parallel})
    rows, failed = [], False
    for config in configs:
        stem = config.stem
        try:
            trained = results[stem]
            if isinstance(trained, Exception):
                raise trained
            figures = score(TorchSource.from_dir(args.out_dir / stem, args.device), args, domain_model)
        except Exception as exc:  # one failed config must not cost the others' figures
            print(f"[{stem}] FAILED: {exc}", file=sys.stderr, flush=True)
            summary[f"error_{stem}"] = str(exc)[:300]
            failed = True
            continue
        summary.update({f"fid_{stem}": figures["fid"], f"kid_{stem}": figures["kid"],
                        f"steps_{stem}": trained["steps"], f"train_seconds_{stem}": trained["train_seconds"],
                        f"images_per_s_{stem}": trained["images_per_s"]})
        summary["feature_extractor"] = figures["features"]
        rows.append((stem, trained["steps"], trained["train_seconds"], trained["images_per_s"], figures["fid"],
                     figures["kid"], figures["eval_seconds"]))
        print(f"[{stem}] FID {figures['fid']:.3f}, KID {figures['kid']:.5f} after {trained['steps']} steps", flush=True)
    if f"fid_{args.house}" in summary:
        summary["fid_house_default"] = summary[f"fid_{args.house}"]
        if args.onnx:
            summary.update(onnx_figures(args.out_dir / args.house, args, domain_model))
    print()
    print(f"FID-{args.n / 1000:g}k vs the test split, {args.features} features; train s = wall time of the "
          "training process, start-up included")
    header = ("config", "steps", "train s", "img/s", "FID", "KID", "eval s")
    table = [header, *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    summary.update({"hardware": hardware(), "date": date.today().isoformat()})
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
