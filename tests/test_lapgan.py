"""LAPGAN: the pyramid is exact, the level networks fit together, the whole pyramid exports as one ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FASHION_MNIST_DIR
from distgan.models.lapgan import (LapganSpec, build_level_discriminator, discriminator_input, lapgan_from_spec,
                                   level_real)
from distgan.models.pyramid import down, laplacian_pyramid, level_sizes, reconstruct, up

INFO = {"step": 3, "dataset": "test", "classes": [str(i) for i in range(10)], "distgan_version": "0",
        "config_hash": "h"}


def _real_images() -> torch.Tensor:
    """8 Fashion-MNIST training images in [-1, 1] (random ones where the data set is not installed)."""
    path = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    if path.exists():
        from distgan.data.sources import read_idx
        images = read_idx(path, 3)[:8]
    else:
        images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    return torch.from_numpy(images.astype(np.float32))[:, None] / 127.5 - 1.0


def _spec(conditional: bool = True, size: int = 28, channels: int = 1) -> LapganSpec:
    return LapganSpec(channels=channels, height=size, width=size, num_classes=10 if conditional else 0,
                      conditional=conditional, coarse_nz=16, ngf=8, ndf=8)


def test_level_sizes_halve_to_8px_or_less():
    assert level_sizes(28, 28) == ((28, 28), (14, 14), (7, 7))
    assert level_sizes(64, 64) == ((64, 64), (32, 32), (16, 16), (8, 8))
    assert level_sizes(32, 16) == ((32, 16), (16, 8), (8, 4))
    with pytest.raises(ValueError, match="36x36 image halves to 9x9"):
        level_sizes(36, 36)
    with pytest.raises(ValueError, match="at least two levels"):
        level_sizes(8, 8)


def test_laplacian_pyramid_of_a_real_image_reconstructs_it_exactly():
    images = _real_images()
    bands = laplacian_pyramid(images, 3)
    assert [tuple(b.shape[-2:]) for b in bands] == [(28, 28), (14, 14), (7, 7)]
    assert (reconstruct(bands) - images).abs().max().item() <= 1e-6
    assert bands[0].abs().max() > 0.1  # a real band, not all zeros
    # The operators: area down, up of a constant image is the constant (no border darkening).
    flat = torch.full((1, 3, 8, 8), 0.25)
    assert torch.equal(down(flat), torch.full((1, 3, 4, 4), 0.25))
    assert torch.allclose(up(flat), torch.full((1, 3, 16, 16), 0.25))


def test_level_real_is_the_band_and_its_condition():
    images = _real_images()
    bands = laplacian_pyramid(images, 3)
    for level in range(3):
        target, condition = level_real(images, level, 3)
        assert torch.equal(target, bands[level])
        if level < 2:  # D sees the level's image: h_k + l_k == I_k
            expected = images if level == 0 else down(images)
            assert torch.allclose(discriminator_input(target, condition), expected, atol=1e-6)
        else:
            assert condition is None


def test_spec_json_round_trip_and_bad_values_named():
    spec = _spec()
    assert spec.total_nz == 16 + 14 * 14 + 28 * 28
    assert LapganSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["nz"] == spec.total_nz
    with pytest.raises(ValueError, match="'ngf' must be an int >= 1"):
        LapganSpec.from_dict({**spec.to_dict(), "ngf": 0})
    with pytest.raises(ValueError, match="'nz' is 5"):
        LapganSpec.from_dict({**spec.to_dict(), "nz": 5})
    with pytest.raises(ValueError, match="missing key"):
        LapganSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "ndf"})


@pytest.mark.parametrize("conditional", [True, False])
def test_every_level_discriminator_scores_its_generator(conditional):
    spec = _spec(conditional, size=32, channels=3)
    generator = lapgan_from_spec(spec)
    labels = torch.arange(4) if conditional else None
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    z = torch.randn(4, spec.total_nz)
    slices = spec.latent_slices()
    for level in range(spec.levels):
        target, condition = level_real(real, level, spec.levels)
        fake = generator.generators[level](z[:, slices[level]], condition, labels)
        assert fake.shape == target.shape
        logits = build_level_discriminator(spec, level)(discriminator_input(fake, condition), condition, labels)
        assert logits.shape == (4,) and logits.dtype == torch.float32


def _chain_by_hand(generator, z: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The torch levels chained here, coarse to fine, independently of LaplacianGenerator.stages: every stage's
    image, the last the output."""
    spec, slices = generator.spec, generator.spec.latent_slices()
    images = [generator.generators[2](z[:, slices[2]], None, labels)]
    for level in (1, 0):
        coarse = up(images[-1])
        images.append(torch.clamp(coarse + generator.generators[level](z[:, slices[level]], coarse, labels), -1, 1))
    assert images[-1].shape[1:] == (spec.channels, spec.height, spec.width)
    return images


def test_one_onnx_graph_equals_the_chained_torch_levels(tmp_path):
    from distgan.artifacts import save_generator
    from distgan.export.onnx import export_onnx
    from distgan.runtime import OnnxGenerator, latents

    torch.manual_seed(0)
    generator = lapgan_from_spec(_spec())
    with torch.no_grad():  # running BatchNorm statistics that are not the init's
        generator.train()(torch.randn(32, generator.spec.total_nz), torch.randint(0, 10, (32,)))
    generator.eval()
    save_generator(generator, tmp_path / "generator", INFO)
    result = export_onnx(tmp_path)  # through the lapgan family, like any generator
    assert result.max_abs_diff <= 1e-4
    model = OnnxGenerator(result.path)  # the torch-free runtime, unchanged: nz is the concatenated latent
    assert model.info.nz == generator.spec.total_nz and model.info.family == "lapgan"
    assert result.metadata["distgan.lapgan_levels"] == "[[28, 28], [14, 14], [7, 7]]"
    assert model.info.stages == ("stage_0", "stage_1", "stage_2")
    z, labels = latents(np.arange(5, dtype=np.uint64), model.info.nz), np.arange(5, dtype=np.int64)
    import onnxruntime as ort
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["images", "stage_0", "stage_1", "stage_2"]  # images first
    images, *stages = session.run(None, {"z": z, "labels": labels})
    with torch.no_grad():
        want = [t.numpy() for t in _chain_by_hand(generator, torch.from_numpy(z), torch.from_numpy(labels))]
    assert np.abs(images - want[-1]).max() <= 1e-5
    assert [s.shape[2:] for s in stages] == [(7, 7), (14, 14), (28, 28)]  # coarse to fine
    for got, expected in zip(stages, want):
        assert np.abs(got - expected).max() <= 1e-5
    assert want[-1].std() > 1e-4  # images that vary, not a constant (small at init: N(0, 0.02) weights)
    assert np.array_equal(model.run(z, labels), images)  # the runtime reads `images` alone, as before


# --- training the levels ---------------------------------------------------------------------------------


def test_train_levels_parsed_and_bad_values_named():
    from distgan.training.levels import parse_levels
    assert parse_levels("all", 3) == (0, 1, 2)
    assert parse_levels([2, 0], 3) == (0, 2)
    for bad, message in (([3], "level 3 is not a level"), ([], "non-empty list"), ("some", "'all' or"),
                         ([1, 1], "twice"), ([True], "level True")):
        with pytest.raises(ValueError, match=f"train.levels.*{message}|{message}"):
            parse_levels(bad, 3)


def test_ranks_spread_over_levels():
    from distgan.training.levels import assign_ranks, owned_levels
    assert assign_ranks((0, 1, 2), 2) == {0: (0,), 1: (1,), 2: (0,)}  # fewer ranks: a rank owns several levels
    assert assign_ranks((0, 1), 2) == {0: (0,), 1: (1,)}
    assert assign_ranks((0, 1, 2), 5) == {0: (0, 1), 1: (2, 3), 2: (4,)}  # DDP inside a level; finest first
    assert assign_ranks((2,), 3) == {2: (0, 1, 2)}  # one level (an array job's task): all ranks on it
    assert owned_levels(assign_ranks((0, 1, 2), 2), 0) == (0, 2)


def _level_cfg(data: Path, run_dir: Path, steps: int):
    from distgan.config import Config
    cfg = Config(name="lap", run_dir=str(run_dir))
    cfg.data.path, cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer = str(data), 16, 0, 64
    cfg.model.d_dropout = 0.2  # dropout masks must resume too
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_every = steps, 2, 100
    return cfg


def _level_weights(run_dir: Path, level: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    from distgan.training.level_run import level_checkpoints
    newest = level_checkpoints(run_dir / "lap", level)[-1]
    return {f"{name}.{key}": value for name in ("generator", "discriminator", "ema")
            for key, value in load_file(str(newest / f"{name}.safetensors")).items()}


def test_per_level_resume_is_bitwise(tmp_path, shards):
    from distgan.training.level_run import train_levels
    data, _ = shards
    spec = LapganSpec(channels=1, height=28, width=28, num_classes=10, conditional=True, coarse_nz=16, ngf=8, ndf=8,
                      d_dropout=0.2)
    info = {"dataset": "test", "classes": INFO["classes"], "distgan_version": "0", "config_hash": "h"}
    def steps(result):
        trainers, status = result
        assert status == "completed"
        return {t.level: t.step for t in trainers}
    assert steps(train_levels(_level_cfg(data, tmp_path / "once", 4), spec, [1, 2], info)) == {1: 4, 2: 4}
    assert steps(train_levels(_level_cfg(data, tmp_path / "split", 2), spec, [1, 2], info)) == {1: 2, 2: 2}
    assert steps(train_levels(_level_cfg(data, tmp_path / "split", 4), spec, [1, 2], info)) == {1: 4, 2: 4}
    for level in (1, 2):
        once, split = _level_weights(tmp_path / "once", level), _level_weights(tmp_path / "split", level)
        assert once.keys() == split.keys()
        assert all(torch.equal(once[k], split[k]) for k in once), f"level {level} resumed differently"
    fresh, once = build_level_generator_weights(spec, 1), _level_weights(tmp_path / "once", 1)
    assert any(not torch.equal(fresh[k], once[f"generator.{k}"]) for k in fresh)  # it trained
    assert any(not torch.equal(once[f"ema.{k}"], once[f"generator.{k}"]) for k in fresh)  # an average, not a copy
    assert not (tmp_path / "once" / "lap" / "levels" / "level-0").exists()  # a level not asked for


def build_level_generator_weights(spec: LapganSpec, level: int) -> dict[str, torch.Tensor]:
    from distgan.models.lapgan import build_level_generator
    return build_level_generator(spec, level).state_dict()


def _two_ranks(data: Path, run_dir: Path, levels: str) -> list[dict]:
    """tests/lapgan_levels_probe.py on 2 gloo ranks with `train.levels` = levels; each rank's report."""
    import json
    import subprocess
    from conftest import LAUNCH_2_CPU, REPO, run_env
    result = subprocess.run([*LAUNCH_2_CPU, str(REPO / "tests" / "lapgan_levels_probe.py"), str(data), str(run_dir),
                             levels], env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_ranks_train_two_different_levels_at_once(tmp_path, shards):
    """`train.levels: [0, 1]` on 2 real gloo ranks: rank 0 trains level 0, rank 1 level 1, over the same time."""
    ranks = _two_ranks(shards[0], tmp_path, "[0, 1]")
    assert [r["levels"] for r in ranks] == [{"0": 6}, {"1": 6}]
    assert max(r["start"] for r in ranks) < min(r["end"] for r in ranks)  # overlapping, not one after the other
    for level in (0, 1):
        assert _level_weights(tmp_path, level)  # each level's own checkpoint
    assert not (tmp_path / "lap" / "levels" / "level-2").exists()


@pytest.mark.slow
def test_two_ranks_share_one_level_with_ddp(tmp_path, shards):
    """`train.levels: [1]` on 2 ranks: DDP inside the level (its group is both ranks); each rank's batch differs,
    the weights stay equal, and the level's first rank writes its checkpoint."""
    ranks = _two_ranks(shards[0], tmp_path, "[1]")
    assert [r["levels"] for r in ranks] == [{"1": 6}, {"1": 6}]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank its own share of the data
    assert ranks[0]["weights"] == ranks[1]["weights"]  # one model: gradients averaged over the level's group
    assert _level_weights(tmp_path, 1)


# --- the command line: configs/lapgan.yaml -> distgan-train -> distgan-export -> distgan-sample ------------

LAPGAN_TINY = ["model.nz=16", "model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0",
               "data.shuffle_buffer=64", "train.log_every=2", "train.checkpoint_every=2"]


@pytest.mark.slow
def test_lapgan_config_trains_one_level_per_job_then_exports_and_samples(tmp_path, shards, capsys):
    """An array job's view: each `train.levels: [k]` launch trains its level into the one run directory; the
    export chains the levels' newest checkpoints; the torch-free sampler draws from it unchanged."""
    from conftest import REPO
    from distgan.export.cli import main as export_main
    from distgan.sample import main as sample_main
    from distgan.train import main as train_main
    data, _ = shards
    common = ["--config", str(REPO / "configs" / "lapgan.yaml"), f"data.path={data}", f"run_dir={tmp_path}",
              "name=lap", "train.steps=2", *LAPGAN_TINY]
    assert train_main([*common, "train.levels=[2]"]) == 0
    with pytest.raises(SystemExit) as exited:  # levels 0 and 1 are missing: named
        export_main(["--onnx", str(tmp_path / "lap")])
    assert exited.value.code == 2
    assert "level 0 has no checkpoint yet" in capsys.readouterr().err
    assert train_main([*common, "train.levels=[0, 1]"]) == 0
    assert export_main(["--onnx", str(tmp_path / "lap")]) == 0
    model = tmp_path / "lap" / "generator.onnx"
    assert "model: lapgan, z [batch, 996] -> float32 NCHW 1x28x28" in capsys.readouterr().out  # 16 + 14*14 + 28*28
    assert sample_main(["--onnx", str(model), "--n", "4", "--class", "3", "--grid", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


def test_a_level_checkpoint_without_its_ema_is_named_by_resume_and_export(tmp_path, shards, capsys):
    """The pyramid exports each level's EMA generator: a checkpoint without one (written before level EMAs) is
    refused in one line naming the file, by a resume and by the export."""
    from conftest import REPO
    from distgan.export.cli import main as export_main
    from distgan.train import main as train_main
    data, _ = shards
    common = ["--config", str(REPO / "configs" / "lapgan.yaml"), f"data.path={data}", f"run_dir={tmp_path}",
              "name=lap", *LAPGAN_TINY]
    assert train_main([*common, "train.steps=2"]) == 0
    capsys.readouterr()
    ema = tmp_path / "lap" / "levels" / "level-1" / "step-0000002" / "ema.safetensors"
    ema.unlink()
    assert train_main([*common, "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert str(ema) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exited:
        export_main(["--onnx", str(tmp_path / "lap")])
    assert exited.value.code == 2 and str(ema) in capsys.readouterr().err


@pytest.mark.parametrize("override, key", [
    ("train.levels=[3]", "train.levels"), ("train.levels=none", "train.levels"), ("model.ngf=0", "model.ngf"),
    ("aug.policy=color", "aug.policy"), ("loss.kind=wgan-gp", "loss.kind"), ("loss.r1_gamma=1.0", "loss.r1_gamma"),
])
def test_bad_lapgan_config_values_refused_naming_the_key(tmp_path, shards, capsys, override, key):
    from conftest import REPO
    from distgan.train import main as train_main
    data, _ = shards
    code = train_main(["--config", str(REPO / "configs" / "lapgan.yaml"), f"data.path={data}", f"run_dir={tmp_path}",
                       *LAPGAN_TINY, override])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_lapgan_levels_log_to_wandb_offline_with_media(tmp_path, shards):
    """log.log_with=wandb: one offline W&B run per level, with its losses and a sample grid per checkpoint;
    the same in levels/level-K/metrics.jsonl and samples/."""
    import json
    import subprocess
    import sys
    from conftest import REPO, run_env
    data, _ = shards
    cmd = [sys.executable, str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs" / "lapgan.yaml"),
           f"data.path={data}", f"run_dir={tmp_path}", "name=lap", "train.steps=4", "train.levels=[1, 2]",
           "log.log_with=wandb", *LAPGAN_TINY]
    subprocess.run(cmd, env=run_env(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1"), check=True,
                   capture_output=True, timeout=300)
    for level in (1, 2):
        directory = tmp_path / "lap" / "levels" / f"level-{level}"
        rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss/d"]) for r in rows)
        assert sorted(p.name for p in (directory / "samples").iterdir()) == ["step-0000002.png", "step-0000004.png"]
        offline = list((directory / "wandb").glob(f"offline-run-*-lap-level{level}"))
        assert offline, list((directory / "wandb").iterdir())
        records = (offline[0] / f"run-lap-level{level}.wandb").read_bytes()
        assert b"loss/d" in records and b"loss/g" in records
        assert len(list((offline[0] / "files" / "media" / "images").glob("samples_*.png"))) == 2
