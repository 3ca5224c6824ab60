"""The run directory, runs/NAME/: what it holds and the rules that keep one run one run.

    config.yaml          the config in force (every option, resolved)
    config-history/      each earlier config.yaml, with the changes made at a resume (changes.jsonl)
    checkpoints/         complete checkpoints (distgan/training/checkpoint.py)
    checkpoints-set-aside/  newer checkpoints abandoned by a resume from an older one (kept, out of the way)
    samples/             fixed-noise grids, step-N.png (distgan/monitor.py; progress.gif made of them at the end)
    samples-set-aside/   grids of steps past the checkpoint a start resumed from (or of a start that crashed
                         before its first checkpoint): those steps run again
    metrics.jsonl        one line per log step: one unbroken step counter across resumes
    COMPLETED            written when the run reached train.steps
    STOPPED              written when a start stopped cleanly before the end, its checkpoint written (torchrun's
                         agent exits 1 after forwarding a SIGTERM however cleanly the ranks stopped, so
                         slurm/common.sh judges a job by this file)
    STOP                 made by a user or slurm/common.sh: stop at the next sync, with a checkpoint
    wandb_id.txt         the W&B run id, so a resumed run continues the same W&B run
    LOCK                 the start that writes here now (distgan/training/run_lock.py): one writer per directory
    metrics.jsonl.discarded-N  log lines a restart set aside: steps past the checkpoint it resumed from

A resume must continue *this* run: a config that differs in anything but how the run is
observed or how long it runs is refused, with every differing key listed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from omegaconf import OmegaConf

from distgan.artifacts import list_checkpoints, checkpoint_step
from distgan.config import Config, to_yaml
from distgan.ddp import Control
from distgan.training.errors import TrainingError
from distgan.runtime import write_atomically
from distgan.training.markers import Markers
from distgan.training.run_lock import RunLock

log = logging.getLogger("distgan")

SET_ASIDE_DIR = "checkpoints-set-aside"
SAMPLES_SET_ASIDE_DIR = "samples-set-aside"
HISTORY_DIR = "config-history"
# Keys a resume may change: they decide how a run is observed, how long it runs and how fast, not what it learns.
MAY_CHANGE = ("run_dir", "data.path", "data.shards", "data.num_workers", "train.steps", "train.log_every",
              "train.sample_every", "train.checkpoint_every", "train.keep_checkpoints", "train.resume",
              "train.sync_every", "train.max_bad_steps", "train.cuda_graph", "train.compile", "train.compile_mode",
              "train.cudnn_benchmark", "train.allow_config_change", "train.force_unlock", "log.", "eval.")


def flat_config(cfg: Config | dict) -> dict[str, Any]:
    """{'section.key': value} of a config (lists as lists), for comparing and for the trackers."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg) if isinstance(cfg, Config) else OmegaConf.create(cfg))
    flat = {}
    for section, values in tree.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict, dict]:
    """(changes a resume may make, changes that make it another run): {key: (old, new)} each."""
    allowed, refused = {}, {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, tuple | list) and isinstance(after, tuple | list):
            before, after = list(before), list(after)
        if before == after:
            continue
        may = any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE)
        (allowed if may else refused)[key] = (before, after)
    return allowed, refused


class RunDirectory(Markers):
    def __init__(self, cfg: Config, is_main: bool):
        """The directory of the run `cfg` describes (its `run_path`): its markers, LOCK, config record, resume."""
        super().__init__(cfg.run_path, is_main)
        self.lock = RunLock(self.path) if is_main else None

    def acquire(self, control: Control, force: bool) -> None:
        """Rank 0 takes the directory's LOCK before anything is written; a refusal stops every rank alike."""
        error = None
        if self.lock is not None:
            try:
                self.lock.acquire(force)
            except TrainingError as exc:
                error = str(exc)
        if control.any(error is not None):
            raise TrainingError(error or "rank 0 could not take the run directory's lock (its message above)")

    @property
    def lock_lost(self) -> str | None:
        """Why this start no longer holds the directory (another took LOCK over), or None."""
        return self.lock.lost if self.lock is not None else None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def resolve_resume(self, resume: str) -> Path | None:
        existing = list_checkpoints(self.path)
        if resume == "auto":
            return existing[-1] if existing else None
        if resume == "none":
            if existing:
                raise TrainingError(f"{self.path} already has checkpoints; use train.resume=auto or another name")
            return None
        path = Path(resume)
        if not (path / "state.json").is_file():
            raise TrainingError(f"train.resume={path}: not a complete checkpoint directory")
        return path

    def check_resume(self, cfg: Config, saved: dict[str, Any], data_manifest: str) -> dict:
        """Compare the run's record with this config and data; returns the changes a resume may make."""
        record = self.path / "config.yaml"
        old = flat_config(OmegaConf.to_container(OmegaConf.load(record))) if record.is_file() else {}
        allowed, refused = config_changes(old, flat_config(cfg)) if old else ({}, {})
        if saved.get("data_manifest", data_manifest) != data_manifest:
            refused["data (dataset.json contents)"] = (saved["data_manifest"][:12], data_manifest[:12])
        if refused and not cfg.train.allow_config_change:
            lines = "\n".join(f"  {key}: {a!r} -> {b!r}" for key, (a, b) in refused.items())
            raise TrainingError(
                f"{self.path} holds a run trained with another setup; resuming would continue it under "
                f"this one:\n{lines}\nStart a new run with name=NEW_NAME, or go on with this one deliberately "
                f"with train.allow_config_change=true (recorded in {self.path / HISTORY_DIR})")
        return {**allowed, **refused}

    def start(self, cfg: Config, resumed_step: int | None, changes: dict) -> int:
        """Rank 0: the config record (history kept), COMPLETED removed, the log cut back to the resumed step
        (to nothing on a fresh start: a crash before the first checkpoint left lines of steps run again).
        Returns the last step an earlier start logged (its trackers have every step up to it)."""
        if not self.is_main:
            return 0
        self.path.mkdir(parents=True, exist_ok=True)
        record = self.path / "config.yaml"
        if changes and record.is_file():
            history = self.path / HISTORY_DIR
            history.mkdir(exist_ok=True)
            os.replace(record, history / f"config-until-step-{resumed_step:07d}.yaml")
            entry = {"step": resumed_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "forced": bool(cfg.train.allow_config_change),
                     "changes": {k: [a, b] for k, (a, b) in changes.items()}}
            with open(history / "changes.jsonl", "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
            log.warning("resumed at step %d with a changed config: %s", resumed_step,
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        write_atomically(record, to_yaml(cfg))
        self.clear_markers()
        logged = truncate_metrics(self.path / "metrics.jsonl", resumed_step or 0)
        grids = self.set_aside_samples_after(resumed_step or 0)
        if grids:
            log.warning("%d sample grid(s) of steps after %d (run again now) moved to %s", len(grids),
                        resumed_step or 0, grids[0].parent)
        if resumed_step is not None:
            moved = self.set_aside_checkpoints_after(resumed_step)
            if moved:
                log.warning("resumed from step %d: %d newer checkpoint(s) of this run moved to %s (%s)",
                            resumed_step, len(moved), moved[0].parent, ", ".join(p.name for p in moved))
        return logged

    def set_aside_checkpoints_after(self, step: int) -> list[Path]:
        """Move this run's checkpoints newer than `step` to checkpoints-set-aside/.

        A resume from an older checkpoint abandons them, but left in place they would be what the
        next resume=auto (every SLURM requeue) picks, and the keep-last rule would delete the
        checkpoint resumed from first. Moved, not deleted: nothing is lost.
        """
        return move_aside([p for p in list_checkpoints(self.path) if checkpoint_step(p) > step],
                          self.path / SET_ASIDE_DIR)

    def set_aside_samples_after(self, step: int) -> list[Path]:
        """Move samples/step-N.png with N > `step`, and grids a kill left half-written, to samples-set-aside/.

        Those steps run again and draw their grids again; left in place, a grid of a step the new start never
        reaches (or one cut short by the kill) would end up in progress.gif."""
        samples = self.path / "samples"

        def run_again(path: Path) -> bool:
            match = re.fullmatch(r"step-(\d+)\.png", path.name)
            return path.name.endswith(".tmp") or bool(match and int(match.group(1)) > step)

        return move_aside(sorted(filter(run_again, samples.iterdir())) if samples.is_dir() else [],
                          self.path / SAMPLES_SET_ASIDE_DIR)

    def start_trackers(self, accelerator: Accelerator, cfg: Config) -> None:
        """Every option goes to the trackers. Rank 0 alone reads or writes the W&B id file, and a resumed run
        continues the same W&B run."""
        kwargs = {}
        if cfg.log.log_with == "wandb" and self.is_main:
            id_file = self.path / "wandb_id.txt"
            if not id_file.exists():
                write_atomically(id_file, uuid.uuid4().hex[:12])
            kwargs = {"wandb": {"id": id_file.read_text().strip(), "resume": "allow", "name": cfg.name,
                                "dir": str(self.path)}}
        options = {k: str(v) if isinstance(v, list) else v for k, v in flat_config(cfg).items()}
        accelerator.init_trackers(cfg.log.project, config=options, init_kwargs=kwargs)


def move_aside(paths: list[Path], aside: Path) -> list[Path]:
    """Move `paths` into `aside` (made if needed), each under a name of its own there: a name set aside before,
    by an earlier start, gets .1, .2, ... before its suffix. Returns the new paths."""
    moved = []
    for path in paths:
        aside.mkdir(exist_ok=True)
        target, n = aside / path.name, 1
        while target.exists():
            target, n = aside / f"{path.stem}.{n}{path.suffix}", n + 1
        os.replace(path, target)
        moved.append(target)
    return moved


def truncate_metrics(path: Path, step: int) -> int:
    """Before a start writes its first line: the lines of steps past `step` (which will be run again) are moved
    to metrics.jsonl.discarded-N, so the log has each step at most once. Returns the last step the file had.

    A line cut short (a kill or a full disk while it was written) is dropped too, with a warning.
    """
    if not path.exists():
        return 0
    kept, discarded, last = [], [], 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            log.warning("%s: line %d is not JSON (cut short?); dropped: %.80s", path, number, line)
            continue
        at = record.get("step") if isinstance(record, dict) else None
        if isinstance(at, int):
            last = max(last, at)
            (kept if at <= step else discarded).append(line)
    if discarded:
        n = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in path.parent.glob(f"{path.name}.discarded-*")
                     if p.name.rsplit("-", 1)[1].isdigit()), default=0)
        write_atomically(path.with_name(f"{path.name}.discarded-{n}"), "".join(line + "\n" for line in discarded))
        log.warning("%s: %d line(s) of steps after %d (run again now) set aside in %s.discarded-%d", path,
                    len(discarded), step, path.name, n)
    write_atomically(path, "".join(line + "\n" for line in kept))
    return last
