"""HTTP serving: distgan-serve's /api/sample beside the bare onnxruntime call, the same model, in one run.

    python bench/serve.py [--onnx FILE ...] [--threads N] [--seconds S] [--load-seconds 30] [--clients 16]
                          [--parts latency,load,proxy,nearest] [--data DIR]

1. Models: the paper-width DCGAN-28 (1x28x28) and DCGAN-64 (3x64x64), nz 100, ngf 64, with
   images spanning [-1, 1] as a trained generator's do (bench/infer.py's `prepared_generator`),
   exported here (torch needed); or the --onnx files given.
2. Latency at n = 1 and 64 (`--seconds` per engine at n = 1, 2.5x that at n = 64), the engines
   taking turns in blocks of ~0.25 s, each block's first call not timed: the bare call
   (`session.run` on prepared latents, in this process, in a session configured as the
   server's: the same threads, onnxruntime's spinning off), and GET /api/sample as PNG (the
   default) and as npy (raw pixels) on one keep-alive connection to
   `distgan-serve` (a subprocess, 127.0.0.1 only). p50 and p99 of each; overhead = API p50 -
   bare p50: latents, HTTP, the grid and the encoding.
3. Load: `--clients` threads, each on its own keep-alive connection, GET /api/sample?n=1 with
   random seeds for `--load-seconds` against the first model: requests/s, p50/p99, errors.
4. Proxy: the same GET /api/sample (PNG) at n = 1 and 64 on the first model, directly and through
   a real nginx (README's location block, distgan/serve/proxy.py) under /gan/, taking turns on
   one keep-alive connection each (nginx to the server: a new connection per request, nginx's
   default): overhead = through-nginx p50 - direct p50.
5. Nearest training images (`--data DIR`, a prepared set; default 60,000 uniform-noise 28x28
   images, the worst case for the index's bounds): the index look-up of one generated image
   (k = 8), p50/p99 over 200 look-ups, and the build (or cache load) time.

Prints a table, then one JSON line. Sends nothing anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np

from distgan.runtime import OnnxGenerator

BATCHES = (1, 64)


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times), q))


def exported_models(tmp: Path) -> list[Path]:
    """The two paper-width generators, exported (bench/infer.py's models and preparation)."""
    from infer import MODELS, prepared_generator  # bench/ is on sys.path when run as a script

    from distgan.export import export_onnx

    paths = []
    for name in ("dcgan28", "dcgan64"):
        cfg, shape = MODELS[name]
        prepared_generator(cfg, shape, tmp / name)
        paths.append(export_onnx(tmp / name, tmp / f"{name}.onnx").path)
    return paths


def start_server(models: list[Path], threads: int, log: Path) -> tuple[subprocess.Popen, str, int]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distgan.serve.cli", *map(str, models), "--port", "0",
                                 "--threads", str(threads), "--max-n", "64"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"^serving http://(127\.0\.0\.1):(\d+)/$", log.read_text(), re.MULTILINE)
        if found:
            return proc, found.group(1), int(found.group(2))
        if proc.poll() is not None:
            sys.exit(f"distgan-serve exited:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"distgan-serve did not start:\n{log.read_text()}")


def getter(host: str, port: int) -> Callable[[str], bytes]:
    """GET on one keep-alive connection; anything but a 200 raises."""
    connection = http.client.HTTPConnection(host, port, timeout=120)

    def get(target: str) -> bytes:
        connection.request("GET", target)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{target}: HTTP {response.status}: {body[:200]!r}")
        return body

    return get


def alternating(runs: dict[str, Callable[[], object]], seconds: float, block: float = 0.25) -> dict[str, list[float]]:
    """Every call's wall time per run, the runs taking turns in blocks (each block's first call untimed)."""
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds * len(runs) or min(map(len, times.values())) < 5:
        for name, run in runs.items():
            run()
            block_start = time.perf_counter()
            while time.perf_counter() - block_start < block:
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    return times


def latency(model: OnnxGenerator, model_id: str, get: Callable[[str], bytes], seconds: float) -> dict[str, dict]:
    rows = {}
    for n in BATCHES:
        z = model.latents(n, 0)
        feeds = {"z": z} if not model.conditional else {"z": z, "labels": model.default_labels(n)}
        seeds = iter(range(10**9))
        runs = {
            "bare": lambda: model.session.run(["images"], feeds),
            "png": lambda: get(f"/api/sample?model={model_id}&seed={next(seeds)}&n={n}"),
            "npy": lambda: get(f"/api/sample?model={model_id}&seed={next(seeds)}&n={n}&format=npy"),
        }
        for engine, times in alternating(runs, seconds * (1 if n == 1 else 2.5)).items():
            rows[f"{engine}_n{n}"] = {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3,
                                      "calls": len(times)}
    return rows


def load(host: str, port: int, model_id: str, clients: int, seconds: float) -> dict:
    """`clients` threads hammering /api/sample?n=1 for `seconds`; counts, latencies and errors."""
    times: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start_line = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def client(i: int) -> None:
        get, rng = getter(host, port), random.Random(i)
        start_line.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                get(f"/api/sample?model={model_id}&seed={rng.randrange(2**31)}&n=1")
            except Exception as exc:  # counted and reported: the goal is zero
                errors.append(repr(exc))
                get = getter(host, port)
                continue
            times[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at.append(time.perf_counter() + seconds)
    start_line.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    flat = [t for ts in times for t in ts]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(flat),
            "requests_per_s": len(flat) / elapsed, "p50_ms": percentile(flat, 50) * 1e3,
            "p99_ms": percentile(flat, 99) * 1e3, "errors": len(errors), "first_errors": errors[:3]}


def through_proxy(host: str, port: int, model_id: str, tmp: Path, seconds: float) -> dict[str, dict]:
    """Direct vs through nginx, the same requests, taking turns."""
    from distgan.serve.proxy import Nginx

    rows: dict[str, dict] = {}
    with Nginx(tmp / "nginx", f"{host}:{port}") as nginx:
        direct, proxied = getter(host, port), getter("127.0.0.1", nginx.port)
        for n in BATCHES:
            seeds = iter(range(10**9))
            runs = {"direct": lambda: direct(f"/api/sample?model={model_id}&seed={next(seeds)}&n={n}"),
                    "nginx": lambda: proxied(f"/gan/api/sample?model={model_id}&seed={next(seeds)}&n={n}")}
            times = alternating(runs, seconds * (1 if n == 1 else 2.5))
            row = {e: {"p50_ms": percentile(t, 50) * 1e3, "p99_ms": percentile(t, 99) * 1e3, "calls": len(t)}
                   for e, t in times.items()}
            row["overhead_ms"] = row["nginx"]["p50_ms"] - row["direct"]["p50_ms"]
            rows[f"n{n}"] = row
    return rows


def nearest_lookup(data: Path | None, model: OnnxGenerator, lookups: int = 200) -> dict:
    """The index's look-up time for generated images (k = 8), and its build time."""
    from distgan.serve.nearest import NearestIndex, downscale_factor, pixel_features

    t0 = time.perf_counter()
    if data is not None:
        index = NearestIndex.open(data)
        source = f"{data} ({'cached' if index.cache else 'in memory'})"
    else:
        images = np.random.default_rng(0).integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8)
        index = NearestIndex("random", "train", images, np.zeros(len(images), np.int64), [],
                             pixel_features(images, 1), downscale_factor(28, 28, 1), None)
        source = "60,000 uniform-noise 28x28 images: the worst case, nothing for the components to find"
    built = time.perf_counter() - t0
    h, w, c = index.image_shape
    if (model.info.height, model.info.width, model.info.channels) == (h, w, c):
        queries = model.sample(0, lookups).images
    else:  # the model draws another shape: look up training images themselves
        queries = index.images(np.arange(lookups))
    times = []
    for image in queries:
        t = time.perf_counter()
        index.query(image, 8)
        times.append(time.perf_counter() - t)
    return {"source": source, "images": len(index.labels), "features": int(index.features.shape[1]),
            "build_or_load_s": round(built, 2), "lookups": lookups, "p50_ms": percentile(times, 50) * 1e3,
            "p99_ms": percentile(times, 99) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, nargs="+", help="models to serve (default: DCGAN-28 and DCGAN-64)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: one per core)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per engine and n")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--parts", default="latency,load,proxy,nearest", help="which measurements (comma-separated)")
    parser.add_argument("--data", type=Path, help="a prepared dataset for the nearest-image look-up")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        paths = args.onnx or exported_models(tmp)
        proc, host, port = start_server(paths, args.threads, tmp / "server.log")
        try:
            listing = json.loads(getter(host, port)("/api/models"))["models"]
            results = {}
            for path, meta in zip(paths, listing):
                if "latency" in parts:
                    model = OnnxGenerator(path, threads=args.threads)
                    results[meta["id"]] = latency(model, meta["id"], getter(host, port), args.seconds)
            loaded = load(host, port, listing[0]["id"], args.clients, args.load_seconds) if "load" in parts else None
            proxied = through_proxy(host, port, listing[0]["id"], tmp, args.seconds) if "proxy" in parts else None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        nearest = nearest_lookup(args.data, OnnxGenerator(paths[0], threads=args.threads)) \
            if "nearest" in parts else None
    figures = latency_table(results)
    if loaded:
        print(f"\nload: {loaded['clients']} clients x {loaded['seconds']} s on {listing[0]['id']} n=1: "
              f"{loaded['requests_per_s']:.0f} requests/s, p50 {loaded['p50_ms']:.1f} ms, p99 {loaded['p99_ms']:.1f} "
              f"ms, {loaded['errors']} errors {loaded['first_errors'] or ''}")
        figures["load"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in loaded.items()}
    if proxied:
        print(f"\nthrough nginx vs direct, {listing[0]['id']}, PNG (ms, p50/p99):")
        for key, row in proxied.items():
            print(f"  {key:>4}: direct {row['direct']['p50_ms']:.2f}/{row['direct']['p99_ms']:.2f}, nginx "
                  f"{row['nginx']['p50_ms']:.2f}/{row['nginx']['p99_ms']:.2f}, overhead {row['overhead_ms']:.2f}")
        figures["proxy"] = json.loads(json.dumps(proxied), parse_float=lambda v: round(float(v), 3))
    if nearest:
        print(f"\nnearest-image look-up, {nearest['images']} images x {nearest['features']} features "
              f"({nearest['source']}): p50 {nearest['p50_ms']:.1f} ms, p99 {nearest['p99_ms']:.1f} ms; "
              f"index built or loaded in {nearest['build_or_load_s']} s")
        figures["nearest"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in nearest.items()}
    figures.update({"threads": args.threads or "cores", "cores": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()[0], "date": str(date.today())})
    print(json.dumps(figures))


def latency_table(results: dict[str, dict]) -> dict:
    """Prints the latency table; returns its figures."""
    figures: dict = {}
    if not results:
        return figures
    print(f"\n{'model':<10} {'n':>3} {'bare p50/p99':>15} {'API png p50/p99':>16} {'API npy p50/p99':>16} "
          f"{'png - bare':>16} {'npy - bare':>16}   (ms)")
    for model_id, rows in results.items():
        for n in BATCHES:
            row = {e: rows[f"{e}_n{n}"] for e in ("bare", "png", "npy")}
            bare = row["bare"]["p50_ms"]
            cells = " ".join(f"{row[e]['p50_ms']:>7.2f}/{row[e]['p99_ms']:<7.2f}" for e in row)
            extra = {e: row[e]["p50_ms"] - bare for e in ("png", "npy")}
            print(f"{model_id:<10} {n:>3} {cells} " + " ".join(f"{extra[e]:>7.2f} ({100 * extra[e] / bare:>5.0f}%)"
                                                               for e in extra))
            figures[f"{model_id}_n{n}"] = {e: {k: round(v, 3) for k, v in r.items()} for e, r in row.items()}
            figures[f"{model_id}_n{n}"].update({f"{e}_overhead_ms": round(v, 3) for e, v in extra.items()})
            figures[f"{model_id}_n{n}"].update({f"{e}_overhead_pct": round(100 * v / bare, 1)
                                                for e, v in extra.items()})
    print("(p99 of fewer than 100 calls, as at n = 64, is close to their maximum; `calls` in the JSON)")
    return figures


if __name__ == "__main__":
    main()
