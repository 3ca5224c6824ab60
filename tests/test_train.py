"""The trainer, for real: in-process runs on tiny shards, and subprocess runs for kill/resume, signals and DDP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import LAUNCH_2_CPU, REPO, TINY, run_env
from distgan import training as trainer
from distgan.training import graph as step_graph, session, step as gan_step
from distgan.artifacts import load_generator
from distgan.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# Trained on rgb_shards of this size, the others on Fashion-MNIST's.
RGB_CONFIGS = {"celeba64_dcgan.yaml": 64, "small_data.yaml": 64, "resnet32.yaml": 32, "resnet128.yaml": 128,
               "srgan.yaml": 96}
# Attention over 64x64 positions costs seconds per CPU step even at tiny widths: the CPU tests attend at 32.
CPU_OVERRIDES = {"resnet128.yaml": ["model.attention_res=32"],
                 # srgan: step 1 the warm-up (content loss alone), step 2 the GAN phase
                 "srgan.yaml": ["model.blocks=2", "model.d_dense=16", "train.pretrain_steps=1"]}
# Configs of the one-GAN loop; lapgan.yaml trains level by level (training/level_run.py, tests/test_lapgan.py).
LOOP_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name != "lapgan.yaml")


def tiny(data: Path, run_dir: Path, *extra: str, config: str = "configs/fashion_dcgan.yaml"):
    return load_config(REPO / config, [f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, *extra])


def rgb_shards(tmp_path: Path, size: int = 64) -> Path:
    """40 random RGB images of size x size as shards, for the configs of RGB folders."""
    from distgan.data.shards import write_shards
    from distgan.data.folders import read_folder_dataset

    images = tmp_path / "rgb"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(images / f"{i}.png")
    write_shards(read_folder_dataset(images, size, 3, False, 0.0, 0), tmp_path / "rgb-shards")
    return tmp_path / "rgb-shards"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'; did you mean 'train.steps'"):
        load_config(REPO / "configs/fashion_dcgan.yaml", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="'loss.kind'.*did you mean 'hinge'"):
        load_config(REPO / "configs/fashion_dcgan.yaml", ["loss.kind=hing"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(REPO / "configs/fashion_dcgan.yaml", ["train.steps=many"])


@pytest.mark.parametrize("override, message", [
    ("log.sample_grid=0", "'log.sample_grid' must be >= 1"),  # else a ZeroDivisionError at the first sample grid
    ("loss.gp_weight=-10", "'loss.gp_weight' must be >= 0"),
    ("optim.grad_clip=-1", "'optim.grad_clip' must be >= 0"),
    ("data.shuffle_buffer=-5", "'data.shuffle_buffer' must be >= 0"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0"),
])
def test_out_of_range_values_are_refused_before_training(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/fashion_dcgan.yaml", [override])


def test_cuda_graph_and_compile_exclude_each_other():
    with pytest.raises(ConfigError, match="'train.cuda_graph' and 'train.compile'"):
        load_config(REPO / "configs/fashion_dcgan.yaml", ["train.cuda_graph=true", "train.compile=true"])


def test_cuda_graph_auto_is_on_for_cuda_devices_ddp_included():
    def decide(device: str, world: int = 1, sync_bn: bool = False, **train: object) -> bool:
        cfg = load_config(REPO / "configs/fashion_dcgan.yaml", [f"train.{k}={v}" for k, v in train.items()])
        return step_graph.use_step_graph(cfg.train, torch.device(device), world, sync_bn=sync_bn)

    assert load_config(REPO / "configs/fashion_dcgan.yaml").train.cuda_graph is None  # auto by default
    assert decide("cuda") and decide("cuda", cuda_graph="true")
    assert decide("cuda", world=2) and decide("cuda", world=8, cuda_graph="true")  # DDP's all-reduce captured
    assert not decide("cpu") and not decide("cpu", world=2) and not decide("cuda", cuda_graph="false")
    assert not decide("cuda", compile="true")  # auto leaves the step to torch.compile
    assert decide("cuda", sync_bn=True)  # one process: no statistics to share
    assert not decide("cuda", world=2, sync_bn=True)
    with pytest.raises(trainer.TrainingError, match="model.sync_bn's batch statistics across the 2 ranks"):
        decide("cuda", world=2, sync_bn=True, cuda_graph="true")


def test_a_ddp_model_warms_up_as_pytorchs_capture_recipe_asks(tmp_path):
    """11 DDP-enabled eager steps before a DDP step is captured (DDP settles its buckets in the first ones); 3
    for one process. A one-rank gloo group is enough to build a real DDP module."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(2, 2)
        assert step_graph.warmup_steps(model) == step_graph.SINGLE_WARMUP_STEPS == 3
        assert step_graph.warmup_steps(DDP(model)) == step_graph.DDP_WARMUP_STEPS == 11
        assert step_graph.warmup_steps(torch.compile(DDP(model))) == 11
    finally:
        dist.destroy_process_group()
    assert step_graph.capture_stream(False, torch.device("cpu")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without a GPU")
def test_cuda_graph_without_a_gpu_trains_eagerly_and_says_so(shards, tmp_path, caplog):
    data, _ = shards
    assert trainer.train(tiny(data, tmp_path, "train.steps=3", "train.cuda_graph=true")) == "completed"
    assert "train.cuda_graph needs a CUDA device" in caplog.text


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@GPU
def test_cuda_graph_step_trains_on_a_gpu(shards, tmp_path):
    """Captured after 3 eager steps, replayed after: weights and the EMA keep moving, losses stay finite,
    and the noise differs between replays (the CUDA generator advances at each replay)."""
    data, _ = shards
    cfg = tiny(data, tmp_path, "train.steps=12", "train.log_every=1", "train.cuda_graph=true")
    assert trainer.train(cfg) == "completed"
    rows = metrics(tmp_path / "t")
    assert all(np.isfinite(r["loss/d"]) and np.isfinite(r["loss/g"]) for r in rows)
    replayed = [r["loss/g"] for r in rows[4:]]
    assert len(set(replayed)) == len(replayed)  # fresh noise and data each replay
    cfg2 = tiny(data, tmp_path, "train.steps=16", "train.log_every=1", "train.cuda_graph=true")
    assert trainer.train(cfg2) == "completed"  # resumed from step 12: captured again, trains on
    assert metrics(tmp_path / "t")[-1]["step"] == 16


@GPU
def test_graphed_step_replays_with_fresh_inputs_noise_and_step():
    """Each replay sees that call's batch, that call's step and the noise an eager call would have drawn
    (a replay reads the CUDA generator's offset where an eager step would): bitwise the eager sequence."""
    from distgan.training.graph import GraphedStep, batches_to_device

    cuda = torch.device("cuda")
    host = [[(torch.full((2, 4, 4, 1), k, dtype=torch.uint8).pin_memory(), torch.tensor([k, 2 * k]).pin_memory())]
            for k in range(9)]

    def record(history: torch.Tensor):
        def step(batches, at):
            images, labels = batches[0]
            row = torch.cat([torch.randn(3, device=cuda), images.float().mean().view(1), labels.float()])
            at = torch.as_tensor(at, device=cuda).long().view(1)
            history.index_copy_(0, at, row.view(1, -1))
        return step

    histories = []
    for graphed in (False, True):
        torch.manual_seed(0)
        history = torch.zeros(len(host), 6, device=cuda)
        eager = record(history)
        step = GraphedStep(eager, cuda) if graphed else (lambda b, at: eager(batches_to_device(b, cuda), at))
        for k, batches in enumerate(host):
            step(batches, k)
        histories.append(history.cpu())
    assert histories[1][:, 3:].tolist() == [[k, k, 2 * k] for k in range(9)]
    assert torch.equal(histories[0], histories[1])


@GPU
@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_cuda_graph_trains_like_the_eager_step(precision, shards, tmp_path):
    """The trainer's graphed run follows its eager run: from step 4 (captured at step 4) to step 8, G moves
    the same way up to float reassociation, which Adam amplifies in near-zero gradients. Fresh noise in
    the replays instead of the eager run's would make the gap as large as the move."""
    from accelerate.state import AcceleratorState

    data, _ = shards
    g = {}
    for graph in ("false", "true"):
        cfg = tiny(data, tmp_path / graph, "train.steps=8", "train.tf32=false", f"train.mixed_precision={precision}",
                   f"train.cuda_graph={graph}")
        assert trainer.train(cfg) == "completed"
        AcceleratorState._reset_state(reset_partial_state=True)
        for at in (4, 8):
            g[graph, at] = load_file(tmp_path / graph / f"t/checkpoints/step-{at:07d}/model.safetensors")
    norm = lambda a, b: sum(float((a[k].float() - b[k].float()).norm()) ** 2 for k in a) ** 0.5
    move, gap = norm(g["false", 8], g["false", 4]), norm(g["true", 8], g["false", 8])
    assert norm(g["true", 4], g["false", 4]) < 0.05 * move  # the eager warm-up steps
    assert gap < 0.05 * move, (gap, move)


@GPU
@pytest.mark.parametrize("config, extra", [
    *[(c, ()) for c in LOOP_CONFIGS],
    ("fashion_dcgan.yaml", ("loss.kind=wgan-gp", "model.d_batchnorm=false")),
    ("fashion_dcgan.yaml", ("loss.kind=hinge", "model.spectral_norm=true", "optim.grad_clip=1.0")),
    ("fashion_dcgan.yaml", ("loss.kind=lsgan", "loss.d_steps=2", "train.mixed_precision=fp16")),
])
def test_cuda_graph_captures_every_config(config, extra, shards, tmp_path):
    data = rgb_shards(tmp_path, RGB_CONFIGS[config]) if config in RGB_CONFIGS else shards[0]
    cfg = tiny(data, tmp_path, "train.steps=8", "train.log_every=1", "data.batch_size=8", "train.cuda_graph=true",
               *extra, config=f"configs/{config}")
    assert trainer.train(cfg) == "completed"
    rows = metrics(tmp_path / "t")
    assert all(np.isfinite(r["loss/g"]) for r in rows) and rows[-1]["train/bad_steps"] == 0


@GPU
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_ddp_step_with_its_all_reduce_captured_trains_like_ddp_eager(precision, shards, tmp_path):
    """One NCCL rank under torchrun: accelerate wraps G and D in DDP, so its hooks, buckets and all-reduce run
    (and are captured after 11 eager steps) as on 8 GPUs. The graphed run follows the eager one: equal up to
    float reassociation at step 11 (all eager), within 5% of the move at step 22 (11 replays)."""
    data, _ = shards
    g = {}
    for graph in ("false", "true"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               *train_cmd(data, tmp_path / graph, "train.steps=22", "train.checkpoint_every=11", "train.tf32=false",
                          "train.log_every=1", f"train.mixed_precision={precision}",
                          f"train.cuda_graph={graph}")[1:]]
        proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("the step as one CUDA graph" in proc.stderr) == (graph == "true"), proc.stderr[-3000:]
        assert all(np.isfinite(r["loss/g"]) for r in metrics(tmp_path / graph / "t"))
        for at in (11, 22):
            g[graph, at] = load_file(tmp_path / graph / f"t/checkpoints/step-{at:07d}/model.safetensors")
    norm = lambda a, b: sum(float((a[k].float() - b[k].float()).norm()) ** 2 for k in a) ** 0.5
    move, gap = norm(g["false", 22], g["false", 11]), norm(g["true", 22], g["false", 22])
    assert norm(g["true", 11], g["false", 11]) < 0.05 * move
    assert gap < 0.05 * move, (gap, move)


def test_bare_no_is_a_precision_not_a_boolean():
    cfg = load_config(REPO / "configs/celeba64_dcgan.yaml", ["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"


def test_run_leaves_everything_people_look_at(shards, tmp_path):
    data, _ = shards
    cfg = tiny(data, tmp_path, "train.steps=8")
    assert trainer.train(cfg) == "completed"
    run = tmp_path / "t"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    for key in ("loss/d", "loss/g", "d/real", "d/fake", "d/fooled", "perf/images_per_s", "lr/g"):
        assert all(np.isfinite(r[key]) for r in rows), key
    for png in sorted((run / "samples").glob("*.png")):
        assert np.asarray(Image.open(png)).std() > 1, f"{png} is a constant image"
    assert (run / "losses.png").stat().st_size > 1000 and (run / "progress.gif").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    assert (run / "config.yaml").read_text().count("batch_size: 16") == 1
    generator, info = load_generator(run)
    assert info["step"] == 8 and info["image_shape"] == [1, 28, 28]
    assert generator(torch.randn(3, 100)).shape == (3, 1, 28, 28)


@pytest.mark.parametrize("config", LOOP_CONFIGS)
def test_every_config_trains_a_few_steps(config, shards, tmp_path):
    """Each config trains, not just runs: finite losses at every step, none skipped, and every tensor of G, D
    and the EMA moved between the checkpoints of steps 1 and 2 (parameters by the optimisers, BatchNorm
    statistics by the forward passes), so a step that skips an optimiser or a model leaves a tensor equal."""
    data = rgb_shards(tmp_path, RGB_CONFIGS[config]) if config in RGB_CONFIGS else shards[0]
    cfg = tiny(data, tmp_path, "train.steps=2", "data.batch_size=8", "train.log_every=1",
               "train.checkpoint_every=1", *CPU_OVERRIDES.get(config, []), config=f"configs/{config}")
    assert trainer.train(cfg) == "completed"
    rows = metrics(tmp_path / "t")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["loss/d"]) and np.isfinite(r["loss/g"]) and r["train/bad_steps"] == 0, r
    first, last = sorted((tmp_path / "t" / "checkpoints").iterdir())
    assert (first.name, last.name) == ("step-0000001", "step-0000002")
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):  # G, D, the EMA of G
        before, after = load_file(str(first / name)), load_file(str(last / name))
        floats = [key for key, value in before.items() if value.is_floating_point()]
        assert floats and before.keys() == after.keys(), name
        assert all(torch.isfinite(after[key]).all() for key in floats), name
        # Spectral norm's power-iteration vectors that stay put in step 2: a one-output layer's u is the number 1,
        # and a self-attention conv's gate starts at 0 (BigGAN), so step 1 gave it no gradient and step 2
        # iterates on its unchanged (orthogonal: every singular value 1) weights. StyleGAN2's stored noise
        # (`noise_const`, what an exported G adds) is a constant buffer by design: training draws fresh noise.
        unmoved = [key for key in floats if torch.equal(before[key], after[key])
                   and not key.endswith(".noise_const")
                   and not (key.endswith(("._u", "._v"))
                            and (before[key].numel() == 1 or re.search(r"\.(theta|phi|g|o)\.parametrizations", key)))]
        assert not unmoved, f"{config}: {name} tensors unchanged by step 2: {unmoved}"


@pytest.mark.parametrize("config, extra", [
    ("fashion_dcgan.yaml", ()),
    # StyleGAN2 keeps w_avg and the path-length mean in fp32 while its layers run in bf16
    ("stylegan2_32.yaml", ("model.channel_base=256", "model.channel_max=16", "loss.pl_every=1", "loss.r1_every=1")),
])
def test_bf16_autocast_runs_on_cpu(config, extra, shards, tmp_path):
    data, _ = shards
    cfg = tiny(data, tmp_path, "train.steps=3", "train.mixed_precision=bf16", *extra, config=f"configs/{config}")
    assert trainer.train(cfg) == "completed"
    assert all(np.isfinite(r["loss/g"]) for r in metrics(tmp_path / "t"))


def test_launcher_precision_applies_unless_the_run_sets_one(shards, tmp_path, monkeypatch):
    data, _ = shards
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what launch/multi_gpu.yaml makes accelerate set
    assert trainer.train(tiny(data, tmp_path, "train.steps=1")) == "completed"  # null: the launcher's
    assert "mixed_precision: bf16" in (tmp_path / "t" / "config.yaml").read_text()
    assert session.resolve_precision("no") == "no"  # fp32, whatever the launcher says
    assert session.resolve_precision("fp16") == "fp16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert session.resolve_precision(None) == "no"


def test_processes_that_did_not_join_one_group_refuse_to_train(shards, tmp_path, monkeypatch):
    data, _ = shards
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched as 2 processes, but this one is alone (no ACCELERATE_USE_CPU)
    with pytest.raises(trainer.TrainingError, match="ACCELERATE_USE_CPU=1"):
        trainer.train(tiny(data, tmp_path, "train.steps=1"))
    assert not (tmp_path / "t").exists()


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(shards, tmp_path, monkeypatch):
    data, _ = shards
    real_loss, calls = gan_step.generator_loss, {"n": 0}

    def sometimes_inf(kind, logits):
        calls["n"] += 1
        loss = real_loss(kind, logits)
        return loss * float("inf") if calls["n"] in (3, 4) else loss

    monkeypatch.setattr(gan_step, "generator_loss", sometimes_inf)
    assert trainer.train(tiny(data, tmp_path, "train.steps=6")) == "completed"
    assert metrics(tmp_path / "t")[-1]["train/bad_steps"] == 2
    weights = load_file(str(tmp_path / "t" / "generator" / "generator.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    monkeypatch.setattr(gan_step, "generator_loss", lambda kind, logits: real_loss(kind, logits) * float("inf"))
    with pytest.raises(trainer.TrainingError, match="non-finite steps in a row"):
        trainer.train(tiny(data, tmp_path / "b",
                           "train.steps=8", "train.max_bad_steps=3"))


def test_resume_keeps_the_optimiser_state_but_takes_the_learning_rates_of_the_config(shards, tmp_path):
    data, _ = shards
    assert trainer.train(tiny(data, tmp_path, "train.steps=4")) == "completed"
    # E.g. a lower rate after a divergence: deliberate (another setup), so it is said so and recorded.
    assert trainer.train(tiny(data, tmp_path, "train.steps=6", "optim.g_lr=3e-4", "optim.d_lr=3e-5",
                              "train.allow_config_change=true")) == "completed"
    history = [json.loads(line) for line in (tmp_path / "t/config-history/changes.jsonl").read_text().splitlines()]
    assert history == [{**history[0], "step": 4, "forced": True,
                        "changes": {"optim.d_lr": [1e-5, 3e-5], "optim.g_lr": [1e-4, 3e-4],
                                    "train.allow_config_change": [False, True], "train.steps": [4, 6]}}]
    assert "g_lr: 0.0001" in (tmp_path / "t/config-history/config-until-step-0000004.yaml").read_text()
    last = metrics(tmp_path / "t")[-1]
    assert (last["step"], last["lr/g"], last["lr/d"]) == (6, 3e-4, 3e-5)
    saved = torch.load(tmp_path / "t" / "checkpoints" / "step-0000006" / "optimizers.pt", weights_only=True)
    assert {float(s["step"]) for s in saved["g"]["state"].values()} == {6.0}  # Adam's moments went on from step 4
    assert saved["g"]["param_groups"][0]["lr"] == 3e-4


def test_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(shards, tmp_path, caplog):
    data, _ = shards
    caplog.set_level("INFO", logger="distgan")
    run = tmp_path / "t"
    assert trainer.train(tiny(data, tmp_path, "train.steps=12")) == "completed"  # checkpoints 4, 8, 12
    older = run / "checkpoints" / "step-0000004"
    assert trainer.train(tiny(data, tmp_path, "train.steps=6", f"train.resume={older}")) == "completed"
    assert "2 newer checkpoint(s) of this run moved" in caplog.text
    # The abandoned future is kept but out of the way: the next auto resume (a SLURM requeue) continues from 6.
    assert sorted(p.name for p in (run / "checkpoints-set-aside").iterdir()) == ["step-0000008", "step-0000012"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    assert trainer.train(tiny(data, tmp_path, "train.steps=8")) == "completed"
    assert "resumed from " + str(run / "checkpoints" / "step-0000006") in caplog.text
    assert [r["step"] for r in metrics(run)] == [2, 4, 6, 8]


def test_a_resume_sets_aside_the_grids_of_steps_run_again_and_skips_an_unreadable_one(shards, tmp_path, caplog):
    """Found by the SIGKILL digest test: a kill while step 8's grid was written left a cut-short PNG, and the
    resumed run (to step 6) crashed at its very end building progress.gif from it."""
    data, _ = shards
    caplog.set_level("INFO", logger="distgan")
    run = tmp_path / "t"
    assert trainer.train(tiny(data, tmp_path, "train.steps=12")) == "completed"  # grids at 4, 8, 12
    samples = run / "samples"
    (samples / "step-0000016.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # cut short by a kill
    (samples / ".step-0000020.png.tmp").write_bytes(b"\x89PNG")  # what a kill leaves now
    (samples / "step-0000004.png").write_bytes(b"not a png")  # damaged by something else
    older = run / "checkpoints" / "step-0000004"
    assert trainer.train(tiny(data, tmp_path, "train.steps=6", f"train.resume={older}")) == "completed"
    assert "4 sample grid(s) of steps after 4 (run again now) moved to" in caplog.text
    assert sorted(p.name for p in (run / "samples-set-aside").iterdir()) == [
        ".step-0000020.png.tmp", "step-0000008.png", "step-0000012.png", "step-0000016.png"]
    assert sorted(p.name for p in samples.iterdir()) == ["step-0000004.png", "step-0000006.png"]  # 6: the last step's
    assert "step-0000004.png: not a readable PNG" in caplog.text
    assert Image.open(run / "progress.gif").n_frames == 1  # step 6's; step 4's cannot be read
    assert trainer.train(tiny(data, tmp_path, "train.steps=8")) == "completed"  # step 8's grid drawn again
    assert sorted(p.name for p in samples.iterdir()) == ["step-0000004.png", "step-0000006.png", "step-0000008.png"]
    assert Image.open(run / "progress.gif").n_frames == 2
    # set aside again under a name of its own: nothing is lost
    assert trainer.train(tiny(data, tmp_path, "train.steps=6", f"train.resume={older}")) == "completed"
    assert "step-0000008.1.png" in {p.name for p in (run / "samples-set-aside").iterdir()}


def test_resume_after_a_metrics_line_cut_short(shards, tmp_path, caplog):
    data, _ = shards
    assert trainer.train(tiny(data, tmp_path, "train.steps=6")) == "completed"
    with open(tmp_path / "t" / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "loss/d": 1.3')  # killed while writing (or a full disk)
    assert trainer.train(tiny(data, tmp_path, "train.steps=10")) == "completed"
    assert [r["step"] for r in metrics(tmp_path / "t")] == [2, 4, 6, 8, 10]
    assert "metrics.jsonl: line 4 is not JSON" in caplog.text


def test_wandb_offline_run_holds_the_logged_keys(shards, tmp_path):
    data, _ = shards
    # A process of its own, as users run it: W&B's service writes the offline record asynchronously and
    # flushes it at exit (read in the test's own process right after train(), it could still be empty).
    subprocess.run(train_cmd(data, tmp_path, "train.steps=6", "train.sample_every=4", "log.log_with=wandb"),
                   env=run_env(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1"), check=True,
                   capture_output=True, timeout=300)
    run = tmp_path / "t"
    run_id = (run / "wandb_id.txt").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline, list((run / "wandb").iterdir())
    # The offline record log is protobuf: the logged keys appear in it verbatim.
    records = (offline[0] / f"run-{run_id}.wandb").read_bytes()
    for key in ("loss/d", "loss/g", "d/real", "d/fake", "d/fooled", "perf/images_per_s", "train/bad_steps"):
        assert key.encode() in records, key
    assert len(list((offline[0] / "files" / "media" / "images").glob("samples_*.png"))) == 2


def train_cmd(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs/fashion_dcgan.yaml"),
            f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, "data.num_workers=1", *extra]


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        if time.time() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir())[-1]
    out = {}
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(last / name)).items()})
    return out


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_equal(shards, tmp_path):
    data, _ = shards
    env = run_env(OMP_NUM_THREADS="1")
    steps = ["train.steps=12"]
    subprocess.run(train_cmd(data, tmp_path / "straight", *steps), env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(train_cmd(data, tmp_path / "killed", *steps), env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: (tmp_path / "killed/t/checkpoints/step-0000008/state.json").exists(), 240, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/t/COMPLETED").exists()
    subprocess.run(train_cmd(data, tmp_path / "killed", *steps), env=env, check=True, capture_output=True, timeout=300)
    a, b = final_weights(tmp_path / "straight" / "t"), final_weights(tmp_path / "killed" / "t")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in metrics(tmp_path / "killed" / "t")] == list(range(2, 13, 2))


@pytest.mark.slow
def test_sigusr1_checkpoints_at_the_next_step_and_exits_cleanly(shards, tmp_path):
    data, _ = shards
    env = run_env(OMP_NUM_THREADS="1")
    cmd = train_cmd(data, tmp_path, "train.steps=400", "train.checkpoint_every=1000")
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "t" / "metrics.jsonl").exists(), 240, proc)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 0
    saved = [p.name for p in (tmp_path / "t" / "checkpoints").iterdir()]
    assert len(saved) == 1 and not (tmp_path / "t" / "COMPLETED").exists()
    stopped_at = json.loads((tmp_path / "t" / "checkpoints" / saved[0] / "state.json").read_text())["step"]
    assert 2 <= stopped_at < 400
    subprocess.run(cmd[:-2] + ["train.steps=" + str(stopped_at + 4), "train.checkpoint_every=1000"], env=env,
                   check=True, capture_output=True, timeout=300)
    assert (tmp_path / "t" / "COMPLETED").read_text().strip() == str(stopped_at + 4)


@pytest.mark.slow
def test_two_ranks_hold_equal_weights_after_training_on_different_data(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    probe = [str(REPO / "tests" / "ddp_train_probe.py"), str(tmp_path), str(REPO / "configs/fashion_house.yaml"),
             f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "data.num_workers=1", "train.steps=5"]
    proc = subprocess.run(LAUNCH_2_CPU + probe, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["completed", "completed"]
    ids = [set(r["ids"]) for r in ranks]
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == 5 * 16  # 5 steps x batch 16 each
    assert not ids[0] & ids[1]  # each rank trained on its own images
    # Snapshots at steps 4 and 5 (checkpoint_every=4): equal across ranks at both, and step 5 moved the weights.
    snaps = {(r, k): load_file(str(tmp_path / f"rank{r}-snap{k}.safetensors")) for r in (0, 1) for k in (1, 2)}
    for k in (1, 2):
        a, b = snaps[0, k], snaps[1, k]
        assert a.keys() == b.keys() and {key.split(".")[0] for key in a} == {"G", "D"}
        for key in a:
            assert torch.equal(a[key], b[key]), (k, key)
    assert all(not torch.equal(snaps[0, 1][key], snaps[0, 2][key]) for key in snaps[0, 1] if key.endswith("weight"))


@pytest.mark.slow
def test_two_process_ddp_resume_on_two_then_on_one(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(LAUNCH_2_CPU + train_cmd(data, tmp_path, "train.steps=6")[1:], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(tmp_path / "t")
    assert rows[-1]["step"] == 6
    assert "2 rank(s)" in proc.stderr and proc.stderr.count("completed at step 6") == 1  # rank 0 logs alone
    assert "the step runs eagerly" not in proc.stderr  # auto (train.cuda_graph: null) on a CPU: nothing to say
    state = json.loads((tmp_path / "t" / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["world_size"] == 2
    # Resumed on 2 processes (each rank loads the checkpoint onto its own device)...
    proc = subprocess.run(LAUNCH_2_CPU + train_cmd(data, tmp_path, "train.steps=8")[1:], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and (tmp_path / "t" / "COMPLETED").read_text().strip() == "8"
    # ...and continued on one (not bitwise: another world size).
    subprocess.run(train_cmd(data, tmp_path, "train.steps=10"), env=env, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "t" / "COMPLETED").read_text().strip() == "10"


@pytest.mark.slow
def test_resume_on_more_processes_keeps_the_share_of_the_epoch_seen(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    # One process: 62 batches of 16 per epoch; stopped at batch 40 of epoch 0.
    subprocess.run(train_cmd(data, tmp_path, "train.steps=40"), env=env, check=True, capture_output=True, timeout=300)
    # Two processes: 31 batches per rank and epoch, so batch 40 is no position of theirs; 640 images were seen,
    # which is batch 20 of each rank.
    proc = subprocess.run(LAUNCH_2_CPU + train_cmd(data, tmp_path, "train.steps=42")[1:], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "t" / "COMPLETED").read_text().strip() == "42"
    state = json.loads((tmp_path / "t" / "checkpoints" / "step-0000042" / "state.json").read_text())
    assert (state["epoch"], state["batch"], state["world_size"]) == (0, 22, 2)


@pytest.mark.slow
def test_two_process_wandb_run_keeps_one_run_id_when_rank0_is_slow(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    probe = [str(REPO / "tests" / "ddp_slow_main_probe.py"), str(REPO / "configs/fashion_dcgan.yaml"),
             f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "train.steps=2", "log.log_with=wandb"]
    proc = subprocess.run(LAUNCH_2_CPU + probe, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = (tmp_path / "t" / "wandb_id.txt").read_text().strip()
    assert [p.name.rsplit("-", 1)[-1] for p in (tmp_path / "t" / "wandb").glob("offline-run-*")] == [run_id]


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_is_counted_and_stops_every_rank(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")

    def probe(bad: str, run_dir: Path, *extra: str) -> list[str]:
        run_dir.mkdir()
        args = [str(REPO / "tests" / "ddp_bad_rank_probe.py"), str(run_dir), bad, str(REPO / "configs/fashion_dcgan.yaml"),
                f"data.path={data}", f"run_dir={run_dir}", "name=t", *TINY, *extra]
        proc = subprocess.run(LAUNCH_2_CPU + args, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [(run_dir / f"rank{r}.txt").read_text() for r in (0, 1)]

    # Rank 1's gradients are all-reduced: its non-finite steps are skipped on both ranks, and rank 0 logs them.
    assert probe("3,4", tmp_path / "a", "train.steps=6") == ["completed", "completed"]
    assert metrics(tmp_path / "a" / "t")[-1]["train/bad_steps"] == 2
    # Too many in a row on rank 1: every rank stops at the same step with the same error.
    outcomes = probe(",".join(map(str, range(1, 9))), tmp_path / "b", "train.steps=8", "train.max_bad_steps=3")
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith("TrainingError: 4 non-finite steps in a row at step 4")


@pytest.mark.slow
def test_samples_skipped_on_any_rank_are_logged(shards, tmp_path):
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    probe = [str(REPO / "tests" / "ddp_skipped_probe.py"), str(REPO / "configs/fashion_dcgan.yaml"),
             f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "train.steps=2"]
    proc = subprocess.run(LAUNCH_2_CPU + probe, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics(tmp_path / "t")[-1]["data/skipped"] == 5
