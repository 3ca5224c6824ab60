"""CPU inference: onnxruntime fp32 and int8 against torch eager, DCGAN-64 and DCGAN-28 generators.

One run measures everything on this machine: images/s and median latency at batch 1,
64 and 256, and the machine's fp32 matrix-multiply peak (best of torch and numpy GEMMs),
so the generator's achieved GFLOP/s can be read as a share of it. FLOPs are counted on
the original generator (torch's FlopCounterMode), not on the rewritten export, so the
share is of useful work. Prints a table, then one JSON line.

    python bench/infer.py [--threads N] [--seconds S]
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
from torch.utils.flop_counter import FlopCounterMode

from distgan.checkpoint import save_generator
from distgan.export import export_onnx
from distgan.models import ModelConfig, build_generator

BATCHES = (1, 64, 256)
# The paper architectures at their usual width: CelebA DCGAN-64 and the Fashion-MNIST DCGAN-28.
MODELS = {"dcgan64": (ModelConfig(arch="dcgan64", nz=100, ngf=64), (3, 64, 64)),
          "dcgan28": (ModelConfig(arch="dcgan28", nz=100, ngf=64), (1, 28, 28))}


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


def median_seconds(run: Callable[[], object], seconds: float, min_runs: int = 5, max_runs: int = 200) -> float:
    """Median wall time of `run` after two warm-up calls, repeated for about `seconds`."""
    run()
    run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    """A DCGAN-initialised generator with used BatchNorm statistics, saved as a generator/ directory."""
    torch.manual_seed(0)
    generator = build_generator(cfg, *shape, 0)
    with torch.no_grad():
        generator(torch.randn(256, cfg.nz))  # train mode: running statistics as after training
    generator.eval()
    save_generator(generator, directory, {"step": 0, "dataset": "benchmark", "classes": [],
                                          "image_shape": list(shape), "config_hash": "-",
                                          "distgan_version": "bench"})
    return generator


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, tmp: Path, threads: int, seconds: float) -> dict:
    cfg, shape = MODELS[name]
    generator = prepared_generator(cfg, shape, tmp / name)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        generator(torch.randn(1, cfg.nz))
    gflop = counter.get_total_flops() / 1e9
    fp32 = export_onnx(tmp / name, tmp / f"{name}.onnx")
    int8 = export_onnx(tmp / name, tmp / f"{name}-int8.onnx", quantize="int8")
    sessions = {"ort_fp32": ort_session(fp32.path, threads), "ort_int8": ort_session(int8.path, threads)}
    rows = {}
    for batch in BATCHES:
        z = np.random.default_rng(batch).standard_normal((batch, cfg.nz), dtype=np.float32)
        zt = torch.from_numpy(z)

        def eager() -> torch.Tensor:
            with torch.inference_mode():
                return generator(zt)

        runs = {"torch_eager": eager, **{k: (lambda s=s: s.run(["images"], {"z": z})) for k, s in sessions.items()}}
        for engine, run in runs.items():
            latency = median_seconds(run, seconds)
            rows[f"{engine}_b{batch}"] = {"images_per_s": batch / latency, "latency_ms": latency * 1e3,
                                          "gflops": gflop * batch / latency}
    q = int8.quantization
    return {"gflop_per_image": gflop, "rows": rows, "fp32_parity": fp32.max_abs_diff,
            "int8_max_abs": q.max_abs, "int8_mean_abs": q.mean_abs, "exporter": fp32.exporter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=physical_cores(), help="default: physical cores")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (after warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops()
    with tempfile.TemporaryDirectory() as tmpdir:
        results = {name: bench_model(name, Path(tmpdir), args.threads, args.seconds) for name in MODELS}
    peak_gflops = max(peak.values())
    print(f"\nfp32 matmul peak: {peak_gflops:.1f} GFLOP/s (torch {peak['torch']:.1f}, numpy {peak['numpy']:.1f}); "
          f"{args.threads} threads, {cpu_name()}")
    print(f"{'model':<8} {'engine':<12} {'batch':>5} {'images/s':>10} {'latency ms':>11} {'GFLOP/s':>8} "
          f"{'% peak':>7} {'vs torch':>8}")
    for name, res in results.items():
        rows = res["rows"]
        for engine in ("torch_eager", "ort_fp32", "ort_int8"):
            for batch in BATCHES:
                row = rows[f"{engine}_b{batch}"]
                ratio = row["images_per_s"] / rows[f"torch_eager_b{batch}"]["images_per_s"]
                share = f"{100 * row['gflops'] / peak_gflops:6.0f}%" if engine != "ort_int8" else "      -"
                print(f"{name:<8} {engine:<12} {batch:>5} {row['images_per_s']:>10,.0f} {row['latency_ms']:>11.2f} "
                      f"{row['gflops']:>8.1f} {share} {ratio:>7.2f}x")
        print(f"{name:<8} {res['gflop_per_image']:.3f} GFLOP/image; fp32 parity {res['fp32_parity']:.1e}; int8 vs "
              f"torch: max |diff| {res['int8_max_abs']:.3f}, mean {res['int8_mean_abs']:.4f} (images in [-1, 1])")
    main_rows = results["dcgan64"]["rows"]

    def speed(key: str) -> float:
        return main_rows[key]["images_per_s"]

    figures = {
        "ort_vs_torch_b1": round(speed("ort_fp32_b1") / speed("torch_eager_b1"), 2),
        "ort_vs_torch_b64": round(speed("ort_fp32_b64") / speed("torch_eager_b64"), 2),
        "matmul_peak_share_b64": round(main_rows["ort_fp32_b64"]["gflops"] / peak_gflops, 3),
        "int8_vs_fp32_b64": round(speed("ort_int8_b64") / speed("ort_fp32_b64"), 2),
        "matmul_peak_gflops": round(peak_gflops, 1),
        "images_per_s": {name: {k: round(v["images_per_s"], 1) for k, v in res["rows"].items()}
                         for name, res in results.items()},
        "int8_max_abs": {name: round(res["int8_max_abs"], 4) for name, res in results.items()},
        "gflop_per_image": {name: round(res["gflop_per_image"], 4) for name, res in results.items()},
        "threads": args.threads, "cores": os.cpu_count(), "cpu": cpu_name(), "torch": torch.__version__,
        "onnxruntime": ort.__version__, "date": str(date.today()),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
