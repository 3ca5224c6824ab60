"""Loader throughput: distgan's shards beside a per-sample PNG WebDataset and torchvision's FashionMNIST.

All read the same images in one run on this machine. distgan's loader is timed twice on the
same shards, in alternating rounds (median of each): with the format-2 manifest, which checks
every chunk read against its checksum, and with the same manifest as format 1 (no per-chunk
sums: only a shard one worker reads end to end is checked, against its whole-file sha256),
which is what the loader did before per-chunk checks. Prints a table, then one JSON line
with every figure (images per second).

    python bench/loader.py [--batch-size 128] [--workers 2] [--epochs 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from distgan.data import ShardLoader
from distgan.data.loader import OldManifestWarning
from distgan.data.manifest import MANIFEST_NAME, Manifest
from distgan.data.shards import iter_shard_chunks, write_shards
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


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (each epoch's DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_epochs(make_iter, epochs: int) -> tuple[float, float]:
    """Images/s and CPU microseconds per image (all processes) over `epochs` passes after one warm-up pass
    (worker start-up included per pass). The CPU figure is what other work on the machine blurs least."""
    for _ in make_iter(0):
        pass
    count, start, cpu = 0, time.perf_counter(), cpu_seconds()
    for epoch in range(1, epochs + 1):
        for images, _ in make_iter(epoch):
            count += len(images)
    return count / (time.perf_counter() - start), (cpu_seconds() - cpu) / count * 1e6


def bench_distgan(data: Path, batch: int, workers: int, epochs: int, rank: int = 0, world: int = 1,
                  ) -> tuple[float, float]:
    """One rank's images/s and CPU us/image (rank `rank` of `world`, run alone: it reads its share)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OldManifestWarning)
        loader = ShardLoader(str(data), "train", batch, rank=rank, world_size=world, num_workers=workers, seed=0)
    return time_epochs(lambda e: ((b.images, b.labels) for b in loader.epoch(e)), epochs)


def as_format_1(data: Path, out: Path) -> Path:
    """The same shards (linked) under a format-1 manifest: no per-chunk checksums, as before they existed."""
    out.mkdir()
    for tar in data.glob("*.tar"):
        (out / tar.name).symlink_to(tar)
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    manifest["format_version"] = 1
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["chunk_xxh3_128"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def bench_checks(data: Path, tmp: Path, batch: int, workers: int, epochs: int, rounds: int, world: int,
                 ) -> list[tuple[float, float]]:
    """Median (images/s, CPU us/image) of rank 0 of `world` under a format-1 manifest and with every chunk
    checked, the two taking turns `rounds` times. With 1 rank and 2 workers each worker reads whole 10k
    shards, which format 1 checks too (whole-file sha256); rank 0 of 4 reads no shard from start to end:
    there format 1 checks nothing."""
    before = tmp / f"{data.name}-format1"
    if not before.exists():
        as_format_1(data, before)
    turns = [[bench_distgan(d, batch, workers, epochs, 0, world) for d in (before, data)] for _ in range(rounds)]
    return [(statistics.median(t[i][0] for t in turns), statistics.median(t[i][1] for t in turns)) for i in (0, 1)]


def chunk_read_cpu_us(data: Path, rounds: int) -> tuple[float, float]:
    """CPU microseconds per image of reading every chunk of a split in this process, without and with the
    per-chunk checksum (median of `rounds` alternating passes): the check's own cost, which a machine
    shared with other work does not blur the way it blurs images/s."""
    manifest = Manifest.from_json((data / MANIFEST_NAME).read_text(), str(data))
    shards = manifest.splits["train"].shards

    def cpu_us(checked: bool) -> float:
        start, count = time.process_time(), 0
        for shard in shards:
            for chunk in iter_shard_chunks(str(data / shard.name), manifest, shard if checked else None):
                count += len(chunk.images)
        return (time.process_time() - start) / count * 1e6

    turns = [[cpu_us(checked) for checked in (False, True)] for _ in range(rounds)]
    return statistics.median(t[0] for t in turns), statistics.median(t[1] for t in turns)


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


def bench_png_webdataset(urls: list[str], batch: int, workers: int, epochs: int) -> tuple[float, float]:
    def to_arrays(sample):
        return np.asarray(sample[0], np.uint8), int(sample[1])

    dataset = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node)
               .shuffle(1000).decode("pil").to_tuple("png", "cls").map(to_arrays).batched(batch))
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers)
    return time_epochs(lambda e: ((torch.as_tensor(x), y) for x, y in loader), epochs)


def bench_torchvision(raw_dir: Path | None, tmp: Path, batch: int, workers: int, epochs: int,
                      ) -> tuple[float | None, float | None]:
    from torchvision import datasets, transforms

    if raw_dir is None:
        return None, None
    root = tmp / "tv"
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for gz in raw_dir.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(root / "FashionMNIST" / "raw" / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.PILToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True)
    return time_epochs(lambda e: iter(loader), epochs)


def measure_checks(tmp: Path, title: str, name: str, args: argparse.Namespace) -> dict[str, tuple[str, float]]:
    """distgan's loader on one dataset before/after per-chunk checks: {key: (label, figure)}."""
    rows = {}
    for world, label in ((1, ""), (4, "_rank0of4")):
        who = "1 rank" if world == 1 else "rank 0 of 4"
        measured = bench_checks(tmp / name, tmp, args.batch_size, args.workers, args.epochs, args.rounds, world)
        for (img_s, cpu_us), (suffix, what) in zip(measured, (("_format1", "format 1 (before)"),
                                                              ("", "every chunk checked"))):
            rows[f"{name}{label}{suffix}_img_s"] = (f"distgan, {title}, {who}, {what}", img_s)
            rows[f"{name}{label}{suffix}_cpu_us_per_img"] = ("  CPU us/image, all processes", cpu_us)
    unchecked, checked = chunk_read_cpu_us(tmp / name, args.rounds)
    rows[f"{name}_read_cpu_us_per_img"] = (f"{title}: chunks read alone, CPU us/image", unchecked)
    rows[f"{name}_check_cpu_us_per_img"] = (f"{title}: what the chunk check adds to it", checked - unchecked)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rgb64-images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating turns of format 1 and format 2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    b, w = args.batch_size, args.workers
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fashion = fashion_raw(tmp)
        write_shards(fashion, tmp / "fashion")
        write_shards(rgb64_raw(args.rgb64_images), tmp / "rgb64", samples_per_shard=5_000)
        png_urls = write_png_shards(fashion, tmp / "png")
        raw_dir = Path(STANDARD_PLACES["fashion-mnist"][0]) if fashion.name == "fashion-mnist" else None
        rows = measure_checks(tmp, f"{fashion.name} 28x28", "fashion", args) | measure_checks(tmp, "64x64 RGB",
                                                                                               "rgb64", args)
        for name, title, (img_s, cpu_us) in (
                ("png_baseline", "per-sample PNG WebDataset, 28x28", bench_png_webdataset(png_urls, b, w, 1)),
                ("torchvision", "torchvision FashionMNIST + DataLoader", bench_torchvision(raw_dir, tmp, b, w, 1))):
            rows[f"{name}_img_s"], rows[f"{name}_cpu_us_per_img"] = (title, img_s), ("  CPU us/image", cpu_us)
    print(f"{'loader':<58} figure   (batch {b}, {w} workers, {os.cpu_count()} cores)")
    for key, (label, value) in rows.items():
        shown = "n/a" if value is None else f"{value:>10,.2f}" if "_us_" in key else f"{value:>10,.0f}"
        print(f"{label:<58} {shown}")
    figures = {k: None if v is None else round(v, 3 if "_us_" in k else None) for k, (_, v) in rows.items()}
    for key in list(figures):  # checked / format 1: images/s (goal >= 0.9) and CPU per image
        if "_format1_" in key and figures[key]:
            ratio = round(figures[key.replace("_format1", "")] / figures[key], 3)
            figures[key.replace("_format1", "_checked_vs_format1")] = ratio
            print(f"{key.replace('_format1', '_checked_vs_format1')}: {ratio:.3f}")
    figures.update(dataset=fashion.name, batch_size=b, workers=w, epochs=args.epochs, rounds=args.rounds,
                   cores=os.cpu_count(), cpu=platform.processor() or platform.machine(), date=str(date.today()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
