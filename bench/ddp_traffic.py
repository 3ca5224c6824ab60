"""What DDP exchanges in one distgan training step, counted on the CPU with torch's real DDP.

Drives the real G and D of a config through DistributedDataParallel in a one-process gloo group, with the
trainer's DDP settings (accelerate's defaults: 25 MiB buckets with a 1 MiB first bucket,
broadcast_buffers=True), in the order of distgan/training/step.py, and records every gradient bucket (a
comm hook) and every buffer broadcast of the second step (the first has one bucket per network; DDP then
rebuilds its buckets in the order the gradients arrive). Per step that is: D's gradients once per D
update (x loss.d_steps); G's once, in the G update (the G update calls D's unwrapped module with its
weights frozen, so no D gradient is all-reduced there); the BatchNorm buffers of G and of D broadcast
from rank 0 before their forward, one collective per dtype. Gradients are all-reduced in the weights'
dtype, fp32, under bf16 autocast too (distgan registers no compression hook); counting under the case's
autocast shows it. Used by bench/scaling.py; the batch does not change what is exchanged.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distgan.config import load_config  # noqa: E402
from distgan.models import build_discriminator, build_generator  # noqa: E402

SHAPES = {"dcgan28": (1, 28, 28), "dcgan64": (3, 64, 64)}  # bench/train.py's synthetic images


@dataclass(frozen=True)
class Collective:
    """One NCCL call of a training step, as DDP issues it."""

    kind: str  # all_reduce | broadcast
    owner: str  # G | D
    phase: str  # the backward an all-reduce overlaps ("D update 1", "G update"), or "forward"
    nbytes: int
    dtype: str


@contextmanager
def one_process_group():
    """A gloo group of one rank, so DDP runs its real reducer and buffer broadcasts on the CPU."""
    if dist.is_initialized():
        raise RuntimeError("bench/ddp_traffic.py counts collectives in its own one-process group, but this process "
                           "already has a torch.distributed process group")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


class Recorder:
    """Wraps two DDP modules and records each collective they issue, labelled with the step's phase."""

    def __init__(self):
        self.phase = "forward"
        self.collectives: list[Collective] = []

    def watch(self, ddp: DistributedDataParallel, owner: str) -> None:
        def on_bucket(state, bucket):
            flat = bucket.buffer()
            self.collectives.append(Collective("all_reduce", owner, self.phase,
                                               flat.numel() * flat.element_size(), str(flat.dtype)))
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, on_bucket)
        # DDP's buffer broadcasts all go through this (private) method; torch offers no hook for them.
        broadcast = getattr(ddp, "_distributed_broadcast_coalesced", None)
        if broadcast is None:
            raise RuntimeError(f"torch {torch.__version__}'s DDP has no _distributed_broadcast_coalesced: "
                               "bench/ddp_traffic.py cannot see its buffer broadcasts")

        def on_broadcast(tensors, buffer_size, authoritative_rank=0):
            by_dtype: dict[torch.dtype, int] = {}  # broadcast_coalesced flattens one buffer per dtype
            for t in tensors:
                by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel() * t.element_size()
            self.collectives += [Collective("broadcast", owner, "forward", size, str(dtype))
                                 for dtype, size in by_dtype.items()]
            return broadcast(tensors, buffer_size, authoritative_rank)

        ddp._distributed_broadcast_coalesced = on_broadcast


def count_collectives(config: Path, precision: str, batch: int = 2) -> list[Collective]:
    """The collectives of one steady-state training step of `config` (the batch does not change them)."""
    cfg = load_config(config)
    if cfg.model.sync_bn:
        raise ValueError(f"{config}: model.sync_bn=true adds an all-reduce per BatchNorm; not modelled here")
    if cfg.model.arch not in SHAPES or cfg.model.conditional:
        raise ValueError(f"{config}: only unconditional dcgan28/dcgan64 configs are modelled, got "
                         f"model.arch={cfg.model.arch}, model.conditional={cfg.model.conditional}")
    shape = SHAPES[cfg.model.arch]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    torch.manual_seed(0)
    with one_process_group():
        g_module, d_module = build_generator(cfg.model, *shape, 0), build_discriminator(cfg.model, *shape, 0)
        G, D = DistributedDataParallel(g_module), DistributedDataParallel(d_module)
        recorder = Recorder()
        recorder.watch(G, "G")
        recorder.watch(D, "D")
        for _ in range(2):  # the second step runs on the buckets DDP rebuilt after the first
            recorder.collectives.clear()
            training_step(G, D, d_module, cfg.model.nz, cfg.loss.d_steps, shape, batch, autocast, recorder)
    return recorder.collectives


def training_step(G: DistributedDataParallel, D: DistributedDataParallel, d_module: torch.nn.Module, nz: int,
                  d_steps: int, shape: tuple[int, int, int], batch: int,
                  autocast: Callable[[], AbstractContextManager], recorder: Recorder) -> None:
    """The DDP calls of distgan/training/step.py in its order (the losses do not change what is exchanged)."""
    for i in range(d_steps):
        recorder.phase = "forward"
        real = torch.rand(batch, *shape) * 2 - 1
        with torch.set_grad_enabled(i == d_steps - 1), autocast():
            fake = G(torch.randn(batch, nz))  # kept for the G update on the last D update
        with autocast():
            loss_d = D(torch.cat([real, fake.detach()])).float().mean()
        recorder.phase = f"D update {i + 1}"
        loss_d.backward()
    d_module.requires_grad_(False)
    with autocast():
        loss_g = d_module(fake).float().mean()  # D unwrapped, as the trainer's G update calls it
    recorder.phase = "G update"
    loss_g.backward()
    d_module.requires_grad_(True)
    for module in (G, D):
        module.zero_grad(set_to_none=True)
