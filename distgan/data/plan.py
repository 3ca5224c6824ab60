"""The epoch plan: which sample positions each rank and each of its workers reads.

All from the manifest's per-shard counts, so every rank computes the same plan
with no communication:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


