"""Checkpoints (full training state) and the generator directory (what export needs).

    runs/NAME/checkpoints/step-0001000/   accelerator.save_state (G, D, RNG per rank)
                                          + optimizers.pt, ema.safetensors, state.json
    runs/NAME/generator/                  generator.safetensors (EMA weights) + generator.json

A checkpoint is written into a temporary directory by every rank and renamed
into place by rank 0 once all are done, so a kill at any moment leaves either
the previous checkpoint or the new one, never half of one. Everything is read
back with safe loaders: safetensors, and torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distgan.models import Generator, generator_from_spec

CHECKPOINT_PREFIX = "step-"
SET_ASIDE_DIR = "checkpoints-set-aside"
GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_SPEC = "generator.json"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(run_path: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = run_path / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / "state.json").is_file()]
    return sorted(found, key=checkpoint_step)


def set_aside_checkpoints_after(run_path: Path, step: int) -> list[Path]:
    """Move this run's checkpoints newer than `step` to runs/NAME/checkpoints-set-aside/.

    A resume from an older checkpoint abandons them, but left in place they would be what the
    next resume=auto (every SLURM requeue) picks, and the keep-last rule would delete the
    checkpoint resumed from first. Moved, not deleted: nothing is lost.
    """
    newer = [p for p in list_checkpoints(run_path) if checkpoint_step(p) > step]
    aside = run_path / SET_ASIDE_DIR
    moved = []
    for path in newer:
        aside.mkdir(exist_ok=True)
        target, n = aside / path.name, 1
        while target.exists():  # set aside before, by an earlier resume
            target, n = aside / f"{path.name}.{n}", n + 1
        os.replace(path, target)
        moved.append(target)
    return moved


def save_checkpoint(
    accelerator: Accelerator, run_path: Path, step: int, optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler, ema: torch.nn.Module, state: dict[str, Any], keep: int,
) -> Path:
    final = run_path / "checkpoints" / checkpoint_name(step)
    staging = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))  # models on rank 0, RNG states on every rank
    if accelerator.is_main_process:
        torch.save({**{k: o.state_dict() for k, o in optimizers.items()}, "scaler": scaler.state_dict()},
                   staging / "optimizers.pt")
        save_file({k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()},
                  str(staging / "ema.safetensors"))
        (staging / "state.json").write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in list_checkpoints(run_path)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, path: Path, optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler, ema: torch.nn.Module,
) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote; returns state.json.

    RNG states are per rank: with another world size accelerate restores what
    exists, so such a resume continues correctly but not bitwise.
    """
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete distgan checkpoint (no state.json)")
    accelerator.load_state(str(path))
    saved = torch.load(path / "optimizers.pt", map_location="cpu", weights_only=True)
    for key, optimizer in optimizers.items():
        # The state (moments, step counts) is the checkpoint's; the settings are this run's: its learning
        # rates (config, lr_scaling for this world size) and capturable/fused, which also decide where
        # load_state_dict puts the step counts (a CUDA-graphed step needs them on the device).
        groups = [{**old, **{k: v for k, v in group.items() if k != "params"}}
                  for old, group in zip(saved[key]["param_groups"], optimizer.param_groups)]
        optimizer.load_state_dict({**saved[key], "param_groups": groups})
    scaler.load_state_dict(saved["scaler"])
    # Loaded on the host, copied into the EMA's tensors wherever they live (safetensors refuses
    # a device like "cpu:0", which a multi-process CPU run has).
    ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    return json.loads((path / "state.json").read_text())


def save_generator(generator: Generator, directory: Path, info: dict[str, Any]) -> None:
    """The EMA generator alone, with its architecture: enough to sample or export, nothing to resume."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    tmp_weights = directory / f".{GENERATOR_WEIGHTS}.tmp"
    save_file(weights, str(tmp_weights))
    tmp_spec = directory / f".{GENERATOR_SPEC}.tmp"
    tmp_spec.write_text(json.dumps({"spec": generator.spec, **info}, indent=2))
    os.replace(tmp_weights, directory / GENERATOR_WEIGHTS)
    os.replace(tmp_spec, directory / GENERATOR_SPEC)


def load_generator(directory: Path) -> tuple[Generator, dict[str, Any]]:
    """A run directory or its generator/ directory -> (G in eval mode, its JSON)."""
    directory = Path(directory)
    if (directory / "generator" / GENERATOR_SPEC).is_file():
        directory = directory / "generator"
    spec_path, weights_path = directory / GENERATOR_SPEC, directory / GENERATOR_WEIGHTS
    if not spec_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{directory}: not a run or generator directory (needs {GENERATOR_SPEC} and {GENERATOR_WEIGHTS})"
        )
    try:
        info = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{spec_path}: not valid JSON: {exc}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("spec"), dict):
        raise ValueError(f"{spec_path}: no 'spec' object (the architecture); not a distgan generator.json")
    try:
        generator = generator_from_spec(info["spec"])
    except ValueError as exc:
        raise ValueError(f"{spec_path}: {exc}") from exc
    try:
        weights = load_file(str(weights_path))
    except SafetensorError as exc:
        raise ValueError(f"{weights_path}: not a safetensors file: {exc}") from exc
    try:
        generator.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not fit the architecture in {spec_path}: {exc}") from exc
    return generator.eval(), info
