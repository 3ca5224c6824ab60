"""Run under `accelerate launch` with 2 CPU processes: `ddp.check_consistent` on spectrally normalised ResNet
networks. Equal weights pass; one element changed on rank 1 is named, and so is a swap of two elements that
leaves every sum as it was (the check once compared per-tensor sums). Writes rank<r>.json."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from distgan import ddp
from distgan.models import build_discriminator, build_generator
from distgan.models.resnet import ResNetConfig

out = Path(sys.argv[1])
state = Accelerator()  # reads ACCELERATE_USE_CPU, unlike a bare PartialState
control = ddp.Control(state.num_processes)
assert control.active
torch.manual_seed(0)  # the same networks on both ranks
cfg = ResNetConfig(arch="resnet", nz=8, ngf=2, ndf=2, conditional=True, shared_dim=4)
modules = {"G": build_generator(cfg, 3, 32, 32, 3), "D": build_discriminator(cfg, 3, 32, 32, 3)}
results = {}


def attempt(name: str) -> None:
    try:
        ddp.check_consistent(modules, control)
        results[name] = "equal"
    except RuntimeError as exc:
        results[name] = str(exc)


attempt("same")
weight = modules["D"].head[1].parametrizations.weight.original
with torch.no_grad():
    if state.process_index == 1:
        weight[0, 0] += 1e-3
attempt("changed")
with torch.no_grad():
    if state.process_index == 1:
        weight[0, 0] -= 1e-3
        weight[0, [0, 1]] = weight[0, [1, 0]].clone()  # a swap: the same sum
attempt("swapped")
(out / f"rank{state.process_index}.json").write_text(json.dumps(results))
state.end_training()  # destroys the process group: gloo's threads abort a process that exits with it alive
