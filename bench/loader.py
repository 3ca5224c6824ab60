"""Loader throughput: distgan's shards beside a per-sample PNG WebDataset and torchvision's FashionMNIST.

All four read the same images in one run on this machine. Prints a table, then
one JSON line with every figure (images per second).

    python bench/loader.py [--batch-size 128] [--workers 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from distgan.data import ShardLoader
from distgan.data.shards import write_shards
from distgan.data.sources import STANDARD_PLACES, RawDataset, RawSplit, read_idx_dataset


def fashion_raw(tmp: Path) -> RawDataset:
    """The real Fashion-MNIST if installed, else 70k random 28x28 images."""
    try:
        return read_idx_dataset("fashion-mnist", None)
    except Exception:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (70_000, 28, 28, 1), dtype=np.uint8)
        labels = rng.integers(0, 10, 70_000)
        return RawDataset("synthetic-28", 28, 28, 1, [str(i) for i in range(10)],
                          {"train": RawSplit(labels[:60_000], lambda i: images[:60_000][i]),
                           "test": RawSplit(labels[60_000:], lambda i: images[60_000:][i])})


def rgb64_raw(n: int) -> RawDataset:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    return RawDataset("synthetic-rgb64", 64, 64, 3, [],
                      {"train": RawSplit(np.full(n, -1), lambda i: images[i])})


def time_epochs(make_iter, epochs: int) -> float:
    """Images/s over `epochs` passes after one warm-up pass (worker start-up included per pass)."""
    for _ in make_iter(0):
        pass
    count, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        for images, _ in make_iter(epoch):
            count += len(images)
    return count / (time.perf_counter() - start)


def bench_distgan(data: Path, batch: int, workers: int, epochs: int) -> float:
    loader = ShardLoader(str(data), "train", batch, num_workers=workers, seed=0)
    return time_epochs(lambda e: ((b.images, b.labels) for b in loader.epoch(e)), epochs)


def write_png_shards(raw: RawDataset, out: Path, per_shard: int = 10_000) -> list[str]:
    """The common layout: one PNG and one class member per image."""
    from PIL import Image

    out.mkdir(parents=True)
    split = raw.splits["train"]
    images = split.load(np.arange(split.num_samples))
    urls = []
    for s, start in enumerate(range(0, len(images), per_shard)):
        url = str(out / f"png-{s:06d}.tar")
        with wds.TarWriter(url) as writer:
            for i in range(start, min(start + per_shard, len(images))):
                buf = io.BytesIO()
                Image.fromarray(images[i][..., 0]).save(buf, "PNG")
                writer.write({"__key__": f"{i:08d}", "png": buf.getvalue(), "cls": str(int(split.labels[i]))})
        urls.append(url)
    return urls


def bench_png_webdataset(urls: list[str], batch: int, workers: int, epochs: int) -> float:
    def to_arrays(sample):
        return np.asarray(sample[0], np.uint8), int(sample[1])

    dataset = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node)
               .shuffle(1000).decode("pil").to_tuple("png", "cls").map(to_arrays).batched(batch))
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers)
    return time_epochs(lambda e: ((torch.as_tensor(x), y) for x, y in loader), epochs)


def bench_torchvision(raw_dir: Path | None, tmp: Path, batch: int, workers: int, epochs: int) -> float | None:
    from torchvision import datasets, transforms

    if raw_dir is None:
        return None
    root = tmp / "tv"
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for gz in raw_dir.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(root / "FashionMNIST" / "raw" / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.PILToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True)
    return time_epochs(lambda e: iter(loader), epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rgb64-images", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fashion = fashion_raw(tmp)
        write_shards(fashion, tmp / "fashion")
        write_shards(rgb64_raw(args.rgb64_images), tmp / "rgb64", samples_per_shard=5_000)
        png_urls = write_png_shards(fashion, tmp / "png")
        raw_dir = Path(STANDARD_PLACES["fashion-mnist"][0]) if fashion.name == "fashion-mnist" else None
        b, w, e = args.batch_size, args.workers, args.epochs
        figures = {
            "fashion_img_s": bench_distgan(tmp / "fashion", b, w, e),
            "rgb64_img_s": bench_distgan(tmp / "rgb64", b, w, e),
            "png_baseline_img_s": bench_png_webdataset(png_urls, b, w, 1),
            "torchvision_img_s": bench_torchvision(raw_dir, tmp, b, w, 1),
        }
    print(f"{'loader':<40} images/s   (batch {b}, {w} workers, {os.cpu_count()} cores)")
    names = {"fashion_img_s": f"distgan shards, {fashion.name} 28x28",
             "rgb64_img_s": "distgan shards, 64x64 RGB",
             "png_baseline_img_s": "per-sample PNG WebDataset, 28x28",
             "torchvision_img_s": "torchvision FashionMNIST + DataLoader"}
    for key, value in figures.items():
        print(f"{names[key]:<40} {'n/a' if value is None else f'{value:>10,.0f}'}")
    figures = {k: (None if v is None else round(v)) for k, v in figures.items()}
    figures.update(dataset=fashion.name, batch_size=b, workers=w, cores=os.cpu_count(),
                   cpu=platform.processor() or platform.machine(), date=str(date.today()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
