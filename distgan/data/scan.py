"""The validation pass: every file of a folder listed, read, hashed and decoded once, on all cores.

Listing never hangs: hidden files, non-image suffixes, FIFOs/devices and symlink loops are skipped
with a reason (folders are followed through symlinks once each). Decoding writes each good file's
final pixels into one uint8 memory-mapped array (`WORK/pixels.u8`, the size of the finished
dataset) and each finished batch's facts into an append-only journal (`WORK/scan.jsonl`), so the
scan is the only decode, memory stays bounded, and an interrupted scan resumes where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distgan.data.images import BadImage, DecodeOptions, decode

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
BATCH = 32  # files per worker task and per journal line
PLAN_NAME, JOURNAL_NAME, PIXELS_NAME = "plan.json", "scan.jsonl", "pixels.u8"


@dataclass
class Listing:
    root: Path
    files: list[str]  # relative POSIX paths, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def _entry_problem(path: str, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if os.path.islink(path):
        return "broken symlink"
    return f"cannot stat ({error.strerror})"


def list_images(root: Path, exclude: frozenset[str] = frozenset()) -> Listing:
    """Every image file under `root` by suffix, and every other entry skipped with its reason."""
    listing = Listing(root, [])
    seen: set[tuple[int, int]] = set()
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        directory = os.path.join(root, rel_dir)
        info = os.stat(directory)
        key = (info.st_dev, info.st_ino)
        if key in seen:
            listing.skipped.append((rel_dir, "symlink loop (folder already listed)"))
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            listing.skipped.append((rel_dir, f"unreadable folder ({exc.strerror})"))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.name.startswith("."):
                listing.skipped.append((rel, "hidden"))
                continue
            try:
                mode = os.stat(entry.path).st_mode
            except OSError as exc:
                listing.skipped.append((rel, _entry_problem(entry.path, exc)))
                continue
            if stat.S_ISDIR(mode):
                pending.append(rel)
            elif not stat.S_ISREG(mode):
                listing.skipped.append((rel, "not a regular file"))
            elif rel in exclude:
                continue
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                listing.files.append(rel)
            else:
                listing.skipped.append((rel, f"not an image file ({Path(entry.name).suffix or 'no suffix'})"))
    listing.files.sort()
    return listing


@dataclass
class ScanResult:
    """What the scan learnt of each listed file (index i is listing.files[i])."""

    files: list[str]
    pixels: np.ndarray  # uint8 [N, size, size, channels], memory-mapped; rows of bad files are zero
    sha256: np.ndarray  # S64 hex of each file's bytes ("" for unreadable files)
    width: np.ndarray  # int32, the source's size, upright
    height: np.ndarray
    kinds: np.ndarray  # uint16 `images.Kinds` bits
    frames: np.ndarray  # int32
    transparent: np.ndarray  # bool
    reasons: dict[int, str]  # bad files only
    resumed: int = 0  # files whose results came from an interrupted earlier scan


def scan_batch(root: str, names: list[str], start: int, pixels_path: str, shape: tuple[int, ...],
               options: DecodeOptions) -> list[list]:
    """One worker task: read, hash and decode `names`, pixels into their rows of the shared array."""
    pixels = np.memmap(pixels_path, np.uint8, "r+", shape=shape)
    rows = []
    for offset, name in enumerate(names):
        digest, reason, facts = "", None, [0, 0, 0, 1, False]
        try:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            decoded = decode(data, options)
            pixels[start + offset] = decoded.pixels
            facts = [decoded.width, decoded.height, int(decoded.kinds), decoded.frames, decoded.transparent]
        except OSError as exc:
            reason = f"cannot read ({exc.strerror or exc})"
        except BadImage as exc:
            reason = str(exc)
        except Exception as exc:  # Pillow's plugins raise many types on corrupt data
            reason = f"cannot decode ({type(exc).__name__}: {exc})"
        rows.append([digest, *facts, reason])
    del pixels  # no msync: the page cache keeps the rows through a kill of this process
    return rows


def _plan(listing: Listing, options: DecodeOptions) -> dict:
    """What makes an earlier scan's results valid: the options and every file's name, size and mtime."""
    digest = hashlib.sha256()
    for name in listing.files:
        st = os.stat(listing.root / name)
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"root": str(listing.root.resolve()), "files": len(listing.files), "listing_sha256": digest.hexdigest(),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}}


def _read_journal(path: Path) -> list[dict]:
    """Complete journal lines only: a line cut by a kill is dropped (its batch is decoded again)."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_bytes().split(b"\n"):
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _open_work(work: Path, plan: dict, shape: tuple[int, ...], say) -> list[dict]:
    """The work folder for this plan: an earlier interrupted scan's journal when it matches, else fresh."""
    plan_path = work / PLAN_NAME
    if plan_path.is_file():
        try:
            same = json.loads(plan_path.read_text()) == plan
        except ValueError:
            same = False
        if same and (work / PIXELS_NAME).is_file():
            return _read_journal(work / JOURNAL_NAME)
        say(f"restarting the scan: {work} holds an earlier scan of other files or options")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with open(work / PIXELS_NAME, "wb") as f:
        f.truncate(int(np.prod(shape)))
    (work / PLAN_NAME).write_text(json.dumps(plan, indent=1))
    return []


def scan(listing: Listing, options: DecodeOptions, work: Path, workers: int | None = None,
         say=print) -> ScanResult:
    """Decode every listed file once (parallel, with a progress bar), resuming an interrupted scan in `work`."""
    n = len(listing.files)
    shape = (max(n, 1), options.size, options.size, options.channels)
    journal = _open_work(work, _plan(listing, options), shape, say)
    result = ScanResult(
        files=listing.files, pixels=np.memmap(work / PIXELS_NAME, np.uint8, "r", shape=shape),
        sha256=np.zeros(n, "S64"), width=np.zeros(n, np.int32), height=np.zeros(n, np.int32),
        kinds=np.zeros(n, np.uint16), frames=np.ones(n, np.int32), transparent=np.zeros(n, bool), reasons={},
    )
    done = set()
    for entry in journal:
        _record(result, entry["start"], entry["rows"])
        done.add(entry["start"])
    result.resumed = sum(len(e["rows"]) for e in journal)
    if result.resumed:
        say(f"resuming the scan: {result.resumed:,} of {n:,} files were decoded by an earlier, interrupted or "
            f"refused run ({work}); shards are written afresh")
    starts = [s for s in range(0, n, BATCH) if s not in done]
    workers = workers or len(os.sched_getaffinity(0))
    args = (str(listing.root), str(work / PIXELS_NAME), shape, options)
    with open(work / JOURNAL_NAME, "a") as log, \
            tqdm(total=n, initial=result.resumed, unit="img", desc="checking images") as bar:
        def finished(start: int, rows: list[list]) -> None:
            _record(result, start, rows)
            log.write(json.dumps({"start": start, "rows": rows}) + "\n")
            log.flush()
            bar.update(len(rows))

        if workers == 1 or len(starts) < 4:
            for start in starts:
                finished(start, scan_batch(*_batch_task(listing.files, start, args)))
        else:
            _scan_parallel(listing.files, starts, args, workers, finished)
    return result


def _batch_task(files: list[str], start: int, args: tuple) -> tuple:
    """scan_batch's arguments for one batch: only its own names travel to the worker."""
    root, pixels_path, shape, options = args
    return (root, files[start:start + BATCH], start, pixels_path, shape, options)


def _scan_parallel(files: list[str], starts: list[int], args: tuple, workers: int, finished) -> None:
    """Batches on a process pool, at most 4 per worker in flight (bounded memory for any number of files)."""
    with ProcessPoolExecutor(workers) as pool:
        queue, running = iter(starts), {}
        while True:
            while len(running) < 4 * workers and (start := next(queue, None)) is not None:
                running[pool.submit(scan_batch, *_batch_task(files, start, args))] = start
            if not running:
                return
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(running.pop(future), future.result())


def _record(result: ScanResult, start: int, rows: list[list]) -> None:
    for i, (digest, width, height, kinds, frames, transparent, reason) in enumerate(rows, start):
        result.sha256[i] = digest
        result.width[i], result.height[i], result.kinds[i] = width, height, kinds
        result.frames[i], result.transparent[i] = frames, transparent
        if reason is not None:
            result.reasons[i] = reason
