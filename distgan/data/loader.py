"""The streaming loader: every rank reads its own disjoint share of the shards.

How an epoch is planned (all from the manifest's per-shard counts, so every
rank computes the same plan with no communication):

1. the split's shards are put in an order drawn from (seed, epoch) and laid
   end to end as one sequence of N sample positions;
2. the sequence is cut at *sample* granularity into `world_size` equal ranges,
   so every rank gets the same number of batches whatever the shard sizes and
   however few shards there are (a rank may read the end of one shard and
   another rank its start);
3. a rank's batches are cut into contiguous blocks, one per DataLoader worker;
   worker w produces the rank's batches w, w+W, w+2W, ..., which is exactly the
   order in which the DataLoader collects them, so (epoch, batch) names one
   point of the stream and a resume can skip to it.

Within a worker a shuffle buffer (seeded by seed, epoch and range) mixes images
across chunks. Workers yield uint8 NHWC tensors; the float conversion happens
on the device (`to_device`). In a DDP job every batch ends with a tiny all-reduce
on a gloo group that carries an error flag, so a bad shard stops every rank at
once with the name of the file instead of leaving the others waiting. Every
chunk a worker hands on has been checked against its checksum in the manifest.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Iterator, Literal

import braceexpand
import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distgan.data.manifest import MANIFEST_NAME, DataError, Manifest
from distgan.ddp import control_group
from distgan.data.shards import iter_shard_chunks
from distgan.data.worker_signals import ignore_stop_signals, stop_signals_blocked

log = logging.getLogger(__name__)

OnCorrupt = Literal["raise", "skip"]


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
            text = f.read().decode("utf-8")
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


# --- the epoch plan ----------------------------------------------------------------

@dataclass(frozen=True)
class EpochPlan:
    """Sample positions of one rank in one epoch (positions wrap mod N when padding)."""

    shard_order: np.ndarray  # shard indices in the order laid out this epoch
    starts: np.ndarray  # position of each laid-out shard's first sample
    total: int  # N
    rank_start: int
    rank_samples: int
    batch_size: int

    @property
    def num_batches(self) -> int:
        return -(-self.rank_samples // self.batch_size)

    def worker_batches(self, num_workers: int, group: int) -> list[int]:
        """Batches per worker when groups of `group` batches go round-robin to the workers."""
        n = self.num_batches
        groups = -(-n // group)
        counts = [group * (groups // num_workers + (1 if w < groups % num_workers else 0))
                  for w in range(num_workers)]
        if groups:
            counts[(groups - 1) % num_workers] -= groups * group - n  # the short last group
        return counts

    def worker_range(self, worker: int, counts: list[int]) -> tuple[int, int]:
        """First and last + 1 position of one worker's contiguous block of batches."""
        start = self.rank_start + sum(counts[:worker]) * self.batch_size
        stop = min(start + counts[worker] * self.batch_size, self.rank_start + self.rank_samples)
        return start, stop


def plan_epoch(
    counts: list[int], epoch: int, seed: int, rank: int, world_size: int,
    batch_size: int, drop_last: bool,
) -> EpochPlan:
    total = int(sum(counts))
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(counts))
    starts = np.concatenate([[0], np.cumsum(np.asarray(counts)[order])[:-1]]).astype(np.int64)
    if drop_last:
        per_rank = (total // world_size) // batch_size * batch_size
    else:
        per_rank = -(-total // world_size)
    return EpochPlan(order, starts, total, rank * per_rank, per_rank, batch_size)


def consumed_by_worker(batches_done: int, worker: int, num_workers: int) -> int:
    """How many of its own batches worker `worker` had produced after `batches_done` in round-robin."""
    return max(0, (batches_done - worker + num_workers - 1) // num_workers)


# --- the shuffle buffer --------------------------------------------------------------

class ShuffleBuffer:
    """A reservoir of images from which batches are drawn at random, O(batch) per draw."""

    def __init__(self, capacity: int, image_shape: tuple[int, ...], rng: np.random.Generator,
                 incoming: int):
        room = capacity + incoming
        self.images = np.empty((room, *image_shape), np.uint8)
        self.labels = np.empty(room, np.int64)
        self.capacity, self.fill, self.rng = capacity, 0, rng

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        n = len(images)
        self.images[self.fill:self.fill + n] = images
        self.labels[self.fill:self.fill + n] = labels
        self.fill += n

    def pop(self, n: int, random: bool, out: tuple[np.ndarray, np.ndarray] | None) -> int:
        """Move up to n images (random ones, or the oldest) into `out`; None only discards them."""
        n = min(n, self.fill)
        chosen = self.rng.choice(self.fill, n, replace=False) if random else np.arange(n)
        if out is not None:
            np.take(self.images, chosen, axis=0, out=out[0][:n])
            np.take(self.labels, chosen, axis=0, out=out[1][:n])
        # Move the survivors among the last n slots into the holes left below them.
        tail = self.fill - n
        holes = chosen[chosen < tail]
        keep = np.ones(n, bool)
        keep[chosen[chosen >= tail] - tail] = False
        movers = np.arange(tail, self.fill)[keep]
        self.images[holes] = self.images[movers]
        self.labels[holes] = self.labels[movers]
        self.fill = tail
        return n


# --- the per-rank stream ---------------------------------------------------------------

class ShardStream(IterableDataset):
    """One rank's batches from the epoch and start batch set by `set_position`: that epoch, or all
    epochs from there on (`endless`), so one set of DataLoader workers serves a whole run."""

    def __init__(
        self, manifest: Manifest, urls: list[str], split: str, batch_size: int, rank: int,
        world_size: int, seed: int, shuffle_buffer: int, drop_last: bool, on_corrupt: OnCorrupt,
    ):
        self.manifest, self.urls = manifest, urls
        self.shards = manifest.split(split).shards
        self.counts = [s.num_samples for s in self.shards]
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.drop_last, self.on_corrupt = drop_last, on_corrupt
        self.epoch, self.start_batch, self.endless = 0, 0, False
        image_bytes = int(np.prod(manifest.image_shape))
        # Batches per worker->main message: one shared-memory hand-over costs ~1 ms,
        # so small batches travel together (about 4 MB a message).
        self.group = max(1, (4 << 20) // (batch_size * image_bytes))

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.counts, epoch, self.seed, self.rank, self.world_size,
                          self.batch_size, self.drop_last)

    def set_position(self, epoch: int, start_batch: int, endless: bool = False) -> None:
        self.epoch, self.start_batch, self.endless = epoch, start_batch, endless

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int] | DataError]:
        """Yield messages of up to `group` consecutive batches: (images, labels, skipped); a DataError
        ends the stream as its last message, so the rank raises it in its own words (raised in a worker,
        the DataLoader would re-raise it as a worker traceback)."""
        try:
            yield from self._messages()
        except DataError as exc:
            yield exc

    def _messages(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The DataLoader asks its workers strictly in turn, so the message due next
        comes from worker `sent % num_workers`, `sent` counting the messages of
        all workers so far; each worker rotates its role in the epoch to match.
        """
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info else (1, 0)
        first_group, into_group = divmod(self.start_batch, self.group)
        groups = -(-self.plan(0).num_batches // self.group)  # messages per whole epoch
        epoch, sent = self.epoch, 0
        while True:
            role = (worker_id - sent + first_group) % num_workers
            yield from self._epoch_messages(epoch, role, num_workers, first_group, into_group)
            if not self.endless:
                return
            sent += groups - first_group
            epoch, first_group, into_group = epoch + 1, 0, 0

    def _epoch_messages(self, epoch: int, worker: int, num_workers: int, first_group: int, into_group: int):
        """This worker's messages of one epoch, in the role of worker `worker` of the epoch's plan."""
        group, B = self.group, self.batch_size
        plan = self.plan(epoch)
        counts = plan.worker_batches(num_workers, group)
        start, stop = plan.worker_range(worker, counts)
        n_batches = counts[worker]
        skip = consumed_by_worker(first_group, worker, num_workers) * group
        if worker == first_group % num_workers:
            skip += into_group
        if n_batches <= skip:
            return
        rng = np.random.default_rng([self.seed, epoch, start, 0xB0F])
        chunk = self.manifest.chunk_size
        buffer = ShuffleBuffer(max(self.shuffle_buffer, B), self.manifest.image_shape, rng, incoming=chunk)
        random = self.shuffle_buffer > 0
        produced, skipped, filled, message = 0, 0, 0, None

        def draw():
            """Draw one batch into the current message; return the message once it is full."""
            nonlocal produced, skipped, filled, message
            if produced < skip:
                buffer.pop(B, random, None)
                produced += 1
                return None
            if message is None:  # allocated in shared memory: handing it over costs no copy
                batches = min(group - produced % group, n_batches - produced)
                message = (torch.empty((batches * B, *buffer.images.shape[1:]), dtype=torch.uint8).share_memory_(),
                           torch.empty(batches * B, dtype=torch.int64).share_memory_())
                filled = 0
            filled += buffer.pop(B, random, (message[0].numpy()[filled:], message[1].numpy()[filled:]))
            produced += 1
            if produced % group == 0 or produced == n_batches:
                done = (message[0][:filled], message[1][:filled], skipped)
                message, skipped = None, 0
                return done
            return None

        for images, labels, lost in self._read_positions(plan, start, stop):
            skipped += lost
            for i in range(0, len(images), chunk):
                buffer.add(images[i:i + chunk], labels[i:i + chunk])
                while buffer.fill >= buffer.capacity and produced < n_batches:
                    if (ready := draw()) is not None:
                        yield ready
        while buffer.fill and produced < n_batches:
            if (ready := draw()) is not None:
                yield ready
        if produced != n_batches:
            raise DataError(
                f"rank {self.rank}: stream gave {produced} batches in epoch {epoch}, planned {n_batches} "
                f"(a shard holds fewer samples than its manifest says)"
            )

    def _read_positions(self, plan: EpochPlan, start: int, stop: int):
        """Yield (images, labels, skipped) covering positions [start, stop) exactly.

        With on_corrupt='skip', images lost to a bad shard are made up by reading
        on past `stop` (wrapping), so batch counts stay equal on every rank.
        """
        needed, position = stop - start, start
        self._bad_shards: set[int] = set()  # read once, then stepped over by the make-up reads
        limit = start + 2 * plan.total  # reading twice round the epoch finds nothing new
        while needed > 0:
            if position >= limit:
                raise DataError(f"rank {self.rank}: every shard in reach was unreadable")
            take = min(needed, stop - position) if position < stop else needed
            for images, labels, skipped in self._read_span(plan, position, take):
                needed -= len(images)
                yield images, labels, skipped
            position += take

    def _read_span(self, plan: EpochPlan, position: int, length: int):
        """Read `length` positions from `position` on, shard by shard."""
        end = position + length
        while position < end:
            p = position % plan.total
            slot = int(np.searchsorted(plan.starts, p, side="right") - 1)
            shard = int(plan.shard_order[slot])
            offset = p - int(plan.starts[slot])
            take = min(end - position, self.counts[shard] - offset)
            if shard not in self._bad_shards:
                yield from self._read_shard(shard, offset, offset + take)
            position += take

    def _read_shard(self, shard: int, lo: int, hi: int):
        """Samples [lo, hi) of one shard; the chunks that hold them are checked against their checksums."""
        url, seen, delivered = self.urls[shard], 0, 0
        whole = lo == 0 and hi == self.counts[shard]
        needed = range(lo // self.manifest.chunk_size, (hi - 1) // self.manifest.chunk_size + 1)
        try:
            for chunk in iter_shard_chunks(url, self.manifest, self.shards[shard], needed):
                n = len(chunk.images)
                a, b = max(lo - seen, 0), min(hi - seen, n)
                if a < b:
                    yield chunk.images[a:b], chunk.labels[a:b], 0
                    delivered += b - a
                seen += n
                if seen >= hi and not whole:
                    break
            if seen < hi:
                raise DataError(
                    f"{url}: ends after {seen} samples, manifest says {self.counts[shard]}"
                )
        except DataError as exc:
            if self.on_corrupt == "raise":
                raise
            lost = hi - lo - delivered
            self._bad_shards.add(shard)
            log.warning("skipping %d samples of a bad shard: %s", lost, exc)
            yield np.empty((0, *self.manifest.image_shape), np.uint8), np.empty(0, np.int64), lost


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
        timeout_s: float = 600.0,
    ):
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', not {on_corrupt!r}")
        self.rank, self.world_size = rank, world_size
        self._group = control_group(world_size)
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
        while endless or done < len(self):
            error = None
            if not pending:
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
            self._raise_if_any_failed(error)
            done += 1
            yield epoch, done, Batch(*pending.popleft())
            if done == len(self) and endless:
                epoch, done = epoch + 1, 0

    def _raise_if_any_failed(self, error: Exception | None) -> None:
        """All ranks learn of any rank's data error (one small gloo all-reduce)."""
        if self._group is False:
            if error is not None:
                raise error
            return
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        if flag.item() == 0:
            return
        messages: list[str | None] = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else str(error), group=self._group)
        if error is not None:
            raise error
        failed = "; ".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m)
        raise DataError(f"stopping: data error on another rank ({failed})")

    def _check_same_plan_everywhere(self, fingerprint: str) -> None:
        if self._group is False:
            return
        fingerprints: list[str | None] = [None] * self.world_size
        dist.all_gather_object(fingerprints, fingerprint, group=self._group)
        if len(set(fingerprints)) != 1:
            raise DataError("ranks read different manifests or batch sizes; every rank must see the same data")
