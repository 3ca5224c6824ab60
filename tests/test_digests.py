"""The trainer's arithmetic is pinned: a fixed short run gives bitwise the weights recorded in digests.json.

Refactors of the training core must keep these digests (same seed and config, same weights, bit for bit).
CPU kernels differ between torch versions and instruction sets, so the digests are recorded per
(torch version, CPU capability); a machine without a record skips with the reason. To record them on a new
machine (only when the trainer's arithmetic is meant to stay the same): DISTGAN_RECORD_DIGESTS=1 pytest -k digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import LAUNCH_2_CPU, REPO, TINY, run_env

DIGESTS = Path(__file__).with_name("digests.json")
MACHINE = f"torch {torch.__version__.split('+')[0]}, cpu {torch.backends.cpu.get_cpu_capability()}"

# name -> (config, overrides): every loss, both D normalisations, conditional, MLP, d_steps, clipping.
CASES = {
    "house_bce": ("configs/fashion_house.yaml", []),
    "cdcgan_bce": ("configs/fashion_cdcgan.yaml", []),
    "dcgan_bn_hinge_2d_clip": ("configs/fashion_dcgan.yaml", ["model.d_batchnorm=true", "loss.kind=hinge",
                                                              "loss.d_steps=2", "optim.grad_clip=1.0"]),
    "dcgan_sn_lsgan": ("configs/fashion_dcgan.yaml", ["model.spectral_norm=true", "model.d_batchnorm=false",
                                                      "loss.kind=lsgan", "loss.real_label=0.9"]),
    "mlp_wgangp": ("configs/mnist_gan.yaml", ["model.mlp_hidden=16", "loss.kind=wgan-gp", "model.d_dropout=0.0"]),
}
STEPS = ["train.steps=6", "train.checkpoint_every=4", "train.log_every=3"]


def weights_digest(run: Path) -> str:
    """sha256 over G, D and the EMA of the last checkpoint: names, dtypes, shapes and bytes."""
    last = sorted((run / "checkpoints").iterdir())[-1]
    digest = hashlib.sha256()
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        tensors = load_file(str(last / name))
        for key in sorted(tensors):
            t = tensors[key].contiguous().reshape(-1)
            digest.update(f"{name}:{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check(case: str, digest: str) -> None:
    recorded = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    if os.environ.get("DISTGAN_RECORD_DIGESTS") == "1":
        recorded.setdefault(MACHINE, {})[case] = digest
        DIGESTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        return
    if case not in recorded.get(MACHINE, {}):
        pytest.skip(f"no digest recorded for {case!r} on {MACHINE} (recorded: {sorted(recorded)})")
    assert digest == recorded[MACHINE][case], f"{case}: the trainer no longer gives the recorded weights"


def train_args(config: str, data: Path, run_dir: Path, extra: list[str]) -> list[str]:
    return [str(REPO / "distgan" / "train.py"), "--config", str(REPO / config), f"data.path={data}",
            f"run_dir={run_dir}", "name=t", *TINY, "data.num_workers=1", *STEPS, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_process_run_keeps_its_digest(case, shards, tmp_path):
    data, _ = shards
    config, extra = CASES[case]
    subprocess.run([sys.executable, *train_args(config, data, tmp_path, extra)], env=run_env(OMP_NUM_THREADS="1"),
                   check=True, capture_output=True, timeout=300)
    check(case, weights_digest(tmp_path / "t"))


@pytest.mark.slow
def test_two_process_run_keeps_its_digest(shards, tmp_path):
    data, _ = shards
    config, extra = CASES["house_bce"]
    proc = subprocess.run(LAUNCH_2_CPU + train_args(config, data, tmp_path, extra),
                          env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check("house_bce_2ranks", weights_digest(tmp_path / "t"))
