"""Image folders and aligned CelebA -> `RawDataset`.

A folder is checked whole before anything is written (`scan.py`: every file decoded once, in
parallel, into a memory-mapped array); bad files are refused all at once, or skipped and reported
with --skip-bad (`report.py`); labels come from sub-folders or a metadata.csv/jsonl; exact
duplicates are found by content hash. CelebA's images are decoded shard by shard.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from distgan.data.images import BadImage, DecodeOptions, decode
from distgan.data.manifest import DataError
from distgan.data.report import REPORT_NAME, PrepareReport
from distgan.data.scan import IMAGE_SUFFIXES, Listing, ScanResult, list_images, scan
from distgan.data.sources import RawDataset, RawSplit
from distgan.data.transforms import aspect_histogram, center_crop_kept

WORK_NAME = ".prepare"  # the scan's resumable work folder inside --out


@dataclass(frozen=True)
class FolderOptions:
    """prepare folder's choices beyond size and channels (README, "Folders")."""

    transform: str | None = None
    background: tuple[int, int, int] = (255, 255, 255)
    alpha: str = "composite"  # or "error": refuse images with transparent pixels
    skip_bad: bool = False
    dedup: bool = False
    metadata: Path | None = None  # metadata.csv / metadata.jsonl with a file_name column
    label_column: str = "label"
    workers: int | None = None
    bad_limit: int = 50  # bad files named in the error


@lru_cache(maxsize=4)
def _open_zip(path: str) -> zipfile.ZipFile:
    """One open archive per worker process: re-reading CelebA's 200k-entry index per image is slow."""
    return zipfile.ZipFile(path)


def _decode_one(source: str | tuple[str, str], options: DecodeOptions) -> np.ndarray:
    """Decode one CelebA image in a worker. `source` is a path or (zip path, member)."""
    name = source if isinstance(source, str) else f"{source[0]}:{source[1]}"
    try:
        if isinstance(source, str):
            data = Path(source).read_bytes()
        else:
            data = _open_zip(source[0]).read(source[1])
        return decode(data, options).pixels
    except (OSError, BadImage) as exc:
        raise DataError(f"{name}: cannot decode image ({exc})") from exc


def _decode_many(sources: Sequence, options: DecodeOptions, indices: np.ndarray) -> np.ndarray:
    decode_one = partial(_decode_one, options=options)
    chosen = [sources[i] for i in indices]
    workers = min(os.cpu_count() or 1, 8)
    if workers == 1 or len(chosen) < 64:
        return np.stack([decode_one(s) for s in chosen])
    with ProcessPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(decode_one, chosen, chunksize=64)))


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def read_metadata(path: Path, column: str) -> dict[str, str]:
    """file_name -> label from a Hugging Face ImageFolder metadata.csv or metadata.jsonl."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except ValueError as exc:
                    raise DataError(f"{path}:{lineno}: not JSON ({exc})") from None
    elif path.suffix == ".csv":
        rows = list(enumerate(csv.DictReader(text.splitlines()), 2))
    else:
        raise DataError(f"{path}: --metadata must be a .csv or .jsonl file")
    labels: dict[str, str] = {}
    for lineno, row in rows:
        if not isinstance(row, dict) or "file_name" not in row or column not in row:
            raise DataError(f"{path}:{lineno}: needs the columns file_name and {column} (--label-column)")
        name = Path(str(row["file_name"])).as_posix()
        if name in labels:
            raise DataError(f"{path}:{lineno}: {name} is listed twice")
        labels[name] = str(row[column])
    return labels


def _folder_labels(src: Path, listing: Listing, metadata: Path | None, column: str,
                   report: PrepareReport) -> tuple[list[str], np.ndarray, dict[int, str]]:
    """Classes, one label per listed file (-1: none), and files that cannot be labelled, with the reason."""
    files = listing.files
    if metadata is not None:
        by_name = read_metadata(metadata, column)
        listed = set(files)
        for name in sorted(set(by_name) - listed):
            report.add(name, f"listed in {metadata.name} but not found", "skipped")
        classes = sorted(set(by_name.values()))
        labels = np.array([classes.index(by_name[f]) if f in by_name else -1 for f in files], np.int64)
        return classes, labels, {i: f"no row in {metadata.name}" for i, f in enumerate(files) if f not in by_name}
    top_level = [f for f in files if "/" not in f]
    nested = [f for f in files if "/" in f]
    if top_level and nested:
        raise DataError(
            f"{src}: images both at the top level (e.g. {top_level[0]}) and in sub-folders "
            f"(e.g. {nested[0]}); use one layout: flat, or one folder per class (or --metadata)"
        )
    if not nested:
        return [], np.full(len(files), -1, np.int64), {}
    classes = sorted({f.split("/")[0] for f in files})
    return classes, np.array([classes.index(f.split("/")[0]) for f in files], np.int64), {}


def _bad_files(result: ScanResult, unlabelled: dict[int, str], alpha: str) -> dict[int, str]:
    bad = {**unlabelled, **result.reasons}
    if alpha == "error":
        for i in np.flatnonzero(result.transparent):
            bad.setdefault(int(i), "has transparent pixels (--alpha error; --alpha composite puts them "
                                   "on --background)")
    return dict(sorted(bad.items()))


def _duplicates(result: ScanResult, good: np.ndarray, dedup: bool, report: PrepareReport) -> np.ndarray:
    """The files to write: `good` without later copies of a file's exact bytes under --dedup (all reported)."""
    first: dict[bytes, int] = {}
    keep = []
    for i in good:
        original = first.setdefault(result.sha256[i], int(i))
        if original == i:
            keep.append(i)
            continue
        report.add(result.files[i], f"exact duplicate of {result.files[original]}", "skipped" if dedup else "kept")
        if not dedup:
            keep.append(i)
    report.counts["duplicates"] = len(good) - len(first)
    return np.array(keep, np.int64)


def _cross_split(result: ScanResult, splits: dict[str, np.ndarray], report: PrepareReport, say) -> None:
    """Always reported: the same bytes in train and test inflate any test metric."""
    in_test = {result.sha256[i]: int(i) for i in splits.get("test", [])}
    crossing = [(int(i), in_test[result.sha256[i]]) for i in splits.get("train", []) if result.sha256[i] in in_test]
    for train_i, test_i in crossing:
        report.add(result.files[train_i], f"exact duplicate in train of {result.files[test_i]} in test "
                   f"(inflates test metrics; --dedup drops it)", "kept")
    report.counts["duplicates_across_train_test"] = len(crossing)
    if crossing:
        say(f"warning: {len(crossing)} image(s) in train have an exact duplicate in test "
            f"(e.g. {result.files[crossing[0][0]]}); --dedup drops them (see {REPORT_NAME})")


def _take_rows(pixels: np.ndarray, rows: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.asarray(pixels[rows[indices]])


def read_folder_dataset(
    src: Path, size: int, channels: int, resize: bool, test_fraction: float, seed: int,
    options: FolderOptions | None = None, out: Path | None = None, say: Callable[[str], None] = print,
) -> RawDataset:
    """Any tree of images, checked whole first; the class is the first sub-folder (or --metadata's label).

    With `out`, the scan works in `out/.prepare` (resumable) and a refusal's report is written to
    `out/prepare-report.json`; without, in a temporary folder that lives as long as the dataset.
    """
    options = options or FolderOptions(transform="center-crop" if resize else None)
    if not src.is_dir():
        raise DataError(f"{src}: not a directory")
    exclude = frozenset()
    if options.metadata is not None and options.metadata.parent.resolve() == src.resolve():
        exclude = frozenset({options.metadata.name})
    listing = list_images(src, exclude)
    if not listing.files:
        raise DataError(f"{src}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    report = PrepareReport(str(src))
    for name, reason in listing.skipped:
        report.add(name, reason, "skipped")
    classes, labels, unlabelled = _folder_labels(src, listing, options.metadata, options.label_column, report)
    temporary = None if out is not None else tempfile.TemporaryDirectory(prefix="distgan-scan-")
    work = out / WORK_NAME if out is not None else Path(temporary.name)
    decode_options = DecodeOptions(size, channels, options.transform, options.background)
    result = scan(listing, decode_options, work, options.workers, say)
    bad = _bad_files(result, unlabelled, options.alpha)
    for i, reason in bad.items():
        report.add(result.files[i], reason, "skipped" if options.skip_bad else "refused")
    good = np.array([i for i in range(len(result.files)) if i not in bad], np.int64)
    report.aspect_ratios = aspect_histogram(result.width[good], result.height[good])
    report.center_crop_keeps = center_crop_kept(result.width[good], result.height[good])
    report.counts.update(files_listed=len(result.files), bad=len(bad), skipped_entries=len(listing.skipped))
    if bad and not options.skip_bad:
        raise DataError(report.refusal(options.bad_limit, report.write(out) if out is not None else None))
    kept = _duplicates(result, good, options.dedup, report)
    if not len(kept):
        raise DataError(f"{src}: no good images left to write")
    train, test = _split_indices(len(kept), test_fraction, seed)
    chosen = {name: kept[idx] for name, idx in (("train", train), ("test", test)) if len(idx)}
    _cross_split(result, chosen, report, say)
    report.count_kinds(result.files, result.kinds, result.frames, kept)
    report.counts["images_written"] = len(kept)
    splits = {name: RawSplit(labels=labels[rows], load=partial(_take_rows, result.pixels, rows))
              for name, rows in chosen.items()}
    return RawDataset(
        name=src.name, height=size, width=size, channels=channels, classes=classes,
        splits=splits, source={"kind": "folder", "path": str(src), "prepare_report": report.summary()},
        preprocessing=_describe(decode_options, options), report=report, work=temporary,
    )


def _describe(decode_options: DecodeOptions, options: FolderOptions) -> str:
    size = decode_options.size
    geometry = {None: f"none: images must be {size}x{size}",
                "center-crop": f"center crop of the largest square, Lanczos resize to {size}",
                "center-crop-wide": f"center crop of the largest 2:1 rectangle, Lanczos resize to {size}x{size // 2}, "
                                    f"letterboxed to {size}x{size}",
                "pad": f"Lanczos resize of the long side to {size}, padded to {size}x{size}",
                "resize": f"Lanczos resize to {size}x{size} (aspect ratio not kept)"}[decode_options.transform]
    alpha = ("transparent images refused" if options.alpha == "error"
             else f"alpha composited on RGB{tuple(decode_options.background)}")
    return f"{geometry}; EXIF orientation applied; 16-bit scaled to 8; {alpha}"


CELEBA_SPLITS = {"0": "train", "1": "valid", "2": "test"}


def read_celeba_attribute(path: Path, attribute: str) -> dict[str, int]:
    """file -> 1 where `attribute` is +1 in list_attr_celeba.txt (count line, names line, then
    `file v1 .. v40` with +-1), else 0."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(lines) < 2:
        raise DataError(f"{path}: not a CelebA attribute file (expected a count line and a names line)")
    names = lines[1].split()
    if attribute not in names:
        raise DataError(f"--attr {attribute}: not in {path}; it has {', '.join(names)}")
    column = names.index(attribute) + 1
    values = {}
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or parts[column] not in ("1", "-1"):
            raise DataError(f"{path}:{lineno}: expected '<file>.jpg' and {len(names)} values of 1/-1")
        values[parts[0]] = int(parts[column] == "1")
    return values


def _beside(src: Path, name: str) -> Path | None:
    """A CelebA list file next to the images (or inside their folder)."""
    for candidate in (src.parent / name, src / name):
        if candidate.is_file():
            return candidate
    return None


def read_celeba_dataset(
    src: Path, partition: Path | None, size: int, crop: int, attribute: str | None = None,
    attributes_file: Path | None = None,
) -> RawDataset:
    """Aligned CelebA (img_align_celeba/ or img_align_celeba.zip), split by list_eval_partition.txt;
    with `attribute` (e.g. Smiling), labelled 0/1 by list_attr_celeba.txt."""
    if zipfile.is_zipfile(src) if src.is_file() else False:
        with zipfile.ZipFile(src) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(".jpg"))
        by_file = {os.path.basename(n): (str(src), n) for n in names}
    elif src.is_dir():
        root = src / "img_align_celeba" if (src / "img_align_celeba").is_dir() else src
        by_file = {p.name: str(p) for p in sorted(root.glob("*.jpg"))}
    else:
        raise DataError(f"{src}: neither a directory of CelebA images nor img_align_celeba.zip")
    if not by_file:
        raise DataError(f"{src}: no .jpg images found")
    partition = partition or _beside(src, "list_eval_partition.txt")
    split_of: dict[str, str] = {}
    if partition is not None:
        for lineno, line in enumerate(Path(partition).read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in CELEBA_SPLITS:
                raise DataError(f"{partition}:{lineno}: expected '<file>.jpg 0|1|2', got {line!r}")
            split_of[parts[0]] = CELEBA_SPLITS[parts[1]]
        missing = [f for f in split_of if f not in by_file]
        if missing:
            raise DataError(
                f"{partition} lists {len(missing)} images not found in {src} (e.g. {missing[0]})"
            )
    names = sorted(split_of) if split_of else sorted(by_file)
    classes, label_of = [], {}
    if attribute is not None:
        attributes_file = attributes_file or _beside(src, "list_attr_celeba.txt")
        if attributes_file is None:
            raise DataError(f"--attr {attribute}: no list_attr_celeba.txt beside {src}; pass --attr-file")
        label_of = read_celeba_attribute(attributes_file, attribute)
        unlabelled = [n for n in names if n not in label_of]
        if unlabelled:
            raise DataError(f"{attributes_file} has no row for {len(unlabelled)} images (e.g. {unlabelled[0]})")
        classes = [f"not {attribute}", attribute]
    options = DecodeOptions(size, 3, "center-crop", crop=crop)
    splits = {}
    for split in ("train", "valid", "test"):
        chosen = [n for n in names if split_of.get(n, "train") == split]
        if chosen:
            sources = [by_file[n] for n in chosen]
            splits[split] = RawSplit(
                labels=np.array([label_of.get(n, -1) for n in chosen], np.int64),
                load=partial(_decode_many, sources, options),
            )
    return RawDataset(
        name="celeba", height=size, width=size, channels=3, classes=classes, splits=splits,
        source={"kind": "celeba", "path": str(src), "partition": str(partition or ""),
                **({"attribute": attribute, "attributes_file": str(attributes_file)} if attribute else {})},
        preprocessing=(f"center crop {crop}x{crop} of the 178x218 aligned image, "
                       f"Lanczos resize to {size}x{size}"),
    )
