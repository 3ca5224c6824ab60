"""Which rank trains which LAPGAN level (`train.levels`), and each level's DDP process group.

The levels of a Laplacian pyramid are independent in training (a finer level is conditioned on the
*real* image's coarser level), so they are spread over the ranks: with at least as many ranks as levels,
the ranks are cut into one contiguous block per level (the spare ranks going to the finest levels, which
cost the most) and a level with several ranks runs DDP inside its block only; with fewer ranks than
levels, rank r owns levels r, r + world, ... alone.
"""

from __future__ import annotations

from typing import Sequence

import torch.distributed as dist

KEY = "train.levels"


def parse_levels(value: object, num_levels: int) -> tuple[int, ...]:
    """`train.levels` ("all" or a list of level indices, 0 the finest) -> sorted distinct levels; ValueError
    naming the key otherwise."""
    if value == "all":
        return tuple(range(num_levels))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{KEY} must be 'all' or a non-empty list of level indices, got {value!r}")
    for level in value:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < num_levels:
            raise ValueError(f"{KEY}: level {level!r} is not a level of this pyramid "
                             f"(0 = finest .. {num_levels - 1} = coarsest)")
    if len(set(value)) != len(value):
        raise ValueError(f"{KEY} lists a level twice: {list(value)}")
    return tuple(sorted(value))


def assign_ranks(levels: Sequence[int], world_size: int) -> dict[int, tuple[int, ...]]:
    """level -> the ranks that train it (every rank owns at least one level, every level has a rank)."""
    levels = sorted(levels)
    if world_size < len(levels):
        return {level: (i % world_size,) for i, level in enumerate(levels)}
    base, extra = divmod(world_size, len(levels))
    out, start = {}, 0
    for i, level in enumerate(levels):  # finest first: it gets the spare ranks
        size = base + (1 if i < extra else 0)
        out[level] = tuple(range(start, start + size))
        start += size
    return out


def owned_levels(assignment: dict[int, tuple[int, ...]], rank: int) -> tuple[int, ...]:
    return tuple(level for level, ranks in sorted(assignment.items()) if rank in ranks)


def level_groups(assignment: dict[int, tuple[int, ...]], rank: int) -> dict[int, object | None]:
    """This rank's levels -> the process group of their ranks (None for a level trained by one rank).

    `dist.new_group` is collective over the whole world: every rank creates every multi-rank group, in the
    same (level) order, and keeps the ones it belongs to."""
    groups: dict[int, object | None] = {}
    for level, ranks in sorted(assignment.items()):
        group = dist.new_group(list(ranks)) if len(ranks) > 1 else None  # the default backend (NCCL on GPUs)
        if rank in ranks:
            groups[level] = group
    return groups
