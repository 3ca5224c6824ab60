"""Training-step throughput: distgan's trainer beside a minimal plain-PyTorch DCGAN loop.

Both train the same G and D (built from the same config) at the same batch size
in one run on this machine. The plain loop is the pytorch/examples DCGAN recipe
(D on real, D on fake, G through D, default Adam, fp32, NCHW) given its best
case: pre-made float batches already on the device and no per-step `.item()`.
The trainer runs as users run it (`distgan/train.py --config ...` in a
subprocess): streaming shards, EMA, logging, its fast defaults (on one GPU: the
whole step replayed as a CUDA graph; `--eager` adds the step without it). Its images/s
come from its own metrics.jsonl, skipping the first (warm-up) log interval. On a CPU
the two take turns three times (`--rounds`) and the medians are compared.

    python bench/train.py                      # CPU: fp32 trainer vs fp32 plain loop
    python bench/train.py --device cuda --precisions no,bf16 --eager [--compile [--compile-mode ...]]
    python bench/train.py --device cuda --precisions no,bf16 --ddp --ddp-compile no --plain-compile  # issue 30
    python bench/train.py --variant nchw:train.channels_last=false   # any trainer overrides
    python bench/train.py --variant diffaug:aug.policy=color,translation,cutout,aug.p=1   # a list value stays whole

`--ddp` also runs each precision under DDP on one rank (torchrun, NCCL on a GPU): accelerate wraps G and D
in DDP, so its hooks, buckets and all-reduce run as on many GPUs: `_ddp_graph` (the default: the step
captured with the all-reduce inside), `_ddp_eager`, and for the precisions `--ddp-compile` names
`_ddp_compiled` (train.compile=true with `--compile-mode`). `--plain-compile`
adds the compiled anchor: the plain loop with G and D under torch.compile(mode="reduce-overhead").

Prints a table, then one JSON line: `<arch>_ratio_<device>[_<precision>]` =
trainer images/s / plain fp32 images/s, `<arch>_ddp_graph_vs_graph_<precision>` (goal >= 0.9),
`<arch>_default_vs_plain_compiled` (goal >= 1.2), and the absolute figures behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.variants import parse_variant  # noqa: E402
from distgan.config import load_config  # noqa: E402
from distgan.data.shards import write_shards  # noqa: E402
from distgan.data.sources import RawDataset, RawSplit  # noqa: E402
from distgan.models import build_discriminator, build_generator  # noqa: E402

CONFIGS = {"dcgan28": "configs/mnist_dcgan.yaml", "dcgan64": "configs/celeba64_dcgan.yaml",
           "resnet32": "configs/resnet32.yaml", "resnet128": "configs/resnet128.yaml",
           "stylegan2": "configs/stylegan2_32.yaml"}  # stylegan2: bench/stylegan2.py --trainer (its own plain loop)
SHAPES = {"dcgan28": (1, 28, 28), "dcgan64": (3, 64, 64), "resnet32": (3, 32, 32), "resnet128": (3, 128, 128),
          "stylegan2": (1, 28, 28)}


def synthetic_shards(arch: str, out: Path, n: int) -> Path:
    """Random images of the arch's shape: speed does not depend on the pixels."""
    c, h, w = SHAPES[arch]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    raw = RawDataset(f"synthetic-{arch}", h, w, c, [], {"train": RawSplit(np.full(n, -1), lambda i: images[i])})
    write_shards(raw, out, samples_per_shard=max(n // 4, 1))
    return out


def baseline_shards(repo: Path, arch: str, out: Path, n: int) -> Path:
    """The same synthetic shards written by another checkout's own writer (its shard format may be older)."""
    code = ("import importlib.util, pathlib; "
            f"spec = importlib.util.spec_from_file_location('bench_train', {str(repo / 'bench' / 'train.py')!r}); "
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
            f"bench.synthetic_shards({arch!r}, pathlib.Path({str(out)!r}), {n})")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=repo, capture_output=True)
    return out


# One DDP rank: DDP's machinery without a second GPU (NCCL on a GPU, gloo on a CPU).
TORCHRUN_ONE_RANK = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]


def plain_loop(arch: str, batch: int, steps: int, warmup: int, device: torch.device,
               compile_mode: str | None = None) -> float:
    """The pytorch/examples DCGAN step, fp32; images/s over `steps` after `warmup`. `compile_mode`: G and D
    under torch.compile in that mode (the compiled anchor)."""
    cfg = load_config(REPO / CONFIGS[arch])
    c, h, w = SHAPES[arch]
    G = build_generator(cfg.model, c, h, w, 0).to(device)
    D = build_discriminator(cfg.model, c, h, w, 0).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=tuple(cfg.optim.g_betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=tuple(cfg.optim.d_betas))
    if compile_mode:
        G, D = torch.compile(G, mode=compile_mode), torch.compile(D, mode=compile_mode)
    data = torch.rand(8, batch, c, h, w, device=device) * 2 - 1
    ones = torch.ones(batch, device=device)
    zeros = torch.zeros(batch, device=device)
    if cfg.loss.kind == "hinge":  # the ResNet family's loss (SNGAN): the same step with hinge terms
        real_loss = lambda logits: torch.relu(1 - logits).mean()  # noqa: E731
        fake_loss = lambda logits: torch.relu(1 + logits).mean()  # noqa: E731
        g_loss = lambda logits: -logits.mean()  # noqa: E731
    else:
        criterion = torch.nn.BCEWithLogitsLoss()
        real_loss = g_loss = lambda logits: criterion(logits, ones)  # noqa: E731
        fake_loss = lambda logits: criterion(logits, zeros)  # noqa: E731

    def step(i: int) -> None:
        if compile_mode == "reduce-overhead":  # a new iteration: the compiled graphs' earlier outputs are dead
            torch.compiler.cudagraph_mark_step_begin()
        real = data[i % len(data)]
        D.zero_grad()
        real_loss(D(real).view(-1)).backward()
        fake = G(torch.randn(batch, cfg.model.nz, device=device))
        fake_loss(D(fake.detach()).view(-1)).backward()
        opt_d.step()
        G.zero_grad()
        g_loss(D(fake).view(-1)).backward()
        opt_g.step()

    for i in range(warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def plain_run(arch: str, batch: int, steps: int, warmup: int, device: torch.device,
              compile_mode: str | None = None) -> float:
    """`plain_loop` in a fresh process, as the trainer's turn is: neither turn runs in a process the other has
    used. (Run in this process, the plain loop left gigabytes of ResNet-128 activations in its heap, and the
    trainer's next turn ran slower than before it.)"""
    code = ("import importlib.util, sys, torch; "
            f"spec = importlib.util.spec_from_file_location('bench_train', {str(Path(__file__).resolve())!r}); "
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
            f"print(bench.plain_loop({arch!r}, {batch}, {steps}, {warmup}, torch.device({str(device)!r}), "
            f"{compile_mode!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError((out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1])
    return float(out.stdout.strip().splitlines()[-1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_run(arch: str, tag: str, overrides: list[str], data: Path, batch: int, steps: int, warmup: int,
                workers: int, run_dir: Path, repo: Path = REPO, launcher: tuple[str, ...] = (sys.executable,)) -> float:
    """distgan's trainer (of the checkout `repo`) as users run it, started by `launcher`; median images/s of the
    log intervals after the first."""
    name = f"{arch}-{tag}"
    interval = max(steps // 5, 1)
    total = warmup + 5 * interval
    cmd = [*launcher, str(repo / "distgan" / "train.py"), "--config", str(repo / CONFIGS[arch]),
           f"name={name}", f"run_dir={run_dir}", f"data.path={data}", f"data.batch_size={batch}",
           f"data.num_workers={workers}", f"train.steps={total}", f"train.log_every={interval}",
           f"train.sample_every={10**9}", f"train.checkpoint_every={10**9}",
           "log.log_with=none", "train.resume=none", "loss.d_steps=1", *overrides]  # one D step, as the plain loop
    if warmup % interval:
        raise SystemExit(f"--warmup {warmup} must be a multiple of the log interval {interval}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    subprocess.run(cmd, check=True, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
    timed = [line["perf/images_per_s"] for line in lines if line["step"] > warmup]
    return statistics.median(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--archs", default="dcgan28,dcgan64")
    parser.add_argument("--precisions", default="no", help="trainer mixed_precision values, e.g. no,bf16")
    parser.add_argument("--compile", action="store_true", help="also time the trainer with train.compile=true")
    parser.add_argument("--compile-mode", default="default", help="train.compile_mode for --compile")
    parser.add_argument("--eager", action="store_true", help="also time the trainer with train.cuda_graph=false "
                        "(on one GPU the default replays the whole step as one CUDA graph)")
    parser.add_argument("--ddp", action="store_true", help="also time each precision under DDP on one rank "
                        "(torchrun): _ddp_graph (the step captured with its all-reduce) and _ddp_eager")
    parser.add_argument("--ddp-compile", default="", metavar="PRECISIONS", help="with --ddp, also time these "
                        "precisions (e.g. no,bf16) with train.compile=true under DDP: _ddp_compiled")
    parser.add_argument("--plain-compile", action="store_true", help="also time the plain loop with G and D under "
                        "torch.compile(mode='reduce-overhead'): the compiled anchor")
    parser.add_argument("--variant", action="append", default=[], metavar="TAG:KEY=VALUE,...",
                        help="one more trainer variant, e.g. nchw:train.channels_last=false (repeatable)")
    parser.add_argument("--baseline-repo", type=Path, help="also time the trainer of another distgan checkout "
                        "(e.g. a worktree of the commit before a change) in the same turns, as variant 'baseline'")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=0, help="plain loop and trainer take turns this many times; "
                        "medians are reported (default: 3 on CPU, whose speed drifts between runs; 1 on CUDA)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default: 40 on CPU, 400 on CUDA)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers for the trainer (default: 1 on "
                        "CPU, whose cores the step needs; 4 on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (400 if device.type == "cuda" else 40)
    warmup = max(steps // 5, 1)
    workers = args.workers or (4 if device.type == "cuda" else 1)
    args.rounds = args.rounds or (1 if device.type == "cuda" else 3)
    variants = [("fp32" if p == "no" else p, [f"train.mixed_precision={p}"]) for p in args.precisions.split(",")]
    precisions = list(variants)
    repos = {"baseline": args.baseline_repo.resolve()} if args.baseline_repo else {}
    compiled = ["train.compile=true", f"train.compile_mode={args.compile_mode}"]
    if args.compile:
        variants += [(f"{tag}_compiled", [*o, *compiled]) for tag, o in variants]
    if args.eager:
        variants += [(f"{tag}_eager", [*o, "train.cuda_graph=false"]) for tag, o in variants if "compiled" not in tag]
    if args.baseline_repo:  # the other checkout's trainer with its own defaults, fp32
        variants.append(("baseline", ["train.mixed_precision=no"]))
    variants += [parse_variant(spec) for spec in args.variant]
    launchers = {}
    if args.ddp:
        for tag, o in precisions:
            ddp = [(f"{tag}_ddp_graph", o), (f"{tag}_ddp_eager", [*o, "train.cuda_graph=false"])]
            if o[0].split("=")[1] in args.ddp_compile.split(","):
                ddp.append((f"{tag}_ddp_compiled", [*o, *compiled]))
            variants += ddp
            launchers.update({ddp_tag: tuple(TORCHRUN_ONE_RANK) for ddp_tag, _ in ddp})
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    hardware = torch.cuda.get_device_name(0) if device.type == "cuda" else _cpu_name()
    print(f"{date.today()}  {hardware}  torch {torch.__version__}  batch {args.batch}  "
          f"{steps} timed steps after {warmup} warm-up, {args.rounds} round(s)", flush=True)

    results: dict[str, object] = {"date": str(date.today()), "hardware": hardware, "torch": torch.__version__,
                                  "batch": args.batch, "device": device.type, "loader_workers": workers,
                                  "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in args.archs.split(","):
            n = args.batch * 40 if device.type == "cuda" else args.batch * 10
            data = synthetic_shards(arch, tmp / f"data-{arch}", n)
            datas = {tag: baseline_shards(repo, arch, tmp / f"data-{arch}-{tag}", n) for tag, repo in repos.items()}
            speeds: dict[str, list[float]] = {"plain": [], "plain_compiled": [], **{tag: [] for tag, _ in variants}}
            for round_ in range(args.rounds):  # plain and trainer take turns: a drift of the machine hits both
                speeds["plain"].append(plain_run(arch, args.batch, steps, warmup, device))
                print(f"{arch:8s} plain fp32 loop        {speeds['plain'][-1]:10.2f} img/s  (round {round_ + 1})",
                      flush=True)
                if args.plain_compile:
                    try:
                        speeds["plain_compiled"].append(plain_run(arch, args.batch, steps, warmup, device,
                                                                  compile_mode="reduce-overhead"))
                    except Exception as exc:  # inductor/cudagraph-tree failures must not hide the trainer's figures
                        print(f"{arch:8s} plain compiled loop    FAILED: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300]}", flush=True)
                        results[f"{arch}_plain_compiled_failed"] = True
                    else:
                        print(f"{arch:8s} plain compiled loop    {speeds['plain_compiled'][-1]:10.1f} img/s  "
                              f"(reduce-overhead, round {round_ + 1})", flush=True)
                for tag, overrides in variants:
                    try:
                        speeds[tag].append(trainer_run(arch, tag, overrides, datas.get(tag, data), args.batch, steps,
                                                       warmup, workers, tmp / f"runs-{round_}", repos.get(tag, REPO),
                                                       launchers.get(tag, (sys.executable,))))
                    except subprocess.CalledProcessError as exc:  # one broken variant must not hide the others
                        print(f"{arch:8s} distgan {tag:14s} FAILED (exit {exc.returncode}):\n"
                              + "\n".join(exc.stderr.splitlines()[-15:]), flush=True)
                        continue
                    print(f"{arch:8s} distgan {tag:14s} {speeds[tag][-1]:10.2f} img/s  (round {round_ + 1})",
                          flush=True)
            plain = statistics.median(speeds["plain"])
            results[f"{arch}_plain_fp32_img_s"] = round(plain, 2)
            print(f"{arch:8s} plain fp32 loop        {plain:10.2f} img/s  (median of {args.rounds})", flush=True)
            for tag, _ in variants:
                if not speeds[tag]:
                    results[f"{arch}_trainer_{tag}_failed"] = True
                    continue
                speed = statistics.median(speeds[tag])
                ratio = speed / plain
                results[f"{arch}_trainer_{tag}_img_s"] = round(speed, 2)
                key = f"{arch}_ratio_{device.type}" + ("" if tag == "fp32" else f"_{tag}")
                results[key] = round(ratio, 3)
                print(f"{arch:8s} distgan {tag:14s} {speed:10.2f} img/s  {ratio:5.2f}x plain fp32 (medians)",
                      flush=True)
            results.update(goal_ratios(arch, results, speeds))
    print(json.dumps(results))


def goal_ratios(arch: str, results: dict[str, object], speeds: dict[str, list[float]]) -> dict[str, float]:
    """Issue 30's goals: the graphed DDP step per GPU against the one-process graph (>= 0.9x), and the trainer's
    default fp32 step against the compiled plain loop (>= 1.2x)."""
    ratios = {}
    for key, value in list(results.items()):
        prefix, suffix = f"{arch}_trainer_", "_ddp_graph_img_s"
        if key.startswith(prefix) and key.endswith(suffix):
            precision = key[len(prefix):-len(suffix)]
            single = results.get(f"{arch}_trainer_{precision}_img_s")
            if single:
                ratios[f"{arch}_ddp_graph_vs_graph_{precision}"] = round(value / single, 3)
    if speeds.get("plain_compiled"):
        anchor = statistics.median(speeds["plain_compiled"])
        ratios[f"{arch}_plain_compiled_img_s"] = round(anchor, 1)
        if results.get(f"{arch}_trainer_fp32_img_s"):
            ratios[f"{arch}_default_vs_plain_compiled"] = round(results[f"{arch}_trainer_fp32_img_s"] / anchor, 3)
    for key, value in ratios.items():
        print(f"{arch:8s} {key:40s} {value}", flush=True)
    return ratios


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
