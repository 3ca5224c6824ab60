"""Write shards from a raw dataset, read them back chunk by chunk, and verify them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from tqdm import tqdm

import distgan
from distgan.data.manifest import (
    IMAGES_EXT, LABELS_EXT, MANIFEST_NAME, MEMBER_EXTS, DataError, Manifest, ShardInfo,
    SplitInfo, chunk_digest, decode_array, encode_array,
)
from distgan.data.sources import RawDataset

REPRODUCIBLE_MTIME = 0  # fixed member times: the same data gives byte-identical shards


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shards(
    raw: RawDataset,
    out: Path,
    samples_per_shard: int = 10_000,
    chunk_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Manifest:
    """Shuffle each split once (seeded) and write it as tar shards plus dataset.json.

    Shards are written to a temporary folder and moved into place before the
    manifest, so an interrupted run never leaves a manifest over partial shards.
    """
    if samples_per_shard < 1 or chunk_size < 1:
        raise DataError("--samples-per-shard and --chunk-size must be positive")
    out = Path(out)
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise DataError(f"{out / MANIFEST_NAME} exists; pass --overwrite to replace the dataset")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        splits: dict[str, SplitInfo] = {}
        expected = (raw.height, raw.width, raw.channels)
        total = sum(s.num_samples for s in raw.splits.values())
        with tqdm(total=total, unit="img", desc=f"sharding {raw.name}") as bar:
            for split_name, split in raw.splits.items():
                order = np.random.default_rng([seed, len(split_name)]).permutation(split.num_samples)
                shards = []
                for shard_index, start in enumerate(range(0, split.num_samples, samples_per_shard)):
                    indices = order[start:start + samples_per_shard]
                    images = split.load(indices)
                    if images.shape[1:] != expected or images.dtype != np.uint8:
                        raise DataError(
                            f"{raw.name}/{split_name}: loader produced {images.dtype} {images.shape[1:]}, "
                            f"expected uint8 {expected}"
                        )
                    labels = split.labels[indices].astype(np.int64)
                    name = f"{split_name}-{shard_index:06d}.tar"
                    chunk_sums = _write_one_shard(staging / name, split_name, shard_index, images, labels,
                                                  chunk_size)
                    shards.append(ShardInfo(
                        name=name, num_samples=len(indices), sha256=file_digest(staging / name),
                        bytes=(staging / name).stat().st_size, chunk_xxh3_128=chunk_sums,
                    ))
                    bar.update(len(indices))
                splits[split_name] = SplitInfo(num_samples=split.num_samples, shards=shards)
    except BaseException:  # a failure or Ctrl-C: leave no half-written dataset behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = Manifest(
        name=raw.name, height=raw.height, width=raw.width, channels=raw.channels,
        classes=raw.classes, chunk_size=chunk_size, splits=splits, source=raw.source,
        preprocessing=raw.preprocessing, distgan_version=distgan.__version__,
    )
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    for split in splits.values():
        for shard in split.shards:
            os.replace(staging / shard.name, out / shard.name)
    staging.rmdir()
    manifest.write(out)
    return manifest


def _write_one_shard(
    path: Path, split: str, shard_index: int, images: np.ndarray, labels: np.ndarray, chunk: int
) -> list[str]:
    """Write one shard; returns each chunk's chunk_digest, for the manifest."""
    sums = []
    with wds.TarWriter(str(path), mtime=REPRODUCIBLE_MTIME, encoder=False) as writer:
        for chunk_index, start in enumerate(range(0, len(images), chunk)):
            members = (encode_array(np.ascontiguousarray(images[start:start + chunk])),
                       encode_array(labels[start:start + chunk]))
            sums.append(chunk_digest(*members))
            writer.write({"__key__": f"{split}-{shard_index:06d}-{chunk_index:06d}",
                          IMAGES_EXT: members[0], LABELS_EXT: members[1]})
    return sums


@dataclass
class Chunk:
    key: str
    images: np.ndarray  # uint8 [n, H, W, C]
    labels: np.ndarray  # int64 [n]


class _HashingReader:
    """A read-through sha256, so a shard read from start to end is checked at no extra pass."""

    def __init__(self, stream):
        self.stream, self.digest = stream, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.digest.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


def iter_shard_chunks(url: str, manifest: Manifest, shard: ShardInfo | None = None,
                      check: range | None = None) -> Iterator[Chunk]:
    """Stream one shard (path or any webdataset URL) as validated chunks.

    Any member other than the two .npy arrays is refused, so a shard cannot
    smuggle in a pickle; arrays are loaded with allow_pickle=False. With the
    shard's manifest entry, every chunk whose index is in `check` (default: all)
    is checked against its checksum before it is decoded, and a shard read to its
    end must hold the manifest's number of chunks (a corrupt tar header ends a
    tar stream quietly). A format-1 manifest has no per-chunk sums: there a
    shard read to its end is checked against the whole file's sha256 instead.
    """
    expected = manifest.image_shape
    sums = shard.chunk_xxh3_128 if shard is not None else []
    check = range(len(sums)) if check is None else check
    whole_file = shard is not None and not sums and check == range(manifest.num_chunks(shard))
    pending: dict[str, bytes] = {}
    pending_key, index = None, 0  # index: the chunk being read
    try:
        stream = wds.gopen(url, "rb")
    except Exception as exc:
        raise DataError(f"{url}: cannot open ({exc})") from exc
    reader = _HashingReader(stream) if whole_file else stream
    stopped_early = False
    try:
        for member in wds.tariterators.tar_file_iterator(reader):
            fname = member["fname"]
            key, _, ext = fname.partition(".")
            if ext not in MEMBER_EXTS:
                raise DataError(
                    f"{url}: unexpected member {fname!r} at chunk {index}; distgan shards hold only "
                    f"*.{IMAGES_EXT} and *.{LABELS_EXT} (nothing is ever unpickled)"
                )
            if pending_key is not None and key != pending_key:
                raise DataError(f"{url}: chunk {index} ({pending_key}) is incomplete (has only {list(pending)})")
            pending_key = key
            pending[ext] = member["data"]
            if len(pending) == len(MEMBER_EXTS):
                yield _checked_chunk(url, index, key, pending, sums if sums and index in check else None, expected)
                pending, pending_key, index = {}, None, index + 1
        if pending:
            raise DataError(f"{url}: chunk {index} ({pending_key}) is incomplete at the end of the shard")
        if shard is not None and index != manifest.num_chunks(shard):
            raise DataError(f"{url}: the tar ends at chunk {index} but the manifest lists "
                            f"{manifest.num_chunks(shard)} chunks (corrupt tar header or truncated shard)")
        if whole_file and reader.drain() != shard.sha256:
            raise DataError(f"{url}: sha256 does not match the manifest (corrupt shard)")
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{url}: corrupt or truncated shard at chunk {index} ({exc})") from exc
    except GeneratorExit:  # the reader wanted only part of the shard
        stopped_early = True
        raise
    finally:
        try:
            stream.close()
        except Exception as exc:  # a failed curl/pipe reports its exit status here
            # ... unless we closed it early: a pipe command may then exit non-zero on EPIPE.
            if not stopped_early:
                raise DataError(f"{url}: reading failed ({exc})") from exc


def _checked_chunk(url: str, index: int, key: str, members: dict[str, bytes], sums: list[str] | None,
                   expected: tuple[int, int, int]) -> Chunk:
    """One chunk's arrays, its checksum (where `sums` is given) checked before anything is decoded."""
    where = f"{url}: chunk {index} ({key})"
    if sums is not None and chunk_digest(members[IMAGES_EXT], members[LABELS_EXT]) != sums[index]:
        raise DataError(f"{where}: checksum does not match the manifest (corrupt shard)")
    images = decode_array(members[IMAGES_EXT], np.uint8, f"{where}.{IMAGES_EXT}")
    labels = decode_array(members[LABELS_EXT], np.int64, f"{where}.{LABELS_EXT}")
    if images.ndim != 4 or images.shape[1:] != expected:
        raise DataError(f"{where}: images of shape {images.shape[1:]}, expected {expected} (H, W, C)")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: {len(labels)} labels for {len(images)} images")
    return Chunk(key, images, labels)


def verify(directory: Path, deep: bool = True) -> list[str]:
    """Check every shard against the manifest; returns one message per problem."""
    directory = Path(directory)
    try:
        manifest = Manifest.from_json((directory / MANIFEST_NAME).read_bytes(), str(directory / MANIFEST_NAME))
    except FileNotFoundError:
        return [f"{directory / MANIFEST_NAME}: missing"]
    except DataError as exc:
        return [str(exc)]
    problems = []
    listed = set()
    for split_name, split in manifest.splits.items():
        if not split.shards:
            problems.append(f"split {split_name!r}: lists no shards")
        for shard in split.shards:
            listed.add(shard.name)
            path = directory / shard.name
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            if path.stat().st_size != shard.bytes:
                problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {shard.bytes}")
            elif file_digest(path) != shard.sha256:
                problems.append(f"{path}: sha256 does not match the manifest")
            if not deep:
                continue
            try:
                count = 0
                # Format 2: every chunk against its own sha256, so the report names the bad one.
                for chunk in iter_shard_chunks(str(path), manifest, shard if manifest.has_chunk_sums else None):
                    count += len(chunk.images)
                    n = manifest.num_classes
                    bad = chunk.labels[(chunk.labels < 0) | (chunk.labels >= n)] if n else chunk.labels[chunk.labels != -1]
                    if len(bad):
                        valid = f"0..{n - 1}" if n else "-1 (unlabeled dataset)"
                        problems.append(f"{path}: {chunk.key} has label {bad[0]}, expected {valid}")
                if count != shard.num_samples:
                    problems.append(f"{path}: holds {count} samples, manifest says {shard.num_samples}")
            except DataError as exc:
                problems.append(str(exc))
    for extra in sorted(p.name for p in directory.glob("*.tar")):
        if extra not in listed:
            problems.append(f"{directory / extra}: not listed in {MANIFEST_NAME}")
    return problems
