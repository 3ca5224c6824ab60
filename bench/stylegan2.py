"""StyleGAN2 on CPU: what the networks cost, and onnxruntime against torch eager.

For the 32 px and 128 px networks of configs/stylegan2_32.yaml and configs/stylegan2_128.yaml (RGB, unconditional):
- parameters of G and D; GFLOP per image of G's forward, D's forward and G's forward + backward
  (torch's FlopCounterMode; a multiply-add is 2 FLOPs);
- images/s of G's forward (eval, the stored noise) and of G's forward + backward (training mode), and the
  achieved GFLOP/s of the latter as a share of this machine's fp32 GEMM peak (best of torch and numpy);
- at 128 px: the ONNX export (every input: z, psi, z2, mix_layer) in onnxruntime fp32 against torch eager,
  batch 1 and 64, the two taking turns (bench/infer.py's alternating medians);
- `--trainer`: distgan's trainer (configs/stylegan2_32.yaml narrowed to CPU size, augmentation off, synthetic
  28x28 shards) against a plain PyTorch loop of the same networks and regularisers (non-saturating loss, R1
  every 16 D steps, path length every 4 G steps on half the batch, style mixing 0.9, the EMA), fp32, its
  batches premade in memory; `--rounds` turns each, medians compared.
Prints a table, then one JSON line.

    python bench/stylegan2.py [--threads N] [--seconds S] [--sizes 32 128] [--ort-batches 1 64]
    python bench/stylegan2.py --trainer [--rounds 3] [--batch 16] [--steps 40] --sizes --ort-batches
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.infer import alternating_medians, cpu_name, matmul_peak_gflops, ort_session, physical_cores  # noqa: E402
from bench.train import synthetic_shards, trainer_run  # noqa: E402
from distgan.config import load_config  # noqa: E402
from distgan.losses import path_length_penalty, r1_penalty  # noqa: E402
from distgan.artifacts import save_generator  # noqa: E402
from distgan.export import export_onnx  # noqa: E402
from distgan.models import get_family  # noqa: E402
from distgan.models.stylegan2 import (PL_BATCH_SHRINK, PL_DECAY, StyleGAN2Discriminator,  # noqa: E402
                                      StyleGAN2Generator, StyleGAN2Spec)

# The networks of configs/stylegan2_{32,128}.yaml (stylegan2-ada-pytorch's "auto" widths below 512 px).
SPECS = {size: StyleGAN2Spec(arch="stylegan2", nz=512, w_dim=512, mapping_layers=2, mapping_lr=0.01,
                             channel_base=16384, channel_max=512, mbstd_group=4, channels=3, height=size,
                             width=size, num_classes=0, conditional=False) for size in (32, 128)}


def gflop(run) -> float:
    with FlopCounterMode(display=False) as counter:  # (grad mode on: the tracker needs autograd nodes)
        run()
    return counter.get_total_flops() / 1e9


def best_time(run, repeats: int = 3) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def cost(spec: StyleGAN2Spec, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    G, D = StyleGAN2Generator(spec, style_mixing=0.9), StyleGAN2Discriminator(spec)
    z, images = torch.randn(batch, spec.nz), torch.randn(batch, spec.channels, spec.height, spec.width)

    def forward() -> None:
        with torch.inference_mode():
            G.eval()(z)

    def forward_backward() -> None:
        G.train()(z).square().mean().backward()

    g_fwd = gflop(lambda: G.eval()(z[:1]))
    g_train = gflop(lambda: G.train()(z[:1]).square().mean().backward())
    d_fwd = gflop(lambda: D(images[:1]))
    fwd_s, train_s = best_time(forward), best_time(forward_backward)
    return {"g_params_m": sum(p.numel() for p in G.parameters()) / 1e6,
            "d_params_m": sum(p.numel() for p in D.parameters()) / 1e6,
            "g_gflop": g_fwd, "d_gflop": d_fwd, "g_train_gflop": g_train,
            "g_images_per_s": batch / fwd_s, "g_train_images_per_s": batch / train_s,
            "g_train_gflops": g_train * batch / train_s}


def onnx_vs_torch(spec: StyleGAN2Spec, batches: list[int], threads: int, seconds: float) -> dict[str, dict]:
    """The export's images/s against torch eager on the same inputs (psi 0.7, mixing at layer 4)."""
    torch.manual_seed(0)
    G = StyleGAN2Generator(spec).eval()
    rows = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        save_generator(G, Path(tmpdir) / "generator", {"step": 0, "dataset": "benchmark", "classes": [],
                                                        "image_shape": [spec.channels, spec.height, spec.width],
                                                        "config_hash": "-", "distgan_version": "bench"})
        result = export_onnx(Path(tmpdir) / "generator", Path(tmpdir) / "g.onnx")
        exporter, parity = result.exporter, result.parity
        session = ort_session(result.path, threads)
        for batch in batches:
            rng = np.random.default_rng(batch)
            feeds = {"z": rng.standard_normal((batch, spec.nz), dtype=np.float32),
                     "psi": np.full(batch, 0.7, np.float32),
                     "z2": rng.standard_normal((batch, spec.nz), dtype=np.float32),
                     "mix_layer": np.full(batch, 4, np.int64)}
            tensors = [torch.from_numpy(v) for v in feeds.values()]

            def eager() -> torch.Tensor:
                with torch.inference_mode():
                    return G(*tensors)

            medians = alternating_medians({"torch_eager": eager, "ort_fp32": lambda: session.run(["images"], feeds)},
                                          seconds, min_rounds=2)
            rows[f"b{batch}"] = {k: batch / v for k, v in medians.items()}
    return {"rows": rows, "exporter": exporter, "parity": max(parity.values())}


# The CPU-sized network both sides of --trainer train: configs/stylegan2_32.yaml narrowed, augmentation off.
TRAINER_OVERRIDES = ["model.channel_base=512", "model.channel_max=32", "model.nz=64", "model.w_dim=64",
                     "aug.policy=''", "aug.adaptive=false"]


def plain_loop(batch: int, steps: int, warmup: int) -> float:
    """StyleGAN2's training step written plainly (stylegan2-ada's phases, one D and one G update per step);
    images/s over `steps` after `warmup`."""
    cfg = load_config(REPO / "configs/stylegan2_32.yaml", ["data.path=unused", *TRAINER_OVERRIDES])
    family, loss = get_family("stylegan2"), cfg.loss
    g_spec = family.make_generator_spec(cfg.model, (1, 28, 28), 0)
    G, D = StyleGAN2Generator(g_spec, loss.style_mixing), StyleGAN2Discriminator(g_spec)
    ema = StyleGAN2Generator(g_spec).requires_grad_(False)
    ema.load_state_dict(G.state_dict())
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=tuple(cfg.optim.g_betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=tuple(cfg.optim.d_betas))
    data, pl_mean = torch.rand(8, batch, 1, 28, 28) * 2 - 1, torch.zeros(())

    def step(i: int) -> None:
        real, z = data[i % len(data)], torch.randn(batch, g_spec.nz)
        fake = G(z)
        loss_d = F.softplus(D(fake.detach())).mean() + F.softplus(-D(real)).mean()
        if i % loss.r1_every == 0:
            loss_d = loss_d + loss.r1_every * r1_penalty(D, real, None, loss.r1_gamma)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        D.requires_grad_(False)
        loss_g = F.softplus(-D(fake)).mean()
        if i % loss.pl_every == 0:
            images, ws = G(z[:batch // PL_BATCH_SHRINK], return_ws=True)
            loss_g = loss_g + loss.pl_weight * loss.pl_every * path_length_penalty(images, ws, pl_mean, PL_DECAY)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(G.parameters()), 1 - cfg.optim.ema_decay)

    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return steps * batch / (time.perf_counter() - start)


def trainer_vs_plain(batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Medians over `rounds` turns of each: images/s of the trainer and of the plain loop."""
    speeds: dict[str, list[float]] = {"trainer": [], "plain": []}
    warmup = steps // 5
    with tempfile.TemporaryDirectory() as tmpdir:
        data = synthetic_shards("stylegan2", Path(tmpdir) / "data", 20 * batch)
        for r in range(rounds):
            speeds["plain"].append(plain_loop(batch, steps, warmup))
            speeds["trainer"].append(trainer_run("stylegan2", f"r{r}", TRAINER_OVERRIDES, data, batch, steps, warmup,
                                                 0, Path(tmpdir) / "runs"))
    return {k: statistics.median(v) for k, v in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=physical_cores(), help="default: physical cores")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per engine and batch (after warm-up)")
    parser.add_argument("--cost-batch", type=int, default=8, help="batch of the images/s figures (default 8)")
    parser.add_argument("--ort-batches", type=int, nargs="*", default=[1, 64], help="at 128 px; none to skip")
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 128], choices=sorted(SPECS))
    parser.add_argument("--trainer", action="store_true", help="also: the trainer against a plain loop")
    parser.add_argument("--rounds", type=int, default=3, help="--trainer: turns of each")
    parser.add_argument("--batch", type=int, default=16, help="--trainer: batch size")
    parser.add_argument("--steps", type=int, default=40, help="--trainer: timed steps per turn (a fifth more first)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")
    peaks = [matmul_peak_gflops()]
    costs = {}
    for size in args.sizes:
        costs[size] = cost(SPECS[size], args.cost_batch)
        peaks.append(matmul_peak_gflops())
    peak = max(max(p.values()) for p in peaks)
    print(f"fp32 GEMM peak {peak:.1f} GFLOP/s; {args.threads} threads, {cpu_name()}")
    print(f"{'px':>4} {'G Mparams':>9} {'D Mparams':>9} {'G GFLOP':>8} {'D GFLOP':>8} {'G f+b GFLOP':>11} "
          f"{'G img/s':>8} {'G f+b img/s':>11} {'f+b % peak':>10}")
    for size, c in costs.items():
        print(f"{size:>4} {c['g_params_m']:>9.2f} {c['d_params_m']:>9.2f} {c['g_gflop']:>8.2f} {c['d_gflop']:>8.2f} "
              f"{c['g_train_gflop']:>11.2f} {c['g_images_per_s']:>8.2f} {c['g_train_images_per_s']:>11.2f} "
              f"{100 * c['g_train_gflops'] / peak:>9.0f}%")
    ort_rows = {}
    if args.ort_batches and 128 in SPECS:
        result = onnx_vs_torch(SPECS[128], args.ort_batches, args.threads, args.seconds)
        ort_rows = result["rows"]
        print(f"128 px ONNX ({result['exporter']}, parity {result['parity']:.1e}) vs torch eager, images/s:")
        for batch, row in ort_rows.items():
            print(f"  {batch:>4}: torch {row['torch_eager']:.2f}, onnxruntime {row['ort_fp32']:.2f} "
                  f"({row['ort_fp32'] / row['torch_eager']:.2f}x)")
    trainer = trainer_vs_plain(args.batch, args.steps, args.rounds) if args.trainer else {}
    if trainer:
        print(f"trainer {trainer['trainer']:.1f} images/s, plain loop {trainer['plain']:.1f} "
              f"({trainer['trainer'] / trainer['plain']:.2f}x), batch {args.batch}, CPU-sized network")
    figures = {
        "cost": {str(size): {k: round(v, 3) for k, v in c.items()} for size, c in costs.items()},
        "g_train_peak_share": {str(size): round(c["g_train_gflops"] / peak, 3) for size, c in costs.items()},
        "ort_vs_torch_128": {b: round(r["ort_fp32"] / r["torch_eager"], 2) for b, r in ort_rows.items()},
        "ort_images_per_s_128": {b: {k: round(v, 2) for k, v in r.items()} for b, r in ort_rows.items()},
        "trainer_vs_plain": round(trainer["trainer"] / trainer["plain"], 3) if trainer else None,
        "trainer_images_per_s": {k: round(v, 2) for k, v in trainer.items()},
        "matmul_peak_gflops": round(peak, 1), "threads": args.threads, "cores": os.cpu_count(), "cpu": cpu_name(),
        "torch": torch.__version__, "onnxruntime": ort.__version__, "date": str(date.today()),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
