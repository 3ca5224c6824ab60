"""One rank's stream of batches (the DataLoader's dataset): its workers read their blocks of the
epoch plan shard by shard, check every chunk they use, mix images across chunks in a shuffle buffer
(seeded by seed, epoch and range) and hand over uint8 NHWC batches in shared memory."""

from __future__ import annotations

import logging
from typing import Iterator, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distgan.data.manifest import DataError, Manifest
from distgan.data.plan import EpochPlan, consumed_by_worker, plan_epoch
from distgan.data.shards import iter_shard_chunks

log = logging.getLogger(__name__)

OnCorrupt = Literal["raise", "skip"]


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


