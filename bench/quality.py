"""Quality benchmark: train configs (or variants of one config, over seeds) on a stated budget, then FID of each.

Each run trains in its own process (`python distgan/train.py`, or
`accelerate launch` for --processes > 1) from a fresh run directory, with
W&B off, until `--steps`, `--minutes` or `--cpu-minutes` run out (a time budget is a
STOP file: the trainer checkpoints, writes generator/ and exits cleanly; `--cpu-minutes`
counts the CPU time of the run's processes, the fair budget on a shared machine). Then its
EMA generator is scored against the test split: FID and KID on `--n`
generated images, with the standard TF-FID Inception (or, for a quick CPU
check, the domain classifier). With --onnx the house model is also exported
(fp32 and int8, when distgan.export is there) and scored the same way.

Two ways to say what to train:

- `--configs a.yaml,b.yaml`: each config file is one variant (named by its stem);
- `--config base.yaml --variant TAG:key=value,key=value ...`: variants of one base
  config, e.g. `--variant none --variant diffaug:aug.policy=color,translation,cutout,aug.p=1`
  (a comma starts a new override only where the next piece holds an `=`). The first
  variant is the baseline (`--baseline TAG` picks another): each variant's FID change
  and step time are reported relative to it.

`--seeds 0,1` trains every variant once per seed (runs TAG-s0, TAG-s1); the table
gives each variant's mean FID, its spread and every seed's. `--limit N` trains on a
seeded N-image subset of `--data`'s train split (prepared here with `distgan-data
prepare --limit`; the test split stays whole) and `--train-data DIR` on shards you
prepared; `--data` (the full set) then only supplies the domain classifier, which is
trained on it once and cached. With `eval.every` set (`--set eval.every=500`) each
run logs FID during training and the table adds each variant's FID curve.

    python bench/quality.py --data data/fashion-mnist --minutes 5 [--features inception] [--n 10000]
    python bench/quality.py --data D --minutes 5 --parallel --phase train   # then, later or elsewhere:
    python bench/quality.py --data D --phase score --features inception --onnx
    python bench/quality.py --data data/fashion-mnist --limit 2000 --config configs/fashion_house.yaml \\
        --features domain --seeds 0,1 --steps 6000 --jobs 2 --variant none \\
        --variant diffaug:aug.policy=color,translation,cutout,aug.p=1.0
    # later, the same runs longer: each resumes from its last checkpoint (bitwise the run trained in one go)
    python bench/quality.py ... --steps 30000 --extend

Prints a table per run and one per variant, then one JSON line: fid_<variant> (the
mean over seeds), fid_seeds_<variant>, fid_sd_<variant>, fid_change_<variant> (vs the
baseline), kid_<variant>, steps_<variant>, train_seconds_<variant>, cpu_seconds_<variant>,
images_per_s_<variant>, step_time_ratio_<variant> and cpu_time_ratio_<variant> (vs the
baseline), aug_p_<variant>, r_t_<variant>, fid_curve_<variant>, fid_house_default, hardware, date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psutil  # accelerate's own dependency

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout, installed or not

import torch  # noqa: E402

from bench.variants import parse_variant  # noqa: E402
from distgan.artifacts import checkpoint_step, list_checkpoints  # noqa: E402
from distgan.data.loader import read_manifest  # noqa: E402
from distgan.metrics.domain import default_domain_dir, find_domain_model  # noqa: E402
from distgan.metrics.evaluate import evaluate, hardware  # noqa: E402
from distgan.metrics.generated import OnnxSource, TorchSource  # noqa: E402

DEFAULT_CONFIGS = "configs/mnist_gan.yaml,configs/fashion_dcgan.yaml,configs/fashion_cdcgan.yaml,configs/fashion_house.yaml"
TRAINED = "bench_train.json"  # in each run directory: what the budget bought, for --phase score


@dataclass(frozen=True)
class Run:
    """One training run: a variant (a config file plus overrides) at one seed (None: the config's own)."""

    variant: str
    config: Path
    overrides: tuple[str, ...]
    seed: int | None

    @property
    def name(self) -> str:
        return self.variant if self.seed is None else f"{self.variant}-s{self.seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the full prepared dataset (distgan-data prepare ...): "
                        "trained on unless --limit/--train-data, and the domain classifier's training set")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma list of config files, one variant each")
    parser.add_argument("--config", help="one base config; its variants are given with --variant")
    parser.add_argument("--variant", action="append", default=[], metavar="TAG[:KEY=VALUE,...]",
                        help="a variant of --config: a tag and its overrides (repeatable; the first is the baseline)")
    parser.add_argument("--baseline", help="the variant others are compared with (default: the first)")
    parser.add_argument("--seeds", help="comma list of seeds: every variant trains once per seed")
    parser.add_argument("--limit", type=int, metavar="N", help="train on a seeded N-image subset of --data's "
                        "train split (prepared into --out-dir; the test split stays whole)")
    parser.add_argument("--limit-seed", type=int, default=0, help="which subset --limit picks (default: 0)")
    parser.add_argument("--train-data", help="train on these prepared shards instead of --data")
    parser.add_argument("--house", default="fashion_house", help="variant of the house default config")
    parser.add_argument("--steps", type=int, help="G steps per run (default: the config's own, or unbounded "
                                                  "with --minutes)")
    parser.add_argument("--minutes", type=float, help="wall-clock training budget per run")
    parser.add_argument("--cpu-minutes", type=float, help="CPU-time training budget per run (the run's processes "
                        "together: a fair budget on a shared machine, where wall-clock time depends on the others)")
    parser.add_argument("--set", action="append", default=[], metavar="[VARIANT:]KEY=VALUE",
                        help="config override for every run, or for one variant with a VARIANT: prefix")
    parser.add_argument("--processes", type=int, default=1, help="training processes (GPUs) per run")
    parser.add_argument("--n", type=int, default=10_000, help="generated images per FID (default: 10000)")
    parser.add_argument("--features", choices=("inception", "domain"), default="inception")
    parser.add_argument("--domain-model", help="domain classifier dir (default: the cache's; trained if missing)")
    parser.add_argument("--onnx", action="store_true", help="also score the house model's fp32 and int8 ONNX exports")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/quality"), help="run directories go here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default: 1)")
    parser.add_argument("--parallel", action="store_true",
                        help="train every run at once (small models leave one GPU mostly idle)")
    parser.add_argument("--reuse", action="store_true", help="keep a finished run trained with the same config, "
                        "overrides, budget and data instead of training it again (an interrupted matrix, more seeds)")
    parser.add_argument("--extend", action="store_true", help="resume a finished run trained with the same config, "
                        "overrides and data but fewer --steps up to --steps, instead of training it again from the "
                        "start (a resumed CPU run is bit for bit the run trained in one go; its times add up)")
    parser.add_argument("--phase", choices=("all", "train", "score"), default="all",
                        help="train only, score the runs already in --out-dir only, or both")
    args = parser.parse_args(argv)
    if args.variant and not args.config:
        parser.error("--variant needs --config (the base config the variants change)")
    if args.limit is not None and args.train_data:
        parser.error("give --limit (a subset prepared here) or --train-data (shards you prepared), not both")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.phase != "score" and args.steps is None and args.minutes is None and args.cpu_minutes is None:
        parser.error("give --steps, --minutes and/or --cpu-minutes: the benchmark reports figures for a stated budget")
    if args.extend and (args.steps is None or args.minutes is not None or args.cpu_minutes is not None):
        parser.error("--extend needs --steps and no time budget: only a step budget can be extended")
    return args


def plan_runs(args: argparse.Namespace) -> list[Run]:
    """Every (variant, seed) to train, in the order given: variants outer, seeds inner."""
    if args.config:
        base = resolve(args.config)
        variants = [parse_variant(v) for v in args.variant] or [(base.stem, [])]
        variants = [(tag, base, overrides) for tag, overrides in variants]
    else:
        variants = [(path.stem, path, []) for path in (resolve(c) for c in args.configs.split(",") if c)]
    tags = [tag for tag, _, _ in variants]
    if len(set(tags)) != len(tags):
        raise SystemExit(f"variant names must differ: {tags}")
    seeds = [None] if not args.seeds else [int(s) for s in args.seeds.split(",") if s]
    runs = []
    for tag, config, overrides in variants:
        for seed in seeds:
            extra = [*overrides_for(tag, args.set), *overrides] + ([f"seed={seed}"] if seed is not None else [])
            runs.append(Run(tag, config, tuple(extra), seed))
    return runs


def resolve(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO / path


def overrides_for(variant: str, sets: list[str]) -> list[str]:
    """The --set items for this variant: unprefixed ones, and those prefixed with its name."""
    chosen = []
    for item in sets:
        prefix, _, rest = item.partition(":")
        if rest and "=" not in prefix:
            if prefix == variant:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


def training_data(args: argparse.Namespace) -> Path:
    """The shards the runs train on: --data, --train-data, or --data's seeded --limit subset (prepared once)."""
    if args.train_data:
        return Path(args.train_data).resolve()
    if args.limit is None:
        return Path(args.data)
    manifest = read_manifest(str(args.data))
    out = args.out_dir / f"data-{manifest.name}-limit{args.limit}-seed{args.limit_seed}"
    want = {"split": "train", "images": args.limit, "seed": args.limit_seed}
    if (out / "dataset.json").is_file():
        have = read_manifest(str(out)).source.get("limit") or {}
        if {k: have.get(k) for k in want} == want:
            return out
    source = manifest.source
    if source.get("kind") != "idx" or not source.get("path"):
        raise SystemExit(f"--limit re-prepares {args.data} from its raw files, which works for IDX datasets "
                         f"(mnist, fashion-mnist); {manifest.name} came from {source}: prepare the subset with "
                         "`distgan-data prepare ... --limit N` and pass it as --train-data")
    cmd = [sys.executable, "-m", "distgan.data.cli", "prepare", manifest.name, "--src", source["path"],
           "--limit", str(args.limit), "--seed", str(args.limit_seed), "--out", str(out), "--overwrite"]
    print(f"preparing the {args.limit}-image subset: {' '.join(cmd[3:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=child_env())
    return out


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def ensure_domain_model(args: argparse.Namespace) -> tuple[str | None, dict]:
    """--features domain needs the dataset's classifier: found, or trained now on the full --data (its accuracy
    is reported). A classifier trained on a --limit subset would know fewer images than the runs are scored on."""
    if args.features != "domain":
        return None, {}
    from distgan.metrics.domain import save_domain_classifier, train_domain_classifier

    manifest = read_manifest(str(args.data))
    try:
        path = find_domain_model(manifest.name, args.domain_model)
    except FileNotFoundError:
        if args.domain_model:
            raise
        if manifest.source.get("limit"):
            raise SystemExit(f"{args.data} is a --limit subset ({manifest.source['limit']}): the domain "
                             "classifier is trained on the full set; pass that as --data") from None
        print(f"no domain classifier for {manifest.name}: training one on {args.data}", flush=True)
        path = save_domain_classifier(train_domain_classifier(args.data, log=True), default_domain_dir(manifest.name))
    spec = json.loads((path / "classifier.json").read_text())
    return str(path), {"domain_test_accuracy": spec["record"].get("test_accuracy")}


def train(run: Run, args: argparse.Namespace) -> dict:
    """One fresh training run under the budget; returns (and saves) its steps, time, CPU time and speed."""
    out = args.out_dir / run.name
    setup = {"config": str(run.config), "overrides": list(run.overrides), "budget_steps": args.steps,
             "budget_minutes": args.minutes, "budget_cpu_minutes": args.cpu_minutes,
             "train_data": str(args.train_data_path)}
    before = trained_before(out)
    if args.reuse and isinstance(before, dict) and {key: before.get(key) for key in setup} == setup:
        print(f"[{run.name}] reused: trained before with the same config, overrides, budget and data", flush=True)
        return before
    earlier = extendable(before, setup, out) if args.extend else None
    if earlier is None:
        shutil.rmtree(out, ignore_errors=True)  # a stated budget means a fresh run, not a resumed one
    else:
        print(f"[{run.name}] extending: resumed at step {earlier['steps']} of the earlier run", flush=True)
    steps = args.steps if args.steps is not None else 10**9
    cmd = ["distgan/train.py", "--config", str(run.config), f"data.path={args.train_data_path}",
           f"run_dir={args.out_dir}", f"name={run.name}", f"train.steps={steps}", "log.log_with=none",
           "train.checkpoint_every=100000000", *args.eval_overrides, *run.overrides]
    env = child_env()
    if args.processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"
    else:
        launch = [sys.executable]
    print(f"[{run.name}] training: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(launch + cmd, cwd=REPO, env=env)
    stop = threading.Event()
    if args.minutes is not None or args.cpu_minutes is not None:
        threading.Thread(target=stop_when_spent, args=(proc.pid, out, args.minutes, args.cpu_minutes, stop),
                         daemon=True).start()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's CPU time (and its waited-for children's)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    stop.set()
    (out / "STOP").unlink(missing_ok=True)
    if code != 0:
        raise RuntimeError(f"training {run.name} ({run.config.name} {' '.join(run.overrides)}) exited with {code}")
    cpu_seconds = usage.ru_utime + usage.ru_stime
    if earlier is not None:
        seconds, cpu_seconds = seconds + earlier["train_seconds"], cpu_seconds + earlier["cpu_seconds"]
    trained = {"steps": json.loads((out / "generator" / "generator.json").read_text())["step"],
               "train_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
               **read_metrics(out / "metrics.jsonl"), "jobs": args.concurrent, **setup}
    if earlier is not None:
        trained["extended_from"] = [*earlier.get("extended_from", []), earlier["steps"]]
    (out / TRAINED).write_text(json.dumps(trained))
    return trained


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (ranks, loader workers), those it reaped included."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def stop_when_spent(pid: int, out: Path, minutes: float | None, cpu_minutes: float | None,
                    ended: threading.Event) -> None:
    """Write the run's STOP file (the trainer checkpoints, writes generator/ and exits) once the wall-clock or
    the CPU budget is spent; polled each second."""
    start = time.monotonic()
    while not ended.wait(1.0):
        try:
            spent = ((minutes is not None and time.monotonic() - start >= minutes * 60)
                     or (cpu_minutes is not None and tree_cpu_seconds(pid) >= cpu_minutes * 60))
        except psutil.Error as exc:  # the budget cannot be watched: stop now rather than train without one
            print(f"[{out.name}] cannot read the run's CPU time ({exc}); stopping it", flush=True)
            spent = True
        if spent:
            out.mkdir(parents=True, exist_ok=True)
            (out / "STOP").touch()
            return


def extendable(before: dict | Exception, setup: dict, out: Path) -> dict | None:
    """The earlier result of this run if it can be resumed to the new budget: the same setup bar a smaller
    step budget, and the newest checkpoint the one it ended with (an extension cut short before its first
    checkpoint resumes there again, so the times stay those of one run); None: train from the start."""
    if (not isinstance(before, dict) or before.get("budget_minutes") is not None
            or before.get("budget_cpu_minutes") is not None):
        return None
    same = all(before.get(key) == value for key, value in setup.items() if key != "budget_steps")
    fewer = isinstance(before.get("budget_steps"), int) and before["budget_steps"] < setup["budget_steps"]
    newest = list_checkpoints(out)[-1:]
    return before if same and fewer and [checkpoint_step(c) for c in newest] == [before["steps"]] else None


def read_metrics(path: Path) -> dict:
    """From a run's metrics.jsonl: its median images/s, the last augmentation p, D's r_t over the last 10 log
    intervals (ADA's heuristic E[sign(D(real))]: near 1 once D has memorised the training set), the FID and
    r_t curves.

    The speed skips the first log interval (start-up) and every interval that held an evaluation (evaluations
    run after the log at their step, so they land in the next interval; the trainer now leaves their time out
    of images/s, runs of older versions did not)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = {r["step"] for r in rows if "eval/fid" in r}
    timed = [r for r in rows if "perf/images_per_s" in r]
    clean = [r["perf/images_per_s"] for before, r in zip(timed, timed[1:]) if before["step"] not in evals]
    speeds = clean or [r["perf/images_per_s"] for r in timed]
    augmented = [r for r in rows if "aug/p" in r]
    signs = [(r["step"], r["d/r_t"]) for r in rows if "d/r_t" in r]
    return {"images_per_s": round(statistics.median(speeds), 1) if speeds else None,
            "aug_p": round(augmented[-1]["aug/p"], 4) if augmented else None,
            "r_t": round(mean([sign for _, sign in signs[-10:]]), 4) if signs else None,
            "fid_curve": [[r["step"], round(r["eval/fid"], 3)] for r in rows if "eval/fid" in r],
            "r_t_curve": [[step, round(sign, 4)] for step, sign in signs]}


def train_all(runs: list[Run], args: argparse.Namespace) -> dict[str, dict | Exception]:
    """Each run's training result (or the exception that stopped it), --jobs (or all, --parallel) at a time."""
    def attempt(run: Run) -> dict | Exception:
        try:
            return train(run, args)
        except Exception as exc:  # one failed run must not cost the others' figures
            return exc

    args.concurrent = max(min(len(runs) if args.parallel else args.jobs, len(runs)), 1)
    with ThreadPoolExecutor(args.concurrent) as pool:
        return dict(zip((r.name for r in runs), pool.map(attempt, runs)))


def trained_before(run: Path) -> dict | Exception:
    path = run / TRAINED
    if not path.is_file():
        return FileNotFoundError(f"{path}: no finished training run here (run --phase train first)")
    return json.loads(path.read_text())


def score(source, args: argparse.Namespace, domain_model: str | None) -> dict:
    result = evaluate(source, args.train_data_path, split="test", n=args.n, metrics=["fid", "kid"],
                      features=args.features, device=args.device, domain_model=domain_model, progress=False)
    return {"fid": round(result["metrics"]["fid"], 4), "kid": round(result["metrics"]["kid"], 6),
            "eval_seconds": result["timings"]["total_s"], "features": result["features"]}


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


def score_runs(runs: list[Run], results: dict[str, dict | Exception], args: argparse.Namespace,
               domain_model: str | None, summary: dict) -> dict[str, dict]:
    """FID and KID of every trained run (the figures merged into its training record); failures into summary."""
    scored = {}
    for run in runs:
        try:
            trained = results[run.name]
            if isinstance(trained, Exception):
                raise trained
            figures = score(TorchSource.from_dir(args.out_dir / run.name, args.device), args, domain_model)
        except Exception as exc:  # one failed run must not cost the others' figures
            print(f"[{run.name}] FAILED: {exc}", file=sys.stderr, flush=True)
            summary[f"error_{run.name}"] = str(exc)[:300]
            continue
        # the run's metrics.jsonl is the record: read again, so a record written by an older script has every field
        scored[run.name] = {**trained, **read_metrics(args.out_dir / run.name / "metrics.jsonl"), **figures}
        summary["feature_extractor"] = figures["features"]
        print(f"[{run.name}] FID {figures['fid']:.3f}, KID {figures['kid']:.5f} after {trained['steps']} steps",
              flush=True)
    return scored


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def variant_figures(runs: list[Run], scored: dict[str, dict], baseline: str) -> dict[str, dict]:
    """Per variant (over its scored seeds): mean FID, spread, every seed's FID, and speed vs the baseline."""
    figures: dict[str, dict] = {}
    for variant in dict.fromkeys(r.variant for r in runs):
        done = [scored[r.name] for r in runs if r.variant == variant and r.name in scored]
        if not done:
            continue
        fids = [d["fid"] for d in done]
        speeds = [d["images_per_s"] for d in done if d.get("images_per_s")]
        ps = [d["aug_p"] for d in done if d.get("aug_p") is not None]
        signs = [d["r_t"] for d in done if d.get("r_t") is not None]
        figures[variant] = {
            "fid": round(mean(fids), 3), "fid_seeds": fids,
            "fid_sd": round(statistics.stdev(fids), 3) if len(fids) > 1 else None,
            "kid": round(mean([d["kid"] for d in done]), 6), "steps": done[0]["steps"],
            "train_seconds": round(mean([d["train_seconds"] for d in done]), 1),
            "cpu_seconds": round(sum(d.get("cpu_seconds", 0.0) for d in done), 1),
            "images_per_s": round(mean(speeds), 1) if speeds else None,
            "aug_p": round(mean(ps), 3) if ps else None, "r_t": round(mean(signs), 3) if signs else None,
            "fid_curve": mean_curve([d["fid_curve"] for d in done if d.get("fid_curve")])}
    base = figures.get(baseline)
    for values in figures.values():
        if base is not None:
            values["fid_change"] = round(values["fid"] / base["fid"] - 1, 4)
            if values["images_per_s"] and base["images_per_s"]:  # step time = batch / images_per_s
                values["step_time_ratio"] = round(base["images_per_s"] / values["images_per_s"], 3)
            if values["cpu_seconds"] and base["cpu_seconds"]:  # the whole run's CPU time, per seed
                per_seed = values["cpu_seconds"] / len(values["fid_seeds"])
                values["cpu_time_ratio"] = round(per_seed * len(base["fid_seeds"]) / base["cpu_seconds"], 3)
    return figures


def mean_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """The mean of the seeds' [step, value] curves (FID, r_t) at every step they all share."""
    if not curves:
        return []
    steps = sorted(set.intersection(*({s for s, _ in c} for c in curves)))
    return [[s, round(mean([dict((int(a), b) for a, b in c)[s] for c in curves]), 3)] for s in steps]


def plot_curves(runs: list[Run], scored: dict[str, dict], figures: dict[str, dict], out: Path,
                args: argparse.Namespace) -> None:
    """FID during training and D's r_t per variant (each seed faint, the mean bold) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_rt) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (variant, f) in enumerate(figures.items()):
        color = f"C{i % 10}"
        done = [scored[r.name] for r in runs if r.variant == variant and r.name in scored]
        for d in (d for d in done if d.get("fid_curve")):
            ax_fid.plot(*zip(*d["fid_curve"]), color=color, alpha=0.3, lw=0.8)
        if f["fid_curve"]:
            ax_fid.plot(*zip(*f["fid_curve"]), color=color, lw=2, label=f"{variant}: {f['fid']:.1f}")
        signs = [d["r_t_curve"] for d in done if d.get("r_t_curve")]
        for curve in signs:  # each seed faint, the mean over seeds where all have a value; smoothed over 10 logs
            ax_rt.plot(*smoothed(curve), color=color, alpha=0.3, lw=0.8)
        if both := mean_curve(signs):
            ax_rt.plot(*smoothed(both), color=color, lw=2, label=variant)
    ax_fid.set(yscale="log", xlabel="step", title=f"FID during training (legend: the final FID-{args.n / 1000:g}k)")
    ax_rt.axhline(0.6, color="grey", ls="--", lw=1)
    ax_rt.set(xlabel="step", ylabel="E[sign(D(real))]", title="D's r_t (ADA's overfitting heuristic; target 0.6 dashed)")
    for ax in (ax_fid, ax_rt):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def smoothed(curve: list[list[float]], window: int = 10) -> tuple[list[float], list[float]]:
    """A [step, value] curve as (steps, running mean of the last `window` values)."""
    steps, values = zip(*curve)
    return list(steps), [mean(values[max(0, k - window + 1):k + 1]) for k in range(len(values))]


def print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    table = [header, *[tuple("" if c is None else str(c) for c in row) for row in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def ratio(figures: dict, key: str) -> str | None:
    return f"{figures[key]:.2f}x" if key in figures else None


def report(runs: list[Run], scored: dict[str, dict], figures: dict[str, dict], args: argparse.Namespace,
           baseline: str) -> None:
    print()
    print(f"FID-{args.n / 1000:g}k vs the test split, {args.features} features; train s = wall time of the training "
          "process, start-up included; CPU s = its CPU time; img/s = median of its log intervals")
    print_table(("run", "steps", "train s", "CPU s", "img/s", "aug p", "FID", "KID", "eval s"),
                [(r.name, s["steps"], s["train_seconds"], s.get("cpu_seconds"), s["images_per_s"], s.get("aug_p"),
                  s["fid"], s["kid"], s["eval_seconds"]) for r in runs if (s := scored.get(r.name))])
    if len(figures) < 2 and all(len(f["fid_seeds"]) < 2 for f in figures.values()):
        return
    print()
    print(f"per variant (mean over seeds; FID change, step time (wall, from img/s) and CPU time of the whole run "
          f"relative to {baseline!r})")
    print_table(("variant", "seeds", "FID mean", "sd", "per seed", "FID change", "step time", "CPU time", "aug p",
                 "r_t"),
                [(v, len(f["fid_seeds"]), f["fid"], f["fid_sd"], " ".join(f"{x:.2f}" for x in f["fid_seeds"]),
                  f"{f['fid_change']:+.1%}" if "fid_change" in f else None, ratio(f, "step_time_ratio"),
                  ratio(f, "cpu_time_ratio"), f["aug_p"], f["r_t"]) for v, f in figures.items()])
    curves = {v: dict((int(s), x) for s, x in f["fid_curve"]) for v, f in figures.items() if f["fid_curve"]}
    if curves:
        print()
        print("FID during training (eval.every; the EMA generator on eval.n images, mean over seeds)")
        steps = sorted(set().union(*curves.values()))
        print_table(("step", *curves), [(s, *(c.get(s) for c in curves.values())) for s in steps])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.data = str(Path(args.data).resolve())
    args.out_dir = args.out_dir.resolve()
    runs = plan_runs(args)
    baseline = args.baseline or runs[0].variant
    if baseline not in {r.variant for r in runs}:
        raise SystemExit(f"--baseline {baseline!r} is not a variant: {sorted({r.variant for r in runs})}")
    domain_model, summary = ensure_domain_model(args)  # first: runs with eval.every need it too
    args.eval_overrides = [f"eval.domain_model={domain_model}"] if domain_model else []
    if args.phase == "score":
        results = {r.name: trained_before(args.out_dir / r.name) for r in runs}
        first = next((r for r in results.values() if isinstance(r, dict)), {})
        args.train_data_path = Path(first["train_data"]) if "train_data" in first else training_data(args)
    else:
        args.train_data_path = training_data(args)
        results = train_all(runs, args)
    if args.phase == "train":
        print(json.dumps({name: r if isinstance(r, dict) else f"FAILED: {r}" for name, r in results.items()}))
        return 0 if all(isinstance(r, dict) for r in results.values()) else 1
    train_manifest = read_manifest(str(args.train_data_path))
    summary.update({"features": args.features, "n": args.n, "split": "test", "processes": args.processes,
                    "train_images": train_manifest.split("train").num_samples,
                    "train_limit": train_manifest.source.get("limit"), "baseline": baseline})
    if args.config:
        summary.update({"config": str(args.config), "seeds": args.seeds, "set": args.set,
                        "variants": {tag: overrides for tag, overrides in map(parse_variant, args.variant)}})
    for r in results.values():
        if isinstance(r, dict):
            summary.update({"budget_steps": r["budget_steps"], "budget_minutes": r["budget_minutes"],
                            "budget_cpu_minutes": r.get("budget_cpu_minutes"),
                            "jobs": r.get("jobs")})
    scored = score_runs(runs, results, args, domain_model, summary)
    figures = variant_figures(runs, scored, baseline)
    for variant, values in figures.items():
        summary.update({f"{key}_{variant}": value for key, value in values.items()})
    if f"fid_{args.house}" in summary:
        summary["fid_house_default"] = summary[f"fid_{args.house}"]
        if args.onnx:
            house = next(r for r in runs if r.variant == args.house)
            summary.update(onnx_figures(args.out_dir / house.name, args, domain_model))
    report(runs, scored, figures, args, baseline)
    if any(f["fid_curve"] for f in figures.values()):
        plot_curves(runs, scored, figures, args.out_dir / "curves.png", args)
        print(f"FID and r_t curves: {args.out_dir / 'curves.png'}")
    summary.update({"hardware": hardware(), "date": date.today().isoformat()})
    print(json.dumps(summary))
    return 0 if len(scored) == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
