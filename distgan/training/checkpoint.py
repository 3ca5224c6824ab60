"""Checkpoints of the training state: written whole or not at all, on every rank together.

    runs/NAME/checkpoints/step-0001000/   accelerator.save_state (G, D, RNG per rank),
                                          optimizers.pt, ema.safetensors, discriminator.json, state.json,
                                          augment.safetensors (with aug.policy), family.safetensors (a
                                          model family's loss-term state, when it has one)

Every rank writes its part into `.tmp-step-…`; the ranks then agree (one flag on the
control channel) that every part is on disk, and rank 0 renames the directory into
place. A kill at any moment leaves the previous checkpoint or the new one, never half
of one; a failed write (a full disk) is seen by every rank, which all stop with the
error, the staging directory removed and the previous checkpoint intact. Everything
is read back with safe loaders: safetensors, and torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from distgan.artifacts import DISCRIMINATOR_SPEC, checkpoint_name, list_checkpoints
from distgan.config import Config
from distgan.ddp import Control
from distgan.training.errors import TrainingError
from distgan.training.run_dir import RunDirectory
from distgan.training.state import TrainState

AUGMENT_STATE = "augment.safetensors"  # the augmentation probability p and the adaptive sums
FAMILY_STATE = "family.safetensors"  # the model family's loss-term state (distgan.models.LossTerms), if any


def save_checkpoint(accelerator: Accelerator, control: Control, run_path: Path, state: TrainState,
                    info: dict[str, Any], keep: int) -> Path:
    """`info` goes to state.json beside the progress (what a resume checks: world size, data, config)."""
    final = run_path / "checkpoints" / checkpoint_name(state.progress.step)
    staging = final.with_name(f".tmp-{final.name}")
    error = None
    try:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))  # models on rank 0, RNG states on every rank
        if accelerator.is_main_process:
            torch.save({**{k: o.state_dict() for k, o in state.optimizers.items()},
                        "scaler": state.scaler.state_dict()}, staging / "optimizers.pt")
            save_file({k: v.detach().contiguous().cpu() for k, v in state.ema.state_dict().items()},
                      str(staging / "ema.safetensors"))
            if state.augment_p is not None:
                save_file(dict(state.augment_p.state_dict()), str(staging / AUGMENT_STATE))
            if state.loss_terms is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in state.loss_terms.state_dict().items()},
                          str(staging / FAMILY_STATE))
            (staging / DISCRIMINATOR_SPEC).write_text(json.dumps(state.d_module.spec.to_dict(), indent=2))
            progress = {"step": state.progress.step, "epoch": state.progress.epoch, "batch": state.progress.batch}
            (staging / "state.json").write_text(json.dumps({**progress, **info}, indent=2))
    except Exception as exc:  # noqa: BLE001  a full disk, a quota, a lost mount (safetensors and torch.save
        # wrap OSError in their own types): this rank's part is not on disk, and every rank must learn of it
        error = f"{type(exc).__name__}: {exc}"
    if control.any(error is not None):
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        failed = "; ".join(control.messages(error))
        raise TrainingError(f"writing checkpoint {final} failed ({failed}); the run stopped. The previous "
                            f"checkpoint is intact: free space and resume with train.resume=auto")
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for old in list_checkpoints(run_path)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, state: TrainState) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote into `state`; returns state.json.

    RNG states are per rank: with another world size accelerate restores what
    exists, so such a resume continues correctly but not bitwise.
    """
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete distgan checkpoint (no state.json)")
    accelerator.load_state(str(path))
    saved = torch.load(path / "optimizers.pt", map_location="cpu", weights_only=True)
    for key, optimizer in state.optimizers.items():
        # The state (moments, step counts) is the checkpoint's; the settings are this run's: its learning
        # rates (config, lr_scaling for this world size) and capturable/fused, which also decide where
        # load_state_dict puts the step counts (a CUDA-graphed step needs them on the device).
        groups = [{**old, **{k: v for k, v in group.items() if k != "params"}}
                  for old, group in zip(saved[key]["param_groups"], optimizer.param_groups)]
        optimizer.load_state_dict({**saved[key], "param_groups": groups})
    state.scaler.load_state_dict(saved["scaler"])
    # Loaded on the host, copied into the EMA's tensors wherever they live (safetensors refuses
    # a device like "cpu:0", which a multi-process CPU run has).
    state.ema.load_state_dict(load_file(str(path / "ema.safetensors")))
    if state.augment_p is not None and (path / AUGMENT_STATE).is_file():  # else: the run had no augmentation
        state.augment_p.load_state_dict(load_file(str(path / AUGMENT_STATE)))
    if state.loss_terms is not None:
        state.loss_terms.load_state_dict(load_file(str(path / FAMILY_STATE)))
    info = json.loads((path / "state.json").read_text())
    state.progress.step, state.progress.epoch, state.progress.batch = info["step"], info["epoch"], info["batch"]
    return info


def resume(cfg: Config, accelerator: Accelerator, run_dir: RunDirectory, checkpoint: Path | None, state: TrainState,
           data_digest: str, batches_per_epoch: int) -> dict:
    """Load `checkpoint` (if any) into `state` once the run directory's rules allow it; returns the config
    changes to record. On another world size the loader position becomes as many images of the epoch."""
    if checkpoint is None:
        return {}
    saved = json.loads((checkpoint / "state.json").read_text())
    changes = run_dir.check_resume(cfg, saved, data_digest)  # before loading, so a changed width is named
    try:
        load_checkpoint(accelerator, checkpoint, state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise TrainingError(f"{checkpoint} does not fit this config's networks: {str(exc)[:500]}") from exc
    world = accelerator.num_processes
    if saved.get("world_size", world) != world:
        state.progress.batch = min(state.progress.batch * saved["world_size"] // world, batches_per_epoch)
    return changes
