"""CPU inference: onnxruntime fp32 and int8 against torch eager, DCGAN-64, DCGAN-28 and ResNet-128 generators.

One run measures everything on this machine: images/s and median latency at batch 1,
64 and 256, and the machine's fp32 matrix-multiply peak (best of torch and numpy GEMMs),
so the generator's achieved GFLOP/s can be read as a share of it. FLOPs are counted on
the original generator (torch's FlopCounterMode), not on the rewritten export, so the
share is of useful work. Prints a table, then one JSON line.

    python bench/infer.py [--threads N] [--seconds S] [--models dcgan64,dcgan28,resnet128] [--batches 1,64,256]

The first model named is the one the JSON's headline ratios describe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from threadpoolctl import threadpool_limits
from torch.utils.flop_counter import FlopCounterMode

from distgan.artifacts import save_generator
from distgan.export import export_onnx
from distgan.models import ModelConfig, build_generator
from distgan.models.resnet import ResNetConfig

BATCHES = (1, 64, 256)
# The paper architectures at their usual width: CelebA DCGAN-64, the Fashion-MNIST DCGAN-28, and
# configs/resnet128.yaml's BigGAN-style G (attention at 64 px, hierarchical z).
MODELS = {"dcgan64": (ModelConfig(arch="dcgan64", nz=100, ngf=64), (3, 64, 64)),
          "dcgan28": (ModelConfig(arch="dcgan28", nz=100, ngf=64), (1, 28, 28)),
          "resnet128": (ResNetConfig(arch="resnet", nz=120, ngf=64, attention_res=64, hier_z=True), (3, 128, 128))}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def alternating_medians(runs: dict[str, Callable[[], object]], seconds: float, block: float = 0.25,
                        min_rounds: int = 3, long_call: float = 5.0) -> dict[str, float]:
    """Median wall time of each run, the engines taking turns in blocks of ~`block` seconds, for about
    `seconds` per run in all, after two warm-up calls each (at least `min_rounds` turns).

    Taking turns keeps the ratios fair when something else on the machine comes and goes. Turns
    are blocks, not single calls, and each block's first call is not timed: right after one
    engine's call, its worker threads still spin for a while (OpenMP's and onnxruntime's thread
    pools both busy-wait before sleeping) and take the cores from the next engine. Timed call by
    call, that cross-talk made torch at batch 1 2.2x slower and onnxruntime 1.7x (DCGAN-64, 2 cores)
    than either runs alone, which is how users run them.

    Calls of over `long_call` seconds (a batch of 64 at 128 px takes tens of seconds on 2 cores) get one
    warm-up call and no switch-over call: a few milliseconds of spinning threads are noise at that size,
    and the extra calls would double the run.
    """
    long_calls = False
    for run in runs.values():
        long_calls |= _timed(run) > long_call
        if not long_calls:
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < seconds * len(runs):
        for name, run in runs.items():
            if not long_calls:
                run()  # the switch-over call, while the other engine's threads wind down
            block_start = time.perf_counter()
            while True:
                times[name].append(_timed(run))
                if time.perf_counter() - block_start >= block:
                    break
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best fp32 GEMM rate of torch (MKL/oneDNN) and numpy (its BLAS) on n x n matrices."""
    a = torch.randn(n, n)
    an = a.numpy()
    rates = {}
    for name, run in (("torch", lambda: torch.mm(a, a)), ("numpy", lambda: an @ an)):
        run()
        best = min(_timed(run) for _ in range(repeats))
        rates[name] = 2 * n**3 / best / 1e9
    return rates


def _timed(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def prepared_generator(cfg: ModelConfig, shape: tuple[int, int, int], directory: Path) -> torch.nn.Module:
    """A generator whose images span [-1, 1] as a trained one's do, saved as a generator/ directory.

    DCGAN's N(0, 0.02) init gives images of ~1e-3, at which the int8 error means nothing:
    the last layer is scaled so the value before tanh has unit spread.
    """
    torch.manual_seed(0)
    generator = build_generator(cfg, *shape, 0)
    last = [m for m in generator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        generator(torch.randn(64, cfg.nz))  # train mode: running statistics as after training
        generator.eval()
        if not torch.nn.utils.parametrize.is_parametrized(last):  # the ResNet's orthogonal init is of order 1
            spread = torch.atanh(generator(torch.randn(64, cfg.nz)).clamp(-0.999, 0.999)).std()
            last.weight /= spread
            last.bias /= spread
    save_generator(generator, directory, {"step": 0, "dataset": "benchmark", "classes": [],
                                          "image_shape": list(shape), "config_hash": "-",
                                          "distgan_version": "bench"})
    return generator


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, tmp: Path, threads: int, seconds: float, batches: tuple[int, ...],
                with_int8: bool = True) -> dict:
    cfg, shape = MODELS[name]
    generator = prepared_generator(cfg, shape, tmp / name)
    # no_grad, not inference_mode: FlopCounterMode under inference_mode loses a parametrized module's
    # weight (the ResNet's spectral norm: "'ParametrizedLinear' object has no attribute 'weight'").
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        generator(torch.randn(1, cfg.nz))
    gflop = counter.get_total_flops() / 1e9
    fp32 = export_onnx(tmp / name, tmp / f"{name}.onnx")
    sessions = {"ort_fp32": ort_session(fp32.path, threads)}
    int8 = export_onnx(tmp / name, tmp / f"{name}-int8.onnx", quantize="int8") if with_int8 else None
    if int8 is not None:
        sessions["ort_int8"] = ort_session(int8.path, threads)
    rows = {}
    for batch in batches:
        z = np.random.default_rng(batch).standard_normal((batch, cfg.nz), dtype=np.float32)
        zt = torch.from_numpy(z)

        def eager() -> torch.Tensor:
            with torch.inference_mode():
                return generator(zt)

        runs = {"torch_eager": eager, **{k: (lambda s=s: s.run(["images"], {"z": z})) for k, s in sessions.items()}}
        for engine, latency in alternating_medians(runs, seconds).items():
            rows[f"{engine}_b{batch}"] = {"images_per_s": batch / latency, "latency_ms": latency * 1e3,
                                          "gflops": gflop * batch / latency}
    q = int8.quantization if int8 is not None else None
    return {"gflop_per_image": gflop, "rows": rows, "fp32_parity": fp32.max_abs_diff,
            "int8_max_abs": q and q.max_abs, "int8_mean_abs": q and q.mean_abs, "exporter": fp32.exporter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=physical_cores(), help="default: physical cores")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per engine and batch (after warm-up)")
    parser.add_argument("--models", default="dcgan64,dcgan28", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--no-int8", action="store_true",
                        help="fp32 engines only (quantising and timing int8 at 128 px costs minutes)")
    args = parser.parse_args()
    names, batches = args.models.split(","), tuple(int(b) for b in args.batches.split(","))
    torch.set_num_threads(args.threads)
    # numpy's BLAS (one of the two peak GEMMs) would otherwise use every core whatever --threads says.
    threadpool_limits(limits=args.threads, user_api="blas")
    # The peak is measured before, between and after the models and the best kept: on a
    # shared machine a single measurement can be caught by someone else's burst.
    peaks = [matmul_peak_gflops()]
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for name in names:
            results[name] = bench_model(name, Path(tmpdir), args.threads, args.seconds, batches, not args.no_int8)
            peaks.append(matmul_peak_gflops())
    peak = {engine: max(p[engine] for p in peaks) for engine in peaks[0]}
    peak_gflops = max(peak.values())
    print(f"\nfp32 matmul peak: {peak_gflops:.1f} GFLOP/s (torch {peak['torch']:.1f}, numpy {peak['numpy']:.1f}); "
          f"{args.threads} threads, {cpu_name()}")
    print(f"{'model':<8} {'engine':<12} {'batch':>5} {'images/s':>10} {'latency ms':>11} {'GFLOP/s':>8} "
          f"{'% peak':>7} {'vs torch':>8}")
    for name, res in results.items():
        rows = res["rows"]
        for engine in ("torch_eager", "ort_fp32", "ort_int8"):
            for batch in batches:
                if f"{engine}_b{batch}" not in rows:
                    continue
                row = rows[f"{engine}_b{batch}"]
                ratio = row["images_per_s"] / rows[f"torch_eager_b{batch}"]["images_per_s"]
                share = f"{100 * row['gflops'] / peak_gflops:6.0f}%" if engine != "ort_int8" else "      -"
                print(f"{name:<8} {engine:<12} {batch:>5} {row['images_per_s']:>10,.0f} {row['latency_ms']:>11.2f} "
                      f"{row['gflops']:>8.1f} {share} {ratio:>7.2f}x")
        int8 = ("" if res["int8_max_abs"] is None else f"; int8 vs torch: max |diff| {res['int8_max_abs']:.3f}, "
                f"mean {res['int8_mean_abs']:.4f} (images in [-1, 1])")
        print(f"{name:<8} {res['gflop_per_image']:.3f} GFLOP/image; fp32 parity {res['fp32_parity']:.1e}{int8}")
    main_rows = results[names[0]]["rows"]

    def speed(key: str) -> float:
        return main_rows[key]["images_per_s"]

    def ratio(key: str, over: str) -> float | None:
        return round(speed(key) / speed(over), 2) if key in main_rows and over in main_rows else None

    figures = {
        "ort_vs_torch_b1": ratio("ort_fp32_b1", "torch_eager_b1"),
        "ort_vs_torch_b64": ratio("ort_fp32_b64", "torch_eager_b64"),
        "matmul_peak_share_b64": (round(main_rows["ort_fp32_b64"]["gflops"] / peak_gflops, 3)
                                  if "ort_fp32_b64" in main_rows else None),
        "int8_vs_fp32_b64": ratio("ort_int8_b64", "ort_fp32_b64"), "model": names[0],
        "matmul_peak_gflops": round(peak_gflops, 1),
        "images_per_s": {name: {k: round(v["images_per_s"], 1) for k, v in res["rows"].items()}
                         for name, res in results.items()},
        "int8_max_abs": {name: res["int8_max_abs"] and round(res["int8_max_abs"], 4) for name, res in results.items()},
        "gflop_per_image": {name: round(res["gflop_per_image"], 4) for name, res in results.items()},
        "threads": args.threads, "cores": os.cpu_count(), "cpu": cpu_name(), "torch": torch.__version__,
        "onnxruntime": ort.__version__, "date": str(date.today()),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
