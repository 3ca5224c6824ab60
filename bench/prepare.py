"""`distgan-data prepare folder`: throughput, peak memory, and the pixels of every image kind.

1. Throughput: N JPEGs of 512x384 -> 64x64 (center crop, Lanczos). A single-process PIL loop (open,
   convert("RGB"), crop, resize into one array) is timed in the same run beside distgan's scan (the
   validation pass that is also the only decode: read, sha256, EXIF, decode, crop, resize into the
   memory-mapped array) with 1 and with every worker, and the whole prepare (scan + shards).
2. Peak memory: `distgan-data prepare folder` as a child process on M tiny PNGs (and on M/10, to
   show it does not grow with M): the largest process's peak RSS (ru_maxrss of waited children).
3. Correctness: one row per image kind (tests/image_kinds.py), the mean absolute pixel difference
   from the kind's reference for distgan and for a naive `Image.open(f).convert("RGB")`.

Prints tables, then one JSON line with every figure.

    python bench/prepare.py [--jpegs 10000] [--tiny 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # image_kinds: the kinds and their references

from distgan.data.folders import FolderOptions, read_folder_dataset  # noqa: E402
from distgan.data.shards import write_shards  # noqa: E402
from image_kinds import GOOD_KINDS  # noqa: E402


def _write_jpegs(folder: str, start: int, stop: int) -> None:
    rng = np.random.default_rng(start)
    y, x = np.mgrid[0:384, 0:512]
    a, b, c = rng.uniform(0.005, 0.05, 3)
    base = np.stack([np.sin(x * a), np.cos(y * b), np.sin((x + y) * c)], axis=2) * 100 + 128
    base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)  # texture, as photos have
    for i in range(start, stop):  # each file distinct: the texture shifted
        image = np.roll(base, (7 * i, 13 * i), axis=(0, 1))
        Image.fromarray(image).save(f"{folder}/{i:06d}.jpg", quality=90)


def make_jpegs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_jpegs, [str(folder)] * 16, *zip(*[(n * k // 16, n * (k + 1) // 16) for k in range(16)])))


def cpu_seconds() -> tuple[float, float]:
    """(this process, its reaped children): user + system CPU seconds."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def pil_loop(folder: Path, size: int) -> tuple[float, float, np.ndarray]:
    """The baseline: one process, the obvious PIL code (full decode). Returns images/s, CPU ms per image
    and the images (in file name order)."""
    files = sorted(folder.iterdir())
    out = np.empty((len(files), size, size, 3), np.uint8)
    cpu = time.process_time()
    start = time.perf_counter()
    for i, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        side = min(w, h)
        image = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
    return len(files) / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / len(files), out


def distgan_prepare(folder: Path, size: int, workers: int, tmp: Path, reference: np.ndarray) -> dict:
    """images/s of the scan alone and of scan + shards with `workers` processes; the scan's CPU ms per
    image in the workers and in the parent (its serial part: the journal, the bookkeeping); the mean
    absolute difference from the PIL loop's full-decode images (JPEG DCT scaling, images.reduce_jpeg)."""
    out = tmp / f"out-{workers}"
    parent0, children0 = cpu_seconds()
    start = time.perf_counter()
    raw = read_folder_dataset(folder, size, 3, False, 0.0, 0, FolderOptions(transform="center-crop", workers=workers),
                              out=out, say=lambda _: None)
    scanned = time.perf_counter()
    parent1, children1 = cpu_seconds()
    write_shards(raw, out)
    done = time.perf_counter()
    n = raw.splits["train"].num_samples
    mad = float(np.abs(raw.splits["train"].load(np.arange(n)).astype(np.int16) - reference).mean())
    return {"mad_vs_pil_loop": round(mad, 3), "scan_img_s": round(n / (scanned - start), 1),
            "prepare_img_s": round(n / (done - start), 1),
            "worker_cpu_ms": round(1000 * (children1 - children0) / n, 2),
            "parent_cpu_ms": round(1000 * (parent1 - parent0) / n, 2)}


def peak_memory(n: int, tmp: Path) -> dict:
    """Peak RSS (MiB) of `distgan-data prepare folder` on n 8x8 PNGs, as a child process."""
    folder = tmp / f"tiny-{n}"
    folder.mkdir()
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    command = [sys.executable, "-m", "distgan.data.cli", "prepare", "folder", "--src", str(folder),
               "--out", str(tmp / f"tiny-out-{n}"), "--size", "8"]
    # A fresh parent per run, so ru_maxrss of its waited children is this prepare's alone (workers included).
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return {"images": n, "peak_rss_mib": round(int(out.stdout) / 1024, 1),
            "seconds": round(time.perf_counter() - start, 1)}


def import_rss_mib() -> float:
    """The floor: peak RSS of a process that only imports distgan-data's CLI. Measured as a grandchild,
    like the prepare runs: a child's own ru_maxrss keeps the high-water mark it inherited at fork from
    this (large) bench process across exec."""
    wrapper = ("import resource, subprocess, sys; subprocess.run([sys.executable, '-c', 'import distgan.data.cli'], "
               "check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return round(int(out.stdout) / 1024, 1)


def correctness(tmp: Path) -> list[dict]:
    folder = tmp / "kinds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    refs = {kind: builder(folder, rng) for kind, builder in GOOD_KINDS.items()}
    raw = read_folder_dataset(folder, 16, 3, False, 0.0, 0, say=lambda _: None)
    names = sorted(name for name, _ in refs.values())
    ours = dict(zip(names, raw.splits["train"].load(np.arange(len(names))).astype(np.int64)))
    rows = []
    for kind, (name, ref) in refs.items():
        naive = np.asarray(Image.open(folder / name).convert("RGB"), np.int64)
        naive_mad = float(np.abs(naive - ref).mean()) if naive.shape == ref.shape else None
        rows.append({"kind": kind, "file": name, "distgan_mad": float(np.abs(ours[name] - ref).mean()),
                     "naive_convert_mad": naive_mad})
    return rows


def throughput(tmp: Path, jpegs: int, size: int, cores: int) -> dict:
    """The PIL loop, distgan with 1 and with all cores, the PIL loop again (the load drifts); printed."""
    make_jpegs(tmp / "jpegs", jpegs)
    baseline, baseline_cpu_ms, reference = pil_loop(tmp / "jpegs", size)
    runs = {}
    for workers in sorted({1, cores}):
        run = distgan_prepare(tmp / "jpegs", size, workers, tmp, reference)
        runs[workers] = {**run, "scan_speedup": round(run["scan_img_s"] / baseline, 2),
                         "prepare_speedup": round(run["prepare_img_s"] / baseline, 2)}
    print(f"\n{jpegs} JPEGs 512x384 -> {size}: single-process PIL loop {baseline:.1f} img/s "
          f"({baseline_cpu_ms:.2f} CPU ms/img); load average {os.getloadavg()[0]:.1f} on {cores} cores")
    for workers, run in runs.items():
        print(f"  distgan, {workers} worker(s): scan {run['scan_img_s']} img/s ({run['scan_speedup']}x), "
              f"scan + shards {run['prepare_img_s']} img/s ({run['prepare_speedup']}x); CPU ms/img: "
              f"workers {run['worker_cpu_ms']}, parent {run['parent_cpu_ms']}; pixels vs the PIL loop: "
              f"MAD {run['mad_vs_pil_loop']}")
    again, again_cpu_ms, _ = pil_loop(tmp / "jpegs", size)
    print(f"  single-process PIL loop again: {again:.1f} img/s ({again_cpu_ms:.2f} CPU ms/img); "
          f"load average {os.getloadavg()[0]:.1f}")
    return {"jpegs": jpegs, "pil_loop_img_s": round(baseline, 1), "pil_loop_cpu_ms": round(baseline_cpu_ms, 2),
            "pil_loop_again_img_s": round(again, 1), "pil_loop_again_cpu_ms": round(again_cpu_ms, 2),
            "distgan": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpegs", type=int, default=10_000)
    parser.add_argument("--tiny", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as name:
        tmp = Path(name)
        rows = correctness(tmp)
        print(f"{'kind':<20} {'distgan MAD':>12} {'naive convert MAD':>18}")
        for row in rows:
            naive = "shape differs" if row["naive_convert_mad"] is None else f"{row['naive_convert_mad']:.2f}"
            print(f"{row['kind']:<20} {row['distgan_mad']:>12.2f} {naive:>18}")
        speed = throughput(tmp, args.jpegs, args.size, cores) if args.jpegs else {}
        memory = [peak_memory(n, tmp) for n in (args.tiny // 10, args.tiny) if n]
        floor = import_rss_mib()
        print(f"\npeak RSS: import only {floor} MiB; " + "; ".join(
            f"{m['images']:,} images {m['peak_rss_mib']} MiB ({m['seconds']} s)" for m in memory))
    print(json.dumps({"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                      "cores": cores, "size": args.size, **speed, "load_average_1m": os.getloadavg()[0],
                      "peak_memory": memory, "import_rss_mib": floor, "correctness": rows}))


if __name__ == "__main__":
    main()
