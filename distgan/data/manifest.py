"""The shard format and its manifest, `dataset.json`.

A distgan shard is a standard WebDataset tar. Each tar *sample* is a chunk of
up to `chunk_size` images, stored as two members that share a key:

    {key}.images.npy   uint8  [n, H, W, C]   (NumPy .npy, no pickle)
    {key}.labels.npy   int64  [n]            (-1 where the dataset has no labels)

Packing many images into one raw member is what makes the loader fast: one
tar header and one `np.load` per chunk instead of a PNG decode per image.
`dataset.json` beside the shards records shapes, classes, per-shard sample
counts and sha256, so every rank can plan its share of an epoch up front, and
(format 2) a checksum of every chunk, so every chunk a rank reads is checked
whatever part of a shard it reads (the whole-file sha256 only checks a shard
read from start to end, which per-rank, per-worker spans rarely do).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

FORMAT_NAME = "distgan-shards"
FORMAT_VERSION = 2  # 2 added ShardInfo.chunk_xxh3_128
READABLE_VERSIONS = (1, 2)  # a format-1 manifest loads, without per-chunk checks
MANIFEST_NAME = "dataset.json"
IMAGES_EXT = "images.npy"
LABELS_EXT = "labels.npy"
MEMBER_EXTS = (IMAGES_EXT, LABELS_EXT)


class DataError(RuntimeError):
    """Bad input data: a missing, corrupt or mismatched file, named in the message."""


def _check_fields(record: Any, where: str, prefix: str) -> None:
    """Each field of a manifest record has its declared type (counts >= 0, sizes >= 1): a DataError names the key."""
    hints = typing.get_type_hints(type(record))
    for item in dataclasses.fields(record):
        value, hint = getattr(record, item.name), hints[item.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is int:
            least = 1 if item.name in ("height", "width", "channels", "chunk_size") else 0
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
            want = f"an integer >= {least}"
        elif hint is str:
            ok, want = isinstance(value, str), "a string"
        elif origin is list and args == (str,):
            ok, want = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
        elif origin is dict:
            ok, want = isinstance(value, dict), "an object"
        else:
            continue  # splits and shards: built and checked on their own
        if not ok:
            raise DataError(f"{where}: key '{prefix}{item.name}' must be {want}, got {value!r:.60}")


@dataclass
class ShardInfo:
    name: str
    num_samples: int
    sha256: str
    bytes: int
    # Per chunk, in tar order: xxh3-128 of its images member's bytes followed by its labels member's
    # (chunk_digest). Empty in a format-1 manifest.
    chunk_xxh3_128: list[str] = field(default_factory=list)


@dataclass
class SplitInfo:
    num_samples: int
    shards: list[ShardInfo]


@dataclass
class Manifest:
    name: str
    height: int
    width: int
    channels: int
    classes: list[str]
    chunk_size: int
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = field(default_factory=dict)
    preprocessing: str = ""
    distgan_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    encoding: dict[str, str] = field(
        default_factory=lambda: {
            IMAGES_EXT: "NumPy .npy, uint8, shape [n, H, W, C], no pickle",
            LABELS_EXT: "NumPy .npy, int64, shape [n], -1 = unlabeled",
        }
    )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C): the layout stored in the shards."""
        return (self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_chunk_sums(self) -> bool:
        return self.format_version >= 2

    def num_chunks(self, shard: ShardInfo) -> int:
        """Chunks in a shard: every one holds chunk_size images but the last."""
        return -(-shard.num_samples // self.chunk_size)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DataError(
                f"split {name!r} not in manifest {self.name!r}; it has {sorted(self.splits)}"
            )
        split = self.splits[name]
        if not split.shards:
            raise DataError(f"split {name!r} of {self.name!r} lists no shards")
        return split

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> "Manifest":
        """The manifest in `text` (bytes: as read from the file, UTF-8); any flaw is a DataError naming `where`."""
        try:
            raw = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not UTF-8 text (byte {exc.start}: {exc.reason}); a manifest is JSON in "
                            f"UTF-8, as distgan-data prepare writes it") from None
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise DataError(f"{where}: not a distgan manifest (expected format={FORMAT_NAME!r})")
        if raw.get("format_version") not in READABLE_VERSIONS:
            raise DataError(
                f"{where}: format_version {raw.get('format_version')} is not supported "
                f"(this distgan reads {', '.join(map(str, READABLE_VERSIONS))}); re-run distgan-data prepare"
            )
        try:
            raw["splits"] = {
                name: SplitInfo(
                    num_samples=int(s["num_samples"]),
                    shards=[ShardInfo(**sh) for sh in s["shards"]],
                )
                for name, s in raw["splits"].items()
            }
            manifest = cls(**raw)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{where}: malformed manifest ({exc!r})") from None
        _check_fields(manifest, where, "")
        for name, split in manifest.splits.items():
            for i, shard in enumerate(split.shards):
                _check_fields(shard, where, f"splits.{name}.shards[{i}].")
        for name, split in manifest.splits.items():
            counted = sum(s.num_samples for s in split.shards)
            if counted != split.num_samples:
                raise DataError(
                    f"{where}: split {name!r} says {split.num_samples} samples "
                    f"but its shards add up to {counted}"
                )
            for shard in split.shards:
                if manifest.has_chunk_sums and len(shard.chunk_xxh3_128) != manifest.num_chunks(shard):
                    raise DataError(f"{where}: shard {shard.name} lists {len(shard.chunk_xxh3_128)} chunk checksums, "
                                    f"but its {shard.num_samples} samples make {manifest.num_chunks(shard)} chunks")
        return manifest

    def write(self, directory: Path) -> Path:
        """Atomic write: readers never see a half-written manifest."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def chunk_digest(images_member: bytes, labels_member: bytes) -> str:
    """A chunk's checksum as `dataset.json` records it: xxh3-128 over both members' bytes, images first.

    It is there to catch corruption (a changed byte anywhere in what a rank reads) at ~40 GB/s, so
    checking every chunk costs the loader next to nothing; sha256 (2 GB/s here) cost up to a tenth
    of its images/s. The whole file's sha256 stays in the manifest for `distgan-data verify`.
    """
    digest = xxhash.xxh3_128(images_member)
    digest.update(labels_member)
    return digest.hexdigest()


def decode_array(data: bytes, dtype: np.dtype, where: str) -> np.ndarray:
    """A read-only view of a .npy member's data: no copy, and never an unpickle.

    Only the header is parsed; an object dtype (the one that would need pickle)
    is refused like any other wrong dtype.
    """
    stream = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, found = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"{where}: not a valid .npy array ({exc})") from exc
    if found != np.dtype(dtype) or fortran_order:
        raise DataError(f"{where}: dtype {found}{' (Fortran order)' if fortran_order else ''}, "
                        f"expected {np.dtype(dtype)}")
    count = int(np.prod(shape))
    if len(data) - stream.tell() != count * found.itemsize:
        raise DataError(f"{where}: .npy data size does not match its shape {shape}")
    return np.frombuffer(data, found, count, stream.tell()).reshape(shape)
