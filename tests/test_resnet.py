"""Every family at every resolution it builds, the ResNet family's options and refusals, its export, and training
with it (ADA + R1, exact resume, int8 export, sampling)."""

from __future__ import annotations

import itertools
import json
import subprocess

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from conftest import LAUNCH_2_CPU, REPO, TINY, run_env
from distgan import training
from distgan.artifacts import load_generator, save_generator
from distgan.config import ConfigError, load_config
from distgan.export.onnx import export_onnx
from distgan.models import build_discriminator, build_generator, generator_from_spec, get_family
from distgan.models.resnet import ResNetConfig, attention_resolutions
from distgan.runtime import OnnxGenerator

# Every family x the resolutions it builds (the MLP at two of its "any" sizes).
FAMILY_SIZES = {"mlp": (28, 32), "dcgan": (28, 32, 64, 128, 256), "resnet": (28, 32, 64, 128, 256)}
CLASSES = 3


def tiny_model(arch: str, **extra):
    config = get_family(arch).config
    widths = {"channel_mult": None} if arch == "resnet" else {}
    return config(arch=arch, nz=12, ngf=2, ndf=2, mlp_hidden=8, **widths, **extra)


@pytest.mark.parametrize("arch,size,conditional", [(a, s, c) for a, sizes in FAMILY_SIZES.items()
                                                   for s, c in itertools.product(sizes, (False, True))])
def test_every_family_resolution_and_conditioning_builds(arch, size, conditional):
    extra = {"shared_dim": 4} if arch == "resnet" else {}
    cfg = tiny_model(arch, conditional=conditional, **extra)
    classes = CLASSES if conditional else 0
    G, D = build_generator(cfg, 3, size, size, classes), build_discriminator(cfg, 3, size, size, classes)
    z = torch.randn(2, 12)
    labels = torch.tensor([0, 2]) if conditional else None
    images = G(z, labels)
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    scores = D(images, labels)
    assert scores.shape == (2,) and scores.dtype == torch.float32


def test_a_resolution_a_family_cannot_build_is_refused_naming_the_ones_it_can():
    for arch in ("dcgan", "resnet"):
        with pytest.raises(ValueError, match=r"builds square images of 28, 32, 64, 128, 256 px; the data is 48x48"):
            build_generator(tiny_model(arch), 3, 48, 48, 0)
        with pytest.raises(ValueError, match=r"the data is 32x64"):
            build_discriminator(tiny_model(arch), 3, 32, 64, 0)


def test_an_attention_resolution_the_network_lacks_is_refused_naming_the_valid_ones():
    assert attention_resolutions(128) == (8, 16, 32, 64) and attention_resolutions(28) == (14,)
    with pytest.raises(ValueError, match=r"model.attention_res 128 .* valid: 0 \(off\), 8, 16, 32, 64"):
        build_generator(ResNetConfig(arch="resnet", attention_res=128), 3, 128, 128, 0)
    with pytest.raises(ValueError, match=r"model.attention_res 16 .* valid: 0 \(off\), 14"):
        build_generator(ResNetConfig(arch="resnet", attention_res=16), 1, 28, 28, 0)
    with pytest.raises(ValueError, match=r"model.channel_mult needs 4 positive widths at 32 px"):
        build_generator(ResNetConfig(arch="resnet", channel_mult=[4, 4]), 3, 32, 32, 0)
    with pytest.raises(ValueError, match=r"model.nz must be >= 4 with model.hier_z"):
        build_generator(ResNetConfig(arch="resnet", nz=3, hier_z=True), 3, 32, 32, 0)
    with pytest.raises(ConfigError, match=r"unknown config key 'model.attention_res'"):  # a resnet key, on dcgan
        load_config(None, ["data.path=x", "model.arch=dcgan", "model.attention_res=16"])


def test_resnet_config_takes_the_familys_defaults_and_the_users_values():
    cfg = load_config(REPO / "configs/resnet32.yaml", ["data.path=x", "optim.d_lr=1e-3"])
    assert cfg.loss.kind == "hinge" and cfg.optim.g_lr == 1e-4 and cfg.optim.d_lr == 1e-3
    assert list(cfg.optim.g_betas) == [0.0, 0.999] and cfg.model.spectral_norm and cfg.model.attention_res == 16
    assert load_config(None, ["data.path=x"]).loss.kind == "bce"  # dcgan28's defaults are untouched


def test_hierarchical_z_reaches_every_block_and_the_spec_round_trips():
    cfg = ResNetConfig(arch="resnet", nz=20, ngf=2, ndf=2, hier_z=True, conditional=True, shared_dim=4,
                       attention_res=16)
    G = build_generator(cfg, 3, 32, 32, CLASSES).eval()
    z, labels = torch.randn(1, 20), torch.tensor([1])
    with torch.no_grad():
        base = G(z, labels)
        for chunk_start in (0, 8, 12, 16):  # chunks 8, 4, 4, 4: the base Linear's and each block's
            moved = z.clone()
            moved[0, chunk_start] += 1.0
            assert not torch.equal(G(moved, labels), base), chunk_start
        loaded = generator_from_spec(json.loads(json.dumps(G.spec.to_dict())))
        loaded.load_state_dict(G.state_dict())
        assert torch.equal(loaded.eval()(z, labels), base)


def _generator_dir(tmp_path, cfg: ResNetConfig, size: int, classes: int):
    torch.manual_seed(0)
    G = build_generator(cfg, 3, size, size, classes)
    with torch.no_grad():  # running statistics and power iterations moved; an open attention gate
        for _ in range(3):
            G(torch.randn(8, cfg.nz), torch.randint(0, classes, (8,)) if classes else None)
        for module in G.modules():
            if hasattr(module, "gamma"):
                module.gamma.fill_(0.7)
    info = {"step": 1, "dataset": "synthetic", "classes": [f"c{i}" for i in range(classes)], "config_hash": "0",
            "distgan_version": "0", "image_shape": [3, size, size]}
    save_generator(G.eval(), tmp_path / "generator", info)
    return tmp_path


@pytest.mark.slow
def test_resnet_128_with_attention_and_classes_exports_to_plain_onnx_within_1e4(tmp_path):
    cfg = ResNetConfig(arch="resnet", nz=24, ngf=2, conditional=True, hier_z=True, attention_res=64, shared_dim=8,
                       channel_mult=[16, 16, 8, 8, 4, 4])
    result = export_onnx(_generator_dir(tmp_path, cfg, 128, CLASSES))
    assert result.max_abs_diff <= 1e-4, result.parity
    import onnx

    graph = onnx.load(str(result.path)).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # no custom ops
    assert {"Softmax", "MatMul", "MaxPool", "Resize"} <= {n.op_type for n in graph.node}
    model = OnnxGenerator(result.path, threads=1)
    generator, _ = load_generator(tmp_path)
    z = model.latents(3, seed=5)
    labels = np.array([0, 1, 2])
    with torch.no_grad():
        want = generator(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
    assert np.abs(model.run(z, labels) - want).max() <= 1e-4


def resnet_run(data, run_dir, *extra):
    return load_config(REPO / "configs/resnet32.yaml", [
        f"data.path={data}", f"run_dir={run_dir}", "name=r", *TINY, "model.ngf=4", "model.ndf=4",
        "model.channel_mult=[2,2,2]", "model.attention_res=14", "model.shared_dim=4", "model.conditional=true",
        "loss.d_steps=1", "data.batch_size=8", "train.log_every=1", *extra])


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_resnet_trains_with_ada_and_r1_resumes_bitwise_and_exports_int8(shards, tmp_path):
    data, _ = shards
    aug = ["aug.policy=color,translation", "aug.adaptive=true", "aug.interval=1", "aug.speed_images=100",
           "loss.r1_gamma=0.5", "loss.r1_every=2", "train.checkpoint_every=2"]
    assert training.train(resnet_run(data, tmp_path / "straight", "train.steps=4", *aug)) == "completed"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert training.train(resnet_run(data, tmp_path / "resumed", "train.steps=2", *aug)) == "completed"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert training.train(resnet_run(data, tmp_path / "resumed", "train.steps=4", *aug)) == "completed"
    last = lambda run: tmp_path / run / "r/checkpoints/step-0000004"  # noqa: E731
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors", "augment.safetensors"):
        a, b = load_file(str(last("straight") / name)), load_file(str(last("resumed") / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    d_weights = load_file(str(last("straight") / "model_1.safetensors"))
    assert any(k.endswith("parametrizations.weight.0._u") for k in d_weights)  # D is spectrally normalised

    result = export_onnx(tmp_path / "straight" / "r", quantize="int8")
    assert result.max_abs_diff <= 1e-4 and result.quantization is not None
    assert result.metadata["distgan.family"] == "resnet"
    drawing = OnnxGenerator(result.path, threads=1).sample(seed=0, n=4, class_name="all")
    assert drawing.images.shape == (40, 28, 28, 1)  # 4 seeds x 10 classes


@pytest.mark.slow
def test_the_weight_check_compares_every_element_across_two_ranks(tmp_path):
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(LAUNCH_2_CPU + [str(REPO / "tests" / "ddp_family_probe.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert results["same"] == "equal"
        for case in ("changed", "swapped"):
            assert results[case].startswith("D.head.1.parametrizations.weight.original differs across ranks"), case


@pytest.mark.slow
def test_two_rank_resnet_keeps_spectral_norm_weights_identical_on_every_rank(shards, tmp_path):
    """A conditional ResNet with attention under 2-rank DDP: each rank's full G and D tensors at every snapshot
    are equal (the probe saves them; the trainer's own element-wise check also ran), and they moved."""
    data, _ = shards
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    probe = [str(REPO / "tests" / "ddp_train_probe.py"), str(tmp_path), str(REPO / "configs/resnet32.yaml"),
             f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "model.ngf=4", "model.ndf=4",
             "model.channel_mult=[2,2,2]", "model.attention_res=14", "model.shared_dim=4", "model.conditional=true",
             "loss.d_steps=1", "data.batch_size=8", "data.num_workers=1", "train.steps=5"]
    proc = subprocess.run(LAUNCH_2_CPU + probe, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    snaps = {(r, k): load_file(str(tmp_path / f"rank{r}-snap{k}.safetensors")) for r in (0, 1) for k in (1, 2)}
    for k in (1, 2):
        a, b = snaps[0, k], snaps[1, k]
        assert any("parametrizations.weight.original" in key for key in a)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), k
    assert any(not torch.equal(snaps[0, 1][key], snaps[0, 2][key]) for key in snaps[0, 1])


@pytest.mark.parametrize("alias,size", [("dcgan28", 28), ("dcgan64", 64)])
def test_dcgan_at_28_and_64_is_the_network_its_older_name_builds(alias, size):
    """The same weights from the same seed, the same images: old checkpoints load into `dcgan` too."""
    nets = {}
    for arch in (alias, "dcgan"):
        torch.manual_seed(0)
        cfg = tiny_model(arch, conditional=True)
        nets[arch] = (build_generator(cfg, 3, size, size, CLASSES).eval(),
                      build_discriminator(cfg, 3, size, size, CLASSES).eval())
    z, labels = torch.randn(2, 12), torch.tensor([0, 2])
    for old, new in zip(nets[alias], nets["dcgan"]):
        assert old.state_dict().keys() == new.state_dict().keys()
        assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
    with torch.no_grad():
        assert torch.equal(nets[alias][0](z, labels), nets["dcgan"][0](z, labels))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_resnet_trains_in_bf16_on_cpu(shards, tmp_path):
    cfg = resnet_run(shards[0], tmp_path, "train.steps=2", "train.mixed_precision=bf16")
    assert training.train(cfg) == "completed"
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss/d"]) and np.isfinite(r["loss/g"]) and r["train/bad_steps"] == 0 for r in rows)
