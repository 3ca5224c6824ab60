"""StyleGAN2 through the trainer: its config keys, two gloo ranks holding the same full state, a bitwise
2-rank resume with lazy R1 (every 16), lazy path length (every 4) and ADA at a checkpoint step (every 7)
none of them divides, and the export and sampler on what that run made."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import LAUNCH_2_CPU, REPO, run_env
from distgan.artifacts import load_generator
from distgan.config import ConfigError, load_config

CONFIG = REPO / "configs/stylegan2_32.yaml"
# A tiny StyleGAN2 on the 28x28 shards (32 px inside): 16..2 channels, 8-d z and w.
SG2_TINY = ["model.nz=8", "model.w_dim=8", "model.mapping_layers=2", "model.channel_base=64", "model.channel_max=16",
            "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=64", "log.sample_grid=4",
            "train.log_every=2", "train.sample_every=1000", "train.checkpoint_every=7", "optim.ema_decay=0.9",
            "loss.r1_gamma=1", "loss.r1_every=16", "loss.pl_weight=2", "loss.pl_every=4", "loss.style_mixing=0.9",
            "aug.policy=translation,color", "aug.adaptive=true", "aug.p=0.2", "aug.speed_images=500",
            "aug.interval=2", "aug.target=0.0"]


def test_config_keys_are_validated_by_name(tmp_path):
    cfg = load_config(CONFIG, [f"data.path={tmp_path}"])
    assert (cfg.model.arch, cfg.model.w_dim, cfg.loss.style_mixing, cfg.loss.pl_every) == ("stylegan2", 512, 0.9, 4)
    with pytest.raises(ConfigError, match="'model.w_dimm'"):
        load_config(CONFIG, [f"data.path={tmp_path}", "model.w_dimm=3"])
    with pytest.raises(ConfigError, match="'loss.style_mixing' must be in \\[0, 1\\]"):
        load_config(CONFIG, [f"data.path={tmp_path}", "loss.style_mixing=2"])
    with pytest.raises(ConfigError, match="'loss.pl_every' must be >= 1"):
        load_config(CONFIG, [f"data.path={tmp_path}", "loss.pl_every=0"])
    with pytest.raises(ConfigError, match=r"'data.batch_size' \(6\) must be a multiple of 'model.mbstd_group' \(4\)"):
        load_config(CONFIG, [f"data.path={tmp_path}", "data.batch_size=6"])
    from distgan.models import get_family

    family, model = get_family("stylegan2"), load_config(CONFIG, [f"data.path={tmp_path}"]).model
    for key, value, message in (("mapping_lr", 0.0, "model.mapping_lr"), ("w_dim", 0, "model.w_dim"),
                                ("channel_base", 8, "model.channel_base")):
        setattr(model, key, value)
        with pytest.raises(ValueError, match=message):
            family.check(model, (1, 28, 28), 10)
        model = load_config(CONFIG, [f"data.path={tmp_path}"]).model
    with pytest.raises(ValueError, match="square images of 8-256 px"):
        family.check(model, (3, 300, 300), 0)


def launch(args: list[str], env: dict) -> None:
    proc = subprocess.run(LAUNCH_2_CPU + args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, request) -> dict[str, Path]:
    """A 2-rank run of 20 steps in one go (every rank's full state dumped at each snapshot), and the same run
    stopped at step 10 and resumed on 2 ranks to 20."""
    shards = request.getfixturevalue("module_shards")
    root = tmp_path_factory.mktemp("sg2-runs")
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    common = [f"data.path={shards}", f"run_dir={root}", *SG2_TINY]
    launch([str(REPO / "tests" / "ddp_stylegan2_probe.py"), str(root), str(CONFIG), *common, "name=straight",
            "train.steps=20"], env)
    train = [str(REPO / "distgan" / "train.py"), "--config", str(CONFIG), *common, "name=resumed"]
    launch([*train, "train.steps=10"], env)
    launch([*train, "train.steps=20"], env)
    return {"root": root, "straight": root / "straight", "resumed": root / "resumed"}


@pytest.fixture(scope="module")
def module_shards(tmp_path_factory) -> Path:
    from conftest import make_idx_dataset
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    root = tmp_path_factory.mktemp("sg2-data")
    make_idx_dataset(root / "raw", n_train=400, n_test=40)
    write_shards(read_idx_dataset("fashion-mnist", root / "raw"), root / "shards", samples_per_shard=100,
                 chunk_size=32)
    return root / "shards"


@pytest.mark.slow
def test_two_ranks_hold_the_same_full_state(two_rank_runs):
    root = two_rank_runs["root"]
    snaps = sorted(p.name for p in root.glob("rank0-snap*.safetensors"))
    assert len(snaps) == 3  # steps 7, 14, 20
    for name in snaps:
        a, b = load_file(str(root / name)), load_file(str(root / name.replace("rank0", "rank1")))
        assert a.keys() == b.keys()
        assert {"G.mapping.w_avg", "family.pl_mean", "G.blocks.1.conv1.noise_const"} <= a.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    first, last = load_file(str(root / snaps[0])), load_file(str(root / snaps[-1]))
    assert first["family.pl_mean"] > 0 and not torch.equal(first["G.mapping.w_avg"], last["G.mapping.w_avg"])


@pytest.mark.slow
def test_two_rank_resume_at_an_unaligned_step_is_bitwise(two_rank_runs):
    straight, resumed = two_rank_runs["straight"], two_rank_runs["resumed"]
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir())[-1] == "step-0000020"
    a_dir, b_dir = straight / "checkpoints" / "step-0000020", resumed / "checkpoints" / "step-0000020"
    files = ["model.safetensors", "model_1.safetensors", "ema.safetensors", "family.safetensors",
             "augment.safetensors"]
    for name in files:
        a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    p = load_file(str(a_dir / "augment.safetensors"))
    assert any(v.float().abs().sum() > 0 for v in p.values())  # ADA moved p
    a_opt = torch.load(a_dir / "optimizers.pt", weights_only=True)
    b_opt = torch.load(b_dir / "optimizers.pt", weights_only=True)
    for key in ("g", "d"):
        for index, state in a_opt[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b_opt[key]["state"][index][name]), (key, index, name)
    logs = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(2, 21, 2))


@pytest.mark.slow
def test_a_two_rank_run_exports_and_samples(two_rank_runs, tmp_path):
    from distgan.export import export_onnx
    from distgan.runtime import OnnxGenerator, latents

    run = two_rank_runs["straight"]
    result = export_onnx(run, tmp_path / "g.onnx")
    assert result.max_abs_diff <= 1e-4
    model = OnnxGenerator(result.path)
    assert model.styled and model.info.num_ws == 8 and (model.info.height, model.info.width) == (28, 28)
    drawing = model.sample(3, 4, psi=0.7, mix_seed=5, mix_layer=4)
    generator, _ = load_generator(run)
    z, z2 = latents(np.arange(3, 7), 8), latents(np.arange(5, 9), 8)
    with torch.inference_mode():
        images = generator(torch.from_numpy(z), torch.full((4,), 0.7), torch.from_numpy(z2),
                           torch.full((4,), 4)).numpy()
    want = np.round(np.clip((images + 1) * 127.5, 0, 255)).transpose(0, 2, 3, 1)
    assert np.abs(drawing.images.astype(int) - want).max() <= 1
