"""CIFAR-10 / CIFAR-100 from the authors' BINARY distribution (cifar-10-binary.tar.gz).

The binary files are fixed-length records: label byte(s), then 3072 pixel bytes (the red 32x32
plane, then green, then blue, rows top to bottom). They are read straight out of the tar.gz (or
an extracted folder), nothing extracted to disk. The Python version of CIFAR is a set of pickles,
and unpickling runs whatever code the file carries: it is refused, never opened.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distgan.data.manifest import DataError
from distgan.data.shards import file_digest
from distgan.data.sources import RawDataset, RawSplit, _take

PIXELS = 3 * 32 * 32
PICKLE_MARKERS = ("cifar-10-batches-py", "cifar-100-python", "python.tar")


@dataclass(frozen=True)
class CifarLayout:
    archive: str
    url: str
    md5: str  # the authors' published md5 of the archive
    folder: str
    train: tuple[str, ...]
    test: str
    label_bytes: int  # CIFAR-100: coarse then fine; the fine label is used
    classes_file: str


CIFAR = {
    "cifar10": CifarLayout(
        "cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1, "batches.meta.txt"),
    "cifar100": CifarLayout(
        "cifar-100-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary", ("train.bin",), "test.bin", 2,
        "fine_label_names.txt"),
}
CACHE = Path("~/.cache/distgan")


def _pickle_refusal(where: Path, layout: CifarLayout) -> DataError:
    return DataError(
        f"{where}: this is CIFAR's Python (pickle) version; distgan never unpickles a downloaded file "
        f"(a pickle can run any code when loaded). Use the binary version: {layout.url}"
    )


def _refuse_pickle(name: str, where: Path, layout: CifarLayout) -> None:
    if any(marker in name for marker in PICKLE_MARKERS):
        raise _pickle_refusal(where, layout)


def _read_members(src: Path, layout: CifarLayout) -> dict[str, bytes]:
    """The layout's files by base name, from the tar.gz or a folder holding them."""
    wanted = {*layout.train, layout.test, layout.classes_file}
    _refuse_pickle(src.name, src, layout)
    found: dict[str, bytes] = {}
    if src.is_dir():
        root = src / layout.folder if (src / layout.folder).is_dir() else src
        _refuse_pickle(root.name, src, layout)
        for name in wanted:
            if (root / name).is_file():
                found[name] = (root / name).read_bytes()
        if not found and any((root / n).is_file() for n in ("data_batch_1", "train", "batches.meta", "meta")):
            raise _pickle_refusal(src, layout)
        return found
    try:
        with tarfile.open(src, "r:*") as archive:
            for member in archive:
                _refuse_pickle(member.name, src, layout)
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    found[base] = archive.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"{src}: cannot read as a tar archive ({exc})") from exc
    return found


def _records(data: bytes, where: str, layout: CifarLayout, classes: int) -> tuple[np.ndarray, np.ndarray]:
    record = layout.label_bytes + PIXELS
    if not data or len(data) % record:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {record}-byte CIFAR records")
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    labels = rows[:, layout.label_bytes - 1].astype(np.int64)
    if labels.max() >= classes:
        raise DataError(f"{where}: label {labels.max()} but the set has {classes} classes (wrong file?)")
    images = rows[:, layout.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def download_cifar(name: str, root: Path, url: str | None = None, md5: str | None = None) -> Path:
    """The archive from the authors' site into `root` (a progress bar), its md5 checked before it is
    renamed into place: a failed or changed download never looks like a finished one."""
    layout = CIFAR[name]
    url, md5 = url or layout.url, md5 or layout.md5
    path = root / layout.archive
    if path.is_file() and file_digest(path, "md5") == md5:
        return path
    root.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_suffix(".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial_path, "wb") as f, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     desc=f"downloading {layout.archive}") as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                digest.update(block)
                bar.update(len(block))
    except (OSError, ValueError) as exc:  # URLError is an OSError
        partial_path.unlink(missing_ok=True)
        raise DataError(f"could not download {url}: {exc}") from exc
    if digest.hexdigest() != md5:
        partial_path.unlink()
        raise DataError(f"could not download {url}: md5 {digest.hexdigest()} is not the published {md5} "
                        f"(a changed or corrupt download)")
    os.replace(partial_path, path)
    return path


def read_cifar_dataset(name: str, src: Path | None, download: bool = False) -> RawDataset:
    """CIFAR-10/100 train (50,000) and test (10,000) splits, labels exact, pixels as stored."""
    layout = CIFAR[name]
    if src is None:
        cached = CACHE.expanduser() / name / layout.archive
        if cached.is_file():
            src = cached
        elif download:
            src = download_cifar(name, cached.parent)
        else:
            raise DataError(f"{name} needs --src {layout.archive} (the binary version, {layout.url}) or --download")
    if not src.exists():
        raise DataError(f"{src}: not found")
    members = _read_members(src, layout)
    missing = sorted({*layout.train, layout.test, layout.classes_file} - set(members))
    if missing:
        raise DataError(f"{src}: not CIFAR's binary layout: missing {', '.join(missing)} "
                        f"(expected {layout.folder}/ from {layout.archive})")
    classes = [c for c in members[layout.classes_file].decode("utf-8", "replace").splitlines() if c.strip()]
    splits = {}
    for split, files in (("train", layout.train), ("test", (layout.test,))):
        parts = [_records(members[f], f"{src}:{f}", layout, len(classes)) for f in files]
        images = np.concatenate([p[0] for p in parts])
        splits[split] = RawSplit(labels=np.concatenate([p[1] for p in parts]), load=partial(_take, images))
    return RawDataset(
        name=name, height=32, width=32, channels=3, classes=classes, splits=splits,
        source={"kind": "cifar-binary", "path": str(src), "url": layout.url, "md5": layout.md5},
        preprocessing="none: the original 32x32 RGB images" + (", fine labels" if name == "cifar100" else ""),
    )
