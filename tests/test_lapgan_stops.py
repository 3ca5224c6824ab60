"""LAPGAN's level trainer stops as the main trainer does (README, "Exit status"): real processes, real signals.
A SIGTERM to a one-process run, or a STOP file under a 2-rank launch whose ranks own different levels, makes
every level checkpoint at the step it reached; the run is STOPPED, exits 0, and resumes bitwise to the end of an
uninterrupted run. Also: `train.mixed_precision` is honoured (bf16 autocast) or refused naming the key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import LAUNCH_2_CPU, REPO, run_env

LEVEL_TINY = ["model.nz=16", "model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0",
              "data.shuffle_buffer=64", "model.d_dropout=0.2"]


def train_cmd(data: Path, run_dir: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    return [*(launcher or [sys.executable]), str(REPO / "distgan" / "train.py"), "--config",
            str(REPO / "configs" / "lapgan.yaml"), f"data.path={data}", f"run_dir={run_dir}", "name=lap",
            *LEVEL_TINY, *extra]


def long_run(data: Path, run_dir: Path, levels: str, launcher: list[str] | None = None) -> subprocess.Popen:
    """A run that would take very long, sharing stop requests every round, logging every step, never
    checkpointing on its own cadence; started in a session of its own."""
    cmd = train_cmd(data, run_dir, f"train.levels={levels}", "train.steps=1000000", "train.sync_every=1",
                    "train.log_every=1", "train.checkpoint_every=1000000", launcher=launcher)
    return subprocess.Popen(cmd, env=run_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1"), stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_until_training(proc: subprocess.Popen, run: Path, levels: tuple[int, ...], timeout: float = 240) -> None:
    """Until every level in `levels` has logged a step (its rank is in the loop, taking stop signals)."""
    end = time.monotonic() + timeout
    logs = [run / "levels" / f"level-{k}" / "metrics.jsonl" for k in levels]
    while not all(p.is_file() and p.stat().st_size for p in logs):
        if proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{logs} not written within {timeout:.0f}s")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # a hang: the test fails, and leaves nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def stopped_checkpoints(run: Path, levels: tuple[int, ...]) -> int:
    """Each level's one checkpoint, written at the stop, all at the same step (the ranks stop at one round)."""
    steps = set()
    for level in levels:
        found = sorted(p.name for p in (run / "levels" / f"level-{level}").glob("step-*"))
        assert len(found) == 1, found
        state = json.loads((run / "levels" / f"level-{level}" / found[0] / "state.json").read_text())
        assert found[0] == f"step-{state['step']:07d}" and state["step"] > 0
        steps.add(state["step"])
    assert len(steps) == 1, steps
    return steps.pop()


def newest(run: Path, level: int) -> tuple[dict[str, torch.Tensor], dict]:
    """A level's newest checkpoint: every tensor (G, D, EMA, both Adams) and its state.json."""
    directory = max((run / "levels" / f"level-{level}").glob("step-*"))
    tensors = {f"{name}.{k}": v for name in ("generator", "discriminator", "ema")
               for k, v in load_file(str(directory / f"{name}.safetensors")).items()}
    optim = torch.load(directory / "optim.pt", weights_only=True)
    for side in ("g", "d"):
        for index, values in optim[side]["state"].items():
            tensors.update({f"adam.{side}.{index}.{k}": v for k, v in values.items()})
    return tensors, json.loads((directory / "state.json").read_text())


def assert_same_levels(a: Path, b: Path, levels: tuple[int, ...]) -> None:
    for level in levels:
        (ta, sa), (tb, sb) = newest(a, level), newest(b, level)
        assert sa == sb
        assert ta.keys() == tb.keys()
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"level {level}: {different[:5]} differ"


def marker(run: Path, level: int, name: str) -> str | None:
    path = run / "levels" / f"level-{level}" / name
    return path.read_text() if path.exists() else None


def run_to(data: Path, run_dir: Path, levels: str, steps: int, launcher: list[str] | None = None) -> str:
    result = subprocess.run(train_cmd(data, run_dir, f"train.levels={levels}", f"train.steps={steps}",
                                      "train.checkpoint_every=1000000", launcher=launcher),
                            env=run_env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.mark.slow
def test_sigterm_checkpoints_every_level_and_resumes_bitwise(tmp_path, shards):
    data, _ = shards
    run = tmp_path / "stopped" / "lap"
    proc = long_run(data, tmp_path / "stopped", "[1, 2]")
    wait_until_training(proc, run, (1, 2))
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err[-3000:]  # the main trainer's status for "stopped with a checkpoint"
    stopped = stopped_checkpoints(run, (1, 2))
    assert all(marker(run, k, "STOPPED") == f"{stopped}\n" for k in (1, 2))
    assert not (run / "STOPPED").exists()  # a launch of some levels: the run's outcome is not its own
    assert "received SIGTERM" in err and f"stopped: level 1 at step {stopped}, level 2 at step {stopped}" in err
    end = stopped + 3
    run_to(data, tmp_path / "stopped", "[1, 2]", end)  # the resume, to the end
    assert all(marker(run, k, "COMPLETED") == f"{end}\n" and marker(run, k, "STOPPED") is None for k in (1, 2))
    run_to(data, tmp_path / "once", "[1, 2]", end)  # uninterrupted
    assert_same_levels(run, tmp_path / "once" / "lap", (1, 2))


@pytest.mark.slow
def test_stop_file_stops_two_ranks_owning_different_levels(tmp_path, shards):
    """`train.levels: all` on 2 gloo ranks: rank 0 owns levels 0 and 2, rank 1 level 1. The STOP file, which only
    rank 0 reads, stops both (no rank left waiting); every level checkpoints; a 2-rank resume ends bitwise where
    an uninterrupted run (one process: a level trained alone is the same on any rank) ends."""
    data, _ = shards
    run = tmp_path / "stopped" / "lap"
    proc = long_run(data, tmp_path / "stopped", "all", launcher=LAUNCH_2_CPU)
    wait_until_training(proc, run, (0, 1, 2))
    (run / "STOP").touch()
    code, err = finish(proc)
    assert code == 0, err[-3000:]
    stopped = stopped_checkpoints(run, (0, 1, 2))
    assert (run / "STOPPED").read_text() == f"{stopped}\n"  # a launch of every level: the run's outcome
    assert all(marker(run, k, "STOPPED") == f"{stopped}\n" for k in (0, 1, 2))  # the level-1 one from rank 1
    (run / "STOP").unlink()  # as slurm/common.sh does before a requeued start
    end = stopped + 2
    run_to(data, tmp_path / "stopped", "all", end, launcher=LAUNCH_2_CPU)
    assert (run / "COMPLETED").read_text() == f"{end}\n"
    run_to(data, tmp_path / "once", "all", end)
    assert_same_levels(run, tmp_path / "once" / "lap", (0, 1, 2))


@pytest.mark.slow
def test_a_levels_stop_file_stops_its_launch_only(tmp_path, shards):
    """Two launches share one run directory, as the tasks of slurm/lapgan_levels.sbatch do: levels/level-1/STOP
    (what a preempted task's shell touches) stops the launch of level 1 and leaves the launch of level 2 running."""
    data, _ = shards
    run = tmp_path / "lap"
    one, two = (long_run(data, tmp_path, levels) for levels in ("[1]", "[2]"))
    wait_until_training(one, run, (1,))
    wait_until_training(two, run, (2,))
    (run / "levels" / "level-1" / "STOP").touch()
    code, err = finish(one)
    assert code == 0, err[-3000:]
    assert marker(run, 1, "STOPPED") is not None and two.poll() is None  # level 2 trains on
    assert marker(run, 2, "STOPPED") is None and not (run / "STOPPED").exists()
    two.send_signal(signal.SIGTERM)
    code, err = finish(two)
    assert code == 0, err[-3000:]
    assert marker(run, 2, "STOPPED") is not None


# --- train.mixed_precision ---------------------------------------------------------------------------------


def _trainer(data: Path, run_dir: Path, precision: str):
    from distgan.config import Config
    from distgan.models.lapgan import LapganSpec
    from distgan.training.level_run import LevelPlace, LevelTrainer
    cfg = Config(name="lap", run_dir=str(run_dir))
    cfg.data.path, cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer = str(data), 16, 0, 64
    cfg.train.mixed_precision = precision
    spec = LapganSpec(channels=1, height=28, width=28, num_classes=10, conditional=True, coarse_nz=16, ngf=8, ndf=8)
    return LevelTrainer(cfg, spec, LevelPlace(1, (0,), 0), torch.device("cpu"))


def test_bf16_runs_the_level_step_under_autocast(tmp_path, shards):
    """bf16: G's and D's convolutions compute in bfloat16 (on the CPU too); weights, Adam and EMA stay fp32."""
    data, _ = shards
    seen, weights = {}, {}
    for precision in ("no", "bf16"):
        trainer = _trainer(data, tmp_path, precision)
        dtypes = seen.setdefault(precision, set())
        for module in (trainer.g_module.net[0], trainer.d_module.net[0]):
            module.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
        losses = [trainer.train_step() for _ in range(2)]
        assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
        assert {p.dtype for p in [*trainer.g_module.parameters(), *trainer.ema.module.parameters()]} == {torch.float32}
        weights[precision] = torch.cat([p.detach().flatten() for p in trainer.g_module.parameters()])
    assert seen == {"no": {torch.float32}, "bf16": {torch.bfloat16}}
    assert not torch.equal(weights["no"], weights["bf16"])


@pytest.mark.parametrize("override, launcher", [("train.mixed_precision=fp16", "no"),
                                                ("train.mixed_precision=null", "fp16")])
def test_fp16_refused_naming_the_key(tmp_path, shards, capsys, monkeypatch, override, launcher):
    """fp16 (set, or the launcher's where the config says null) is refused in one line naming the key."""
    from distgan.train import main as train_main
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    data, _ = shards
    code = train_main(["--config", str(REPO / "configs" / "lapgan.yaml"), f"data.path={data}", f"run_dir={tmp_path}",
                       *LEVEL_TINY, override])
    err = capsys.readouterr().err
    assert code == 2 and "train.mixed_precision" in err and "'fp16'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lap").exists()  # refused before anything was written
