"""The streaming loader: every rank reads its own disjoint share of the shards.

The epoch plan (`plan.py`) gives each rank and each of its DataLoader workers
its sample positions, the same on every rank without communication. Within a
worker a shuffle buffer (seeded by seed, epoch and range) mixes images across
chunks (`stream.py`). Workers yield uint8 NHWC tensors; the float conversion
happens on the device (`to_device`). Every chunk a worker hands on has been
checked against its checksum in the manifest. A bad shard stops every rank with
the name of the file instead of leaving the others waiting: in training at the
trainer's next sync (`defer_errors`, no per-batch collective), standalone
through an error flag all-reduced after every batch.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections import deque
from typing import Iterator

import braceexpand
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader

from distgan.data.manifest import MANIFEST_NAME, DataError, Manifest
from distgan.data.stream import OnCorrupt, ShardStream
from distgan.data.worker_signals import ignore_stop_signals, stop_signals_blocked
from distgan.ddp import Control


class OldManifestWarning(UserWarning):
    """The data's manifest predates per-chunk checksums (shown once per dataset and process)."""


class Batch:
    """A batch on the host: uint8 images [B, H, W, C] and int64 labels [B]."""

    __slots__ = ("images", "labels")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)


def to_device(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 NHWC on the host -> float NCHW in [-1, 1] on the device, channels_last in memory.

    Converting after the copy moves 4x fewer bytes; the NHWC->NCHW permute is
    free because channels_last *is* NHWC in memory.
    """
    return normalize_images(images.to(device, non_blocking=True))


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (channels_last in memory), on the images' device."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


# --- where the shards are --------------------------------------------------------

def read_manifest(data: str) -> Manifest:
    url = data.rstrip("/") + "/" + MANIFEST_NAME
    if "://" not in data and not data.startswith("pipe:"):
        if not os.path.isfile(url):
            raise DataError(f"{url}: no manifest here; prepare the data with `distgan-data prepare`")
    try:
        with wds.gopen(url, "rb") as f:
            text = f.read()
    except Exception as exc:
        raise DataError(f"{url}: cannot read the manifest ({exc})") from exc
    return Manifest.from_json(text, url)


def expand_urls(spec: str) -> list[str]:
    """Brace ranges and (for local paths) globs, in a stable order."""
    urls: list[str] = []
    for item in spec.split("::"):
        for url in braceexpand.braceexpand(item):
            if "://" not in url and not url.startswith("pipe:") and glob.has_magic(url):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise DataError(f"{url}: the glob matches no files")
                urls.extend(matches)
            else:
                urls.append(url)
    return urls


def shard_urls(data: str, manifest: Manifest, split: str, shards: str | None) -> list[str]:
    """Manifest order; an explicit URL list (e.g. `pipe:` or http) must name the same shards in order."""
    names = [s.name for s in manifest.split(split).shards]
    if shards is None:
        return [data.rstrip("/") + "/" + n for n in names]
    urls = expand_urls(shards)
    if len(urls) != len(names):
        raise DataError(
            f"shards {shards!r} expand to {len(urls)} URLs but split {split!r} of the manifest "
            f"has {len(names)} shards ({names[0]} ...)"
        )
    for url, name in zip(urls, names):
        if name not in url:
            raise DataError(f"shard URL {url!r} does not name manifest shard {name!r} (same order expected)")
    return urls


def check_local_shards(urls: list[str], manifest: Manifest, split: str) -> None:
    """Cheap start-up check (existence and size) for shards on a local file system."""
    for url, info in zip(urls, manifest.split(split).shards):
        if "://" in url or url.startswith("pipe:"):
            continue
        path = url[len("file:"):] if url.startswith("file:") else url
        if not os.path.isfile(path):
            raise DataError(f"{path}: shard listed in the manifest is missing")
        size = os.path.getsize(path)
        if size != info.bytes:
            raise DataError(f"{path}: {size} bytes but the manifest says {info.bytes} (truncated or replaced?)")


# --- the per-rank loader -------------------------------------------------------------------

class ShardLoader:
    """Batches of one split for this rank: `len()` per epoch, `epoch(e, start_batch)` to iterate.

    Not to be passed through `accelerator.prepare`: it already shards by rank,
    and batches move to the device with `to_device`.
    """

    def __init__(
        self, data: str, split: str, batch_size: int, *, rank: int = 0, world_size: int = 1,
        seed: int = 0, shuffle_buffer: int = 10_000, num_workers: int = 2, drop_last: bool = True,
        on_corrupt: OnCorrupt = "raise", shards: str | None = None, pin_memory: bool = False,
        timeout_s: float = 600.0, control: Control | None = None, defer_errors: bool = False,
    ):
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', not {on_corrupt!r}")
        self.rank, self.world_size = rank, world_size
        self.control = control if control is not None else Control(world_size)
        # Deferred (a trainer with peers): a data error is kept in `self.error` and a stand-in batch (the last
        # good one) is yielded, so this rank still joins its peers' collectives until the trainer's next sync
        # (`train.sync_every`) stops every rank with the error. Else every batch ends with an error check
        # (over `control`'s ranks; raised at once where it is inactive).
        self.defer_errors = defer_errors
        self.error: DataError | None = None
        self.skipped = 0
        manifest, error = None, None
        try:
            manifest = read_manifest(data)
            urls = shard_urls(data, manifest, split, shards)
            check_local_shards(urls, manifest, split)
            self.stream = ShardStream(manifest, urls, split, batch_size, rank, world_size, seed,
                                      shuffle_buffer, drop_last, on_corrupt)
            if self.stream.plan(0).num_batches < 1:
                raise DataError(
                    f"split {split!r} of {data} has {manifest.split(split).num_samples} samples: "
                    f"too few for one batch of {batch_size} on each of {world_size} ranks"
                )
        except DataError as exc:
            error = exc
        self._raise_if_any_failed(error)
        self.manifest = manifest
        if not manifest.has_chunk_sums and rank == 0:
            warnings.warn(OldManifestWarning(
                f"{data}: dataset.json is format {manifest.format_version} (distgan "
                f"{manifest.distgan_version or '?'}), without per-chunk checksums: only a shard that one worker "
                f"reads from start to end is checked, against its whole-file sha256. `distgan-data prepare "
                f"--overwrite` writes them; `distgan-data verify` checks every file meanwhile"), stacklevel=2)
        # A digest, not the manifest: its chunk sums make it large, and every rank sends it to every rank.
        plan = hashlib.sha256(f"{manifest.to_json()}|{split}|{batch_size}|{len(self)}".encode()).hexdigest()
        self._check_same_plan_everywhere(plan)
        self.num_workers = num_workers
        self._loader_kwargs = dict(
            batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
            timeout=timeout_s if num_workers else 0,
        )

    def __len__(self) -> int:
        """Batches per epoch on every rank."""
        return self.stream.plan(0).num_batches

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """This rank's batches of `epoch`, from batch `start_batch` on (a resume)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        for _, _, batch in self._batches(epoch, start_batch, endless=False):
            yield batch

    def endless(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[int, int, Batch]]:
        """(epoch, batches done in it, Batch) forever from `epoch`, `start_batch`; the pair is where
        to resume. The same batches as `epoch(e)` for e = epoch, epoch + 1, ..., but one set of
        workers serves every epoch: no worker start-up and no empty prefetch queue between epochs."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        if start_batch == len(self):
            epoch, start_batch = epoch + 1, 0
        return self._batches(epoch, start_batch, endless=True)

    def _batches(self, epoch: int, start_batch: int, endless: bool) -> Iterator[tuple[int, int, Batch]]:
        self.stream.set_position(epoch, start_batch, endless)
        # Its own generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run would draw different noise than an uninterrupted one. The workers are
        # born with SIGTERM and SIGINT blocked and never die of them: stopping is the rank's call.
        with stop_signals_blocked():
            messages = iter(DataLoader(self.stream, generator=torch.Generator().manual_seed(epoch),
                                       worker_init_fn=ignore_stop_signals, **self._loader_kwargs))
        pending: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        B, done = self.stream.batch_size, start_batch
        last: tuple[torch.Tensor, torch.Tensor] | None = None
        while endless or done < len(self):
            error = None
            if not pending and self.error is None:
                try:
                    message = next(messages)
                    if isinstance(message, DataError):
                        raise message
                    images, labels, skipped = message
                    pending.extend(zip(images.split(B), labels.split(B)))
                    self.skipped += skipped
                except StopIteration:
                    error = DataError(f"rank {self.rank}: the stream ended early (epoch {epoch})")
                except DataError as exc:
                    error = exc
                except RuntimeError as exc:  # a worker that died or timed out
                    error = DataError(f"rank {self.rank}: data worker failed: {exc}")
            if self.defer_errors:
                self.error = self.error or error
            else:
                self._raise_if_any_failed(error)
            done += 1
            if self.error is not None:
                yield epoch, done, Batch(*(last if last is not None else self._blank_batch()))
            else:
                last = pending.popleft()
                yield epoch, done, Batch(*last)
            if done == len(self) and endless:
                epoch, done = epoch + 1, 0

    def _blank_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A stand-in for a batch that could not be read before the first good one (deferred errors)."""
        B = self.stream.batch_size
        return torch.zeros((B, *self.manifest.image_shape), dtype=torch.uint8), torch.zeros(B, dtype=torch.int64)

    def _raise_if_any_failed(self, error: Exception | None) -> None:
        """All ranks learn of any rank's data error (one small gloo all-reduce)."""
        if not self.control.active:
            if error is not None:
                raise error
            return
        if not self.control.any(error is not None):
            return
        failed = "; ".join(self.control.messages(None if error is None else str(error)))
        if error is not None:
            raise error
        raise DataError(f"stopping: data error on another rank ({failed})")

    def _check_same_plan_everywhere(self, fingerprint: str) -> None:
        if not self.control.active:
            return
        fingerprints: list[str | None] = [None] * self.world_size
        dist.all_gather_object(fingerprints, fingerprint, group=self.control.group)
        if len(set(fingerprints)) != 1:
            raise DataError("ranks read different manifests or batch sizes; every rank must see the same data")
