"""distgan-export --web in the browser beside onnxruntime in Python, the same models, in one run.

    python bench/web.py [--repeats 5] [--threads 2]

1. Models: the paper-width DCGAN-28 (1x28x28) and DCGAN-64 (3x64x64), nz 100, ngf 64, images spanning
   [-1, 1] (bench/infer.py's `prepared_generator`), exported fp32 and int8 (torch needed), each
   published with `export_web` (onnxruntime-web from node_modules: run `npm ci` first).
2. The sites are served from 127.0.0.1 with cross-origin isolation headers (COOP/COEP), so onnxruntime-web's
   WASM may use `--threads` threads (the page takes min(4, cores)); Debian's chromium, headless, no WebGPU.
   - first image: a fresh browser context (empty cache) opens ?seed=0&n=1; the page's own clock
     (performance.now() from navigation start) when the image is drawn. Median of `--repeats`.
   - images/s: n = 64 drawn `--repeats` times (seeds 0, 64, ...), the page's timing of each drawing
     (latents in JS, the model, pixels to the canvas); median.
   - agreement: the 64 images of seed 0 against distgan-sample's (grey levels).
3. Python: `OnnxGenerator(path, threads)` (load) + `.sample(0, 1)` for the first image; `.sample(s, 64)`
   for images/s (latents, the model, uint8 conversion), median of `--repeats` after one warm-up.

Prints a table, then one JSON line. Sends nothing anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from distgan.export.web import export_web
from distgan.runtime import OnnxGenerator

CHROMIUM = "/usr/bin/chromium"


class IsolatedHandler(SimpleHTTPRequestHandler):
    """Static files with the headers that let a page use threads (SharedArrayBuffer)."""

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


def models(tmp: Path) -> dict[str, Path]:
    """name-precision -> ONNX file, for both architectures in fp32 and int8."""
    sys.path.insert(0, str(Path(__file__).parent))
    from infer import MODELS, prepared_generator

    from distgan.export import export_onnx

    out = {}
    for name in ("dcgan28", "dcgan64"):
        cfg, shape = MODELS[name]
        prepared_generator(cfg, shape, tmp / name)
        out[f"{name}-fp32"] = export_onnx(tmp / name, tmp / f"{name}.onnx").path
        out[f"{name}-int8"] = export_onnx(tmp / name, tmp / f"{name}.int8.onnx", quantize="int8").path
    return out


def browser_figures(browser, origin: str, name: str, repeats: int, tmp: Path) -> dict:
    firsts = []
    for _ in range(repeats):
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{origin}/{name}/?seed=0&n=1")
        page.wait_for_function("document.body.dataset.firstImageMs", timeout=120_000)
        firsts.append(float(page.evaluate("document.body.dataset.firstImageMs")))
        context.close()
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"{origin}/{name}/?seed=0&n=64")
    page.wait_for_function("document.body.dataset.firstImageMs", timeout=120_000)
    with page.expect_download() as info:
        page.click("#download")
    info.value.save_as(tmp / f"{name}.png")
    backend = page.inner_text("#backend")
    times = []
    for i in range(repeats):
        page.fill("#seed", str(64 * (i + 1)))
        page.click("#generate")
        page.wait_for_function(f"Number(document.body.dataset.drawn) >= {i + 2}", timeout=120_000)
        times.append(float(re.search(r"64 images in (\d+) ms", page.inner_text("#status")).group(1)) / 1000)
    context.close()
    return {"backend": backend, "first_image_ms": statistics.median(firsts),
            "images_per_s": 64 / statistics.median(times)}


def python_figures(path: Path, threads: int, repeats: int) -> dict:
    start = time.perf_counter()
    model = OnnxGenerator(path, threads=threads)
    model.sample(0, 1)
    first = (time.perf_counter() - start) * 1000
    model.sample(0, 64)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        model.sample(64 * (i + 1), 64)
        times.append(time.perf_counter() - start)
    return {"first_image_ms": first, "images_per_s": 64 / statistics.median(times), "png": model.sample(0, 64).png()}


def agreement(browser_png: Path, python_png: bytes) -> dict:
    want = Image.open(io.BytesIO(python_png))
    a = np.asarray(Image.open(browser_png).convert(want.mode), np.int16)  # the canvas's PNG is RGBA
    b = np.asarray(want, np.int16)
    diff = np.abs(a - b)
    return {"max_grey_levels": int(diff.max()), "pixels_differing": float((diff > 0).mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime's threads in Python")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        onnx_files = models(tmp)
        sites = {name: export_web(tmp / "pub" / name, path) for name, path in onnx_files.items()}
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(IsolatedHandler, directory=str(tmp / "pub")))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            for name, path in onnx_files.items():
                web = browser_figures(browser, origin, name, args.repeats, tmp)
                py = python_figures(path, args.threads, args.repeats)
                rows[name] = {"browser": web, "python": {k: v for k, v in py.items() if k != "png"},
                              "agreement": agreement(tmp / f"{name}.png", py["png"]),
                              "site_bytes": sites[name].total_bytes, "model_bytes": sites[name].sizes["model.onnx"]}
            browser.close()
        server.shutdown()
    print(f"{'model':14} {'browser first':>14} {'python first':>13} {'browser img/s':>14} {'python img/s':>13} "
          f"{'max diff':>8} {'site MB':>8}  backend")
    for name, r in rows.items():
        print(f"{name:14} {r['browser']['first_image_ms']:11.0f} ms {r['python']['first_image_ms']:10.0f} ms "
              f"{r['browser']['images_per_s']:14.0f} {r['python']['images_per_s']:13.0f} "
              f"{r['agreement']['max_grey_levels']:8d} {r['site_bytes'] / 1e6:8.1f}  {r['browser']['backend']}")
    print(json.dumps({"date": date.today().isoformat(), "python_threads": args.threads, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
