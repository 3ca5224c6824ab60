"""The whole training step replayed as one CUDA graph: one launch per step instead of hundreds.

At GAN sizes the GPU is not the limit: on an H100 a DCGAN step at batch 128 keeps the
GPU busy for 1.4 ms (DCGAN-28) to 4.2 ms (DCGAN-64), but the CPU needs 7-9 ms to launch
its 200-300 kernels through autograd, the optimisers and Python (BENCHMARKS.md). A CUDA
graph records those launches once and replays them with one call.

What capture needs, and where the trainer provides it: fixed shapes (the loader drops the
last partial batch); every tensor the step changes updated in place (weights, optimiser
state, GradScaler, running sums, the EMA); no host reads inside the step; Adam with
`capturable=True`; a few eager steps on a side stream first (cuDNN autotuning, lazy
optimiser and scaler state); noise drawn inside the graph (PyTorch advances the CUDA
generator's offset at each replay, so every step gets fresh noise).

Under DDP the gradient all-reduce is captured too (NCCL >= 2.9.6 supports collectives in a graph),
following PyTorch's recipe for full-backward capture: DDP is constructed on the same side stream that
later warms up and captures the step (`capture_stream`), and at least 11 DDP-enabled eager steps run
before the capture (DDP rebuilds its buckets and settles its host-side bookkeeping in the first
iterations). Every rank captures the same collectives in the same order, as the NCCL documentation
requires, because every rank runs the same step. GlobalBatchNorm (`model.sync_bn` across ranks) keeps
the step eager.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from distgan.config import TrainConfig
from distgan.training.errors import TrainingError

log = logging.getLogger("distgan")

HostBatch = tuple[torch.Tensor, torch.Tensor | None]  # uint8 images NHWC, int64 labels (or None)
Step = Callable[[list[HostBatch], "int | torch.Tensor"], None]


def batches_to_device(batches: list[HostBatch], device: torch.device) -> list[HostBatch]:
    """Pinned host batches to the device, asynchronously (the conversion to float happens in the step)."""
    return [(images.to(device, non_blocking=True), None if labels is None else labels.to(device, non_blocking=True))
            for images, labels in batches]


# PyTorch's recipe for capturing DDP's backward: at least 11 DDP-enabled eager iterations before the capture.
DDP_WARMUP_STEPS = 11
SINGLE_WARMUP_STEPS = 3


def use_step_graph(train_cfg: TrainConfig, device: torch.device, world: int, lazy_r1: bool = False,
                   sync_bn: bool = False) -> bool:
    """train.cuda_graph: null (auto) replays the step as a CUDA graph where it can, i.e. on CUDA devices (one
    process, or DDP with its all-reduce captured) without torch.compile; true insists (an error where it
    cannot); false never. Where the step stays eager, the reason is logged."""
    wanted = train_cfg.cuda_graph
    if wanted is False or (wanted is None and train_cfg.compile):
        return False
    if device.type != "cuda":
        if wanted:
            log.warning("train.cuda_graph needs a CUDA device; training eagerly on %s", device.type)
        else:  # auto on a CPU: nothing to tell (debug only, so that errors stay the one line on stderr)
            log.debug("the step runs eagerly on %s (train.cuda_graph: a CUDA graph needs a CUDA device)", device.type)
        return False
    if lazy_r1:
        if wanted:
            raise TrainingError("train.cuda_graph replays one fixed step, but lazy regularisation (loss.r1_every > 1 "
                                "with R1, loss.pl_every > 1 with path length) changes the step every few steps: "
                                "set those to 1 or train.cuda_graph=null")
        log.info("lazy regularisation (loss.r1_every or loss.pl_every > 1): the step runs eagerly (a CUDA graph "
                 "replays one fixed step)")
        return False
    if sync_bn and world > 1:
        if wanted:
            raise TrainingError(f"train.cuda_graph: model.sync_bn's batch statistics across the {world} ranks are "
                                f"not captured; set train.cuda_graph=false or null, or model.sync_bn=false")
        log.info("model.sync_bn across %d ranks: the step runs eagerly", world)
        return False
    return True


def capture_stream(graphed: bool, device: torch.device) -> torch.cuda.Stream | None:
    """The side stream a graphed run builds DDP on, warms up on and captures on (None: an eager run)."""
    if not graphed:
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


def warmup_steps(model: torch.nn.Module) -> int:
    """Eager steps before the capture: DDP's recipe asks for 11; one process needs 3 (cuDNN autotuning, lazy
    optimiser and scaler state)."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel) or isinstance(
        getattr(model, "_orig_mod", None), torch.nn.parallel.DistributedDataParallel)
    return DDP_WARMUP_STEPS if ddp else SINGLE_WARMUP_STEPS


class EagerStep:
    """The step as it is: host batches to the device, then the step (the graphed step's eager twin)."""

    def __init__(self, step: Step, device: torch.device):
        self.step, self.device = step, device

    def __call__(self, batches: list[HostBatch], step: int) -> None:
        self.step(batches_to_device(batches, self.device), step)


class GraphedStep:
    """Call like the step: `graphed(host_batches, step)`; eager for `warmup` calls on `stream` (a side stream,
    the one DDP was built on in a DDP run), then captured there once and replayed."""

    def __init__(self, step: Step, device: torch.device, warmup: int = SINGLE_WARMUP_STEPS,
                 stream: torch.cuda.Stream | None = None):
        self.step, self.device, self.warmup = step, device, warmup
        self.stream = stream if stream is not None else capture_stream(True, device)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[HostBatch] = []
        self.step_index = torch.zeros((), device=device)  # the EMA's warm-up reads the step on the device

    def __call__(self, batches: list[HostBatch], step: int) -> None:
        self.calls += 1
        if self.calls <= self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                self.step(batches_to_device(batches, self.device), step)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            return
        if self.graph is None:  # capture records the kernels; it runs none of them
            self.inputs = batches_to_device(batches, self.device)
            self.graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: only this thread's unsafe calls break the capture, not the NCCL watchdog's
                # event queries or the pin-memory thread's allocations, which run concurrently.
                with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
                    self.step(self.inputs, self.step_index)
            except RuntimeError as exc:  # an op that cannot be captured (e.g. a host copy inside the step)
                raise RuntimeError(f"train.cuda_graph: the training step could not be captured as a CUDA graph "
                                   f"({exc}); train with train.cuda_graph=false") from exc
        for (images, labels), (host_images, host_labels) in zip(self.inputs, batches):
            images.copy_(host_images, non_blocking=True)
            if labels is not None:
                labels.copy_(host_labels, non_blocking=True)
        self.step_index.fill_(step)
        self.graph.replay()
