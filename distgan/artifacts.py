"""What a run leaves for others to read: the generator directory, and D and the listing of checkpoints.

    runs/NAME/generator/                  generator.safetensors (EMA weights) + generator.json (spec + info)
    runs/NAME/checkpoints/step-0001000/   the full training state (distgan/training/checkpoint.py writes it),
                                          with discriminator.json: D's spec beside its weights

Export, sampling and the metrics read these files without importing the
training package. Everything is read back with safe loaders (safetensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distgan.models import Discriminator, Generator, discriminator_from_spec, generator_from_spec

CHECKPOINT_PREFIX = "step-"
GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_SPEC = "generator.json"
DISCRIMINATOR_WEIGHTS = "model_1.safetensors"  # accelerator.save_state's name for the second prepared model
DISCRIMINATOR_SPEC = "discriminator.json"


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


def save_generator(generator: Generator, directory: Path, info: dict[str, Any]) -> None:
    """The EMA generator alone, with its architecture: enough to sample or export, nothing to resume."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    tmp_weights = directory / f".{GENERATOR_WEIGHTS}.tmp"
    save_file(weights, str(tmp_weights))
    tmp_spec = directory / f".{GENERATOR_SPEC}.tmp"
    tmp_spec.write_text(json.dumps({"spec": generator.spec.to_dict(), **info}, indent=2))
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


def load_discriminator(checkpoint: Path) -> Discriminator:
    """D of a training checkpoint, rebuilt from its discriminator.json (eval mode)."""
    spec_path, weights_path = checkpoint / DISCRIMINATOR_SPEC, checkpoint / DISCRIMINATOR_WEIGHTS
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; not a distgan training checkpoint with its discriminator")
    try:
        discriminator = discriminator_from_spec(json.loads(spec_path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise ValueError(f"{spec_path}: {exc}") from exc
    try:
        discriminator.load_state_dict(load_file(str(weights_path)))
    except (SafetensorError, RuntimeError) as exc:
        raise ValueError(f"{weights_path}: does not fit the discriminator of {spec_path}: {str(exc)[:400]}") from exc
    return discriminator.eval()
