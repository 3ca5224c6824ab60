"""What a LAPGAN run leaves for others: each level's checkpoints and the pyramid's spec, and the whole
pyramid assembled from them (export and sampling read these without importing the training package).

    runs/NAME/levels/lapgan.json                    the pyramid's spec + run info
    runs/NAME/levels/level-K/step-0000100/          G, its EMA and D (safetensors), both Adams (optim.pt), state.json

The pyramid is assembled from each level's EMA generator: the weights the main trainer exports too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from distgan.config import ConfigError
from distgan.models.lapgan import LapganSpec, LaplacianGenerator, lapgan_from_spec

LEVELS_DIR = "levels"
SPEC_FILE = "lapgan.json"
STEP_PREFIX = "step-"
EMA_FILE = "ema.safetensors"  # the level's EMA generator (what export and sampling use)


def level_dir(run_path: Path, level: int) -> Path:
    return run_path / LEVELS_DIR / f"level-{level}"


def level_checkpoints(run_path: Path, level: int) -> list[Path]:
    """A level's complete checkpoints, oldest first (staging directories never listed)."""
    root = level_dir(run_path, level)
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / "state.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


# The config key behind each spec key (the others come from the data: its image shape and classes).
SPEC_KEYS = {"coarse_nz": "model.nz", "ngf": "model.ngf", "ndf": "model.ndf",
             "d_dropout": "model.d_dropout", "conditional": "model.conditional", "num_classes": "data (its classes)",
             "channels": "data (its image shape)", "height": "data (its image shape)", "width": "data (its image shape)"}


def check_spec(run_path: Path, spec: LapganSpec) -> None:
    """A start must continue the run's pyramid: ConfigError naming each config key whose value differs from the
    one the run's lapgan.json was built with (none yet: a new run, nothing to check)."""
    path = run_path / LEVELS_DIR / SPEC_FILE
    try:
        known = json.loads(path.read_text())["spec"] if path.is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    if known is None:
        return
    new = spec.to_dict()
    differ = {}
    for key in sorted((set(known) | set(new)) - {"nz"}):  # nz: derived from the others
        if known.get(key) != new.get(key):
            differ.setdefault(SPEC_KEYS.get(key, key), []).append(f"{key} {known.get(key)!r} -> {new.get(key)!r}")
    if differ:
        raise ConfigError(f"{path}: this run's pyramid differs from the config's in "
                          + "; ".join(f"{name} ({', '.join(changes)})" for name, changes in differ.items())
                          + "; resume with the run's own model settings, or start another run name")


def write_spec(run_path: Path, spec: LapganSpec, info: dict[str, Any]) -> None:
    """The pyramid's spec and run info, atomically (every job of an array job writes the same file)."""
    check_spec(run_path, spec)
    path = run_path / LEVELS_DIR / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SPEC_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"spec": spec.to_dict(), **info}, indent=2))
    os.replace(tmp, path)


def assemble_generator(run_path: Path) -> tuple[LaplacianGenerator, dict[str, Any]]:
    """The whole pyramid from each level's newest checkpoint's EMA generator (eval mode), and the run info with
    `step` the smallest level step; a level without a checkpoint, or a checkpoint without its EMA, is named."""
    info = json.loads((run_path / LEVELS_DIR / SPEC_FILE).read_text())
    generator = lapgan_from_spec(info["spec"])
    steps = []
    for level in range(generator.spec.levels):
        found = level_checkpoints(run_path, level)
        if not found:
            raise FileNotFoundError(f"{level_dir(run_path, level)}: level {level} has no checkpoint yet; "
                                    f"train it (train.levels: [{level}]) before sampling the pyramid")
        ema = found[-1] / EMA_FILE
        if not ema.is_file():
            raise FileNotFoundError(f"{ema}: level {level}'s checkpoint has no EMA generator (written by a distgan "
                                    f"before level EMAs); train the level on to a new checkpoint")
        generator.generators[level].load_state_dict(load_file(str(ema)))
        steps.append(json.loads((found[-1] / "state.json").read_text())["step"])
    return generator.eval(), {**{k: v for k, v in info.items() if k != "spec"}, "step": min(steps)}


