"""ONNX export and the torch-free sampler, for real: tiny trained runs exported, checked with plain onnxruntime."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import REPO, generator_dir, make_idx_dataset, run_env
from distgan.artifacts import load_generator
from distgan.export import ExportError, export_onnx
from distgan.export import onnx as export_module
from distgan.export.cli import main as export_main
from distgan.export.rewrite import inference_generator
from distgan.metrics import domain_features, fid
from distgan.metrics.generated import OnnxSource
from distgan.runtime import PREFIX, REQUIRED_KEYS, ModelError, OnnxGenerator

TINY = ["model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0", "data.shuffle_buffer=64",
        "log.sample_grid=4", "train.steps=4", "train.log_every=2", "train.sample_every=100",
        "train.checkpoint_every=100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two real 4-step runs on tiny shards: unconditional and conditional DCGAN-28."""
    from accelerate.state import AcceleratorState

    from distgan import training as trainer
    from distgan.config import load_config
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    root = tmp_path_factory.mktemp("export-runs")
    make_idx_dataset(root / "raw", n_train=200, n_test=20)
    write_shards(read_idx_dataset("fashion-mnist", root / "raw"), root / "shards", samples_per_shard=100,
                 chunk_size=64)
    out = {}
    for name, extra in (("uncond", []), ("cond", ["model.conditional=true"])):
        cfg = load_config(REPO / "configs/fashion_dcgan.yaml",
                          [f"data.path={root / 'shards'}", f"run_dir={root}", f"name={name}", *TINY, *extra])
        try:
            assert trainer.train(cfg) == "completed"
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def exported(runs) -> dict[str, export_module.ExportResult]:
    return {name: export_onnx(run) for name, run in runs.items()}


def torch_images(run: Path, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    generator, _ = load_generator(run)
    with torch.inference_mode():
        return generator(torch.from_numpy(z), None if labels is None else torch.from_numpy(labels)).numpy()


# --- export ------------------------------------------------------------------------


def test_export_from_a_trained_run_matches_torch_and_describes_itself(runs, exported):
    result = exported["uncond"]
    assert result.path == runs["uncond"] / "generator.onnx" and result.path.is_file()
    assert result.optimized_path == runs["uncond"] / "generator.opt.onnx" and result.optimized_path.is_file()
    assert set(result.parity) == {1, 37} and result.max_abs_diff <= 1e-4
    assert not list(runs["uncond"].glob(".export-*")), "temporary export directory left behind"

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    info = json.loads((runs["uncond"] / "generator" / "generator.json").read_text())
    assert {PREFIX + k for k in REQUIRED_KEYS} <= set(meta)
    assert all(isinstance(v, str) for v in meta.values())
    expected = {"family": "dcgan28", "nz": "100", "channels": "1", "height": "28", "width": "28", "num_classes": "0",
                "class_names": "[]", "output_range": "-1,1", "output_layout": "NCHW", "output_dtype": "float32",
                "step": "4", "dataset": "fashion-mnist", "distgan_version": info["distgan_version"],
                "config_hash": info["config_hash"], "quantization": "none", "latent": "standard_normal"}
    assert {k: meta[PREFIX + k] for k in expected} == expected
    assert [(i.name, i.type, i.shape[1]) for i in session.get_inputs()] == [("z", "tensor(float)", 100)]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("images", "tensor(float)")]
    assert isinstance(session.get_inputs()[0].shape[0], str), "batch dimension is not dynamic"
    # The optimised copy carries the same metadata.
    opt = ort.InferenceSession(str(result.optimized_path), providers=["CPUExecutionProvider"])
    assert opt.get_modelmeta().custom_metadata_map == meta

    rng = np.random.default_rng(5)
    for batch in (1, 7, 256):  # one session, three batch sizes
        z = rng.standard_normal((batch, 100), dtype=np.float32)
        images = session.run(["images"], {"z": z})[0]
        assert images.shape == (batch, 1, 28, 28) and images.dtype == np.float32
        reference = torch_images(runs["uncond"], z)
        # After 4 steps from N(0, 0.02) the images are ~1e-3 in size: also check relative to that.
        assert np.abs(images - reference).max() <= min(1e-4, 1e-3 * np.abs(reference).max())
        assert np.abs(opt.run(["images"], {"z": z})[0] - images).max() <= 1e-5
    assert images.std() > 0 and np.abs(images).max() <= 1


def test_conditional_model_passes_labels_through(runs, exported):
    session = ort.InferenceSession(str(exported["cond"].path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta[PREFIX + "num_classes"] == "10" and json.loads(meta[PREFIX + "class_names"])[5] == "Sandal"
    assert [(i.name, i.type) for i in session.get_inputs()] == [("z", "tensor(float)"), ("labels", "tensor(int64)")]
    z = np.repeat(np.random.default_rng(0).standard_normal((1, 100), dtype=np.float32), 4, axis=0)
    labels = np.array([3, 3, 7, 0], np.int64)
    images = session.run(["images"], {"z": z, "labels": labels})[0]
    assert np.array_equal(images[0], images[1]), "same latent and label, different images"
    # Relative to the images: after 4 steps a G's outputs are ~1e-4 and its per-class scales and
    # shifts (conditional BatchNorm, init 1 and 0) have barely moved, yet other labels, other images.
    scale = np.abs(images).max()
    assert np.abs(images[0] - images[2]).max() > 0.01 * scale and np.abs(images[2] - images[3]).max() > 0.01 * scale
    reference = torch_images(runs["cond"], z, labels)
    assert np.abs(images - reference).max() <= min(1e-4, 1e-3 * np.abs(reference).max())


@pytest.mark.parametrize("arch, shape, conditional", [("dcgan64", (3, 64, 64), False), ("dcgan64", (3, 64, 64), True),
                                                      ("mlp", (3, 16, 16), False)])
def test_every_architecture_exports_within_tolerance(tmp_path, arch, shape, conditional):
    source = generator_dir(tmp_path, arch, shape, conditional)
    generator, _ = load_generator(source)
    fast = inference_generator(generator)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules()), "BatchNorm not folded"
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in fast.modules())
    result = export_onnx(source, tmp_path / "g.onnx")
    assert result.max_abs_diff <= 1e-4
    model = OnnxGenerator(result.path)
    z = model.latents(5, seed=1)
    labels = model.default_labels(5)
    reference = torch_images(source, z, labels)
    assert np.abs(reference).max() > 0.05, "outputs too close to 0 for the comparison to mean anything"
    assert np.abs(model.run(z, labels) - reference).max() <= 1e-4
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "BatchNormalization" not in ops and "ConvTranspose" not in ops


def test_uint8_output_converts_inside_the_graph(runs, tmp_path):
    result = export_onnx(runs["uncond"], tmp_path / "u8.onnx", uint8_output=True)
    assert max(result.uint8_parity.values()) <= 1
    model = OnnxGenerator(result.path)
    assert (model.info.output_dtype, model.info.output_layout, model.info.output_range) == ("uint8", "NHWC", (0, 255))
    z = model.latents(9, seed=3)
    images = model.run(z)
    assert images.dtype == np.uint8 and images.shape == (9, 28, 28, 1)
    float_images = torch_images(runs["uncond"], z)
    expected = np.round(np.clip((float_images + 1) * 127.5, 0, 255)).transpose(0, 2, 3, 1)
    assert np.abs(images.astype(int) - expected).max() <= 1


def test_int8_model_runs_with_bounded_error(tmp_path, capsys):
    source = generator_dir(tmp_path, "dcgan64", (3, 64, 64))
    assert export_main(["--onnx", str(source), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8 vs torch fp32: max |diff|" in printed and "int8 speed:" in printed
    path = source / "generator-int8.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    model = OnnxGenerator(path)
    assert model.info.quantization == "int8"
    z = model.latents(16, seed=2)
    reference = torch_images(source, z)
    error = np.abs(model.run(z) - reference)
    # 8 bits over the output's range: a few steps at most, well under one on average. Measured: max
    # 0.3-1.2% and mean 0.04% of the spread; quantising the last layer too (the old scheme) gave a mean of 0.26%.
    spread = reference.max() - reference.min()
    assert error.max() < 0.03 * spread and error.mean() < 0.001 * spread, (error.max(), error.mean(), spread)


# How far int8 may move the domain FID of a trained generator's images from its fp32 images, on the same 300
# latents. Measured on `pattern_gan` (pre-tanh values -11.9..0, background deep in tanh's flat part, as quantize.py
# describes): int8 0.0003; int8 with the last layer quantised too 0.38 (the regression quantize.py documents);
# calibrated on latents 0.3x too small (activations clipped) 0.36; fp32 on another 300 latents 3.4 (checked to
# stay above the bound). 0.02 sits 60x above the healthy figure (room for other CPUs' int8 kernels), 18x below
# either breakage, and 170x below what redrawing the latents does: int8 must be invisible at this n.
INT8_FID_BOUND = 0.02


def test_int8_images_stay_within_a_domain_fid_of_fp32(pattern_gan, pattern_classifier, tmp_path, capsys):
    extractor = domain_features(pattern_classifier[1])
    fp32 = export_onnx(pattern_gan, tmp_path / "g.onnx").path
    int8 = export_onnx(pattern_gan, tmp_path / "g-int8.onnx", quantize="int8").path

    def features(path: Path, seed: int = 0) -> torch.Tensor:
        return extractor(torch.cat([b.images for b in OnnxSource(path).batches(300, seed=seed)]))

    reference = features(fp32)
    quantised, resampled = fid(features(int8), reference), fid(features(fp32, seed=1), reference)
    with capsys.disabled():
        print(f"\n[int8 vs fp32] domain FID-300 {quantised:.5f} on the same latents; fp32 on other latents "
              f"{resampled:.3f}")
    assert quantised < INT8_FID_BOUND < resampled, (quantised, resampled)


def test_int8_keeps_the_first_and_last_layers_in_fp32(tmp_path):
    """z and the pre-tanh tensor are never quantised: a trained generator's pre-tanh values span hundreds
    (background deep in tanh's flat region), and 8 bits over that range ruined its images (quantize.py)."""
    source = generator_dir(tmp_path, "dcgan28", (1, 28, 28))
    result = export_onnx(source, quantize="int8")
    graph = onnx.load(str(result.path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    layers = [node for node in graph.node if node.op_type in ("Gemm", "MatMul", "Conv")]
    first, last = layers[0], layers[-1]
    assert producer.get(first.input[0]) is None and first.input[0] == "z"  # z straight in, fp32
    assert first.input[1] not in producer  # fp32 weights (an initializer, no DequantizeLinear)
    assert all(producer[i].op_type == "DequantizeLinear" for i in middle_inputs(layers[1:-1], producer))
    assert last.input[1] not in producer  # fp32 weights
    consumers = [node.op_type for node in graph.node if last.output[0] in node.input]
    assert consumers == ["Tanh"], consumers  # no QuantizeLinear between the last layer and tanh
    assert not any(node.op_type == "QuantizeLinear" and node.input[0] == "images" for node in graph.node)


def middle_inputs(layers: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto]) -> list[str]:
    """Data and weight inputs of the layers between the first and last: all int8 (behind a DequantizeLinear)."""
    assert layers, "the test generator has int8 layers between the first and last"
    return [name for node in layers for name in node.input[:2]]


def test_a_wrong_exporter_result_is_caught_and_the_other_exporter_used(tmp_path, monkeypatch):
    """The dynamo exporter has shipped wrong graphs: a model off by more than 1e-4 must never be written."""
    source = generator_dir(tmp_path / "src", "dcgan28", (1, 28, 28))

    def wrong_exporter(module, args, path, opset, names):
        broken = inference_generator(module)
        with torch.no_grad():
            broken.net[-2].bias += 1e-3  # one part in a thousand, before the final tanh
        export_module._export_torchscript(broken, args, path, opset, names)

    real = export_module._export_torchscript
    monkeypatch.setattr(export_module, "_exporters", lambda: [("dynamo", wrong_exporter), ("torchscript", real)])
    result = export_onnx(source, tmp_path / "a.onnx")
    assert result.exporter == "torchscript" and result.max_abs_diff <= 1e-4
    assert any("dynamo exporter: max |onnxruntime - torch|" in note for note in result.notes)
    assert OnnxGenerator(result.path).info.metadata[PREFIX + "exporter"] == "torchscript"

    monkeypatch.setattr(export_module, "_exporters", lambda: [("dynamo", wrong_exporter)])
    with pytest.raises(ExportError, match="no exporter gave a model that matches torch"):
        export_onnx(source, tmp_path / "b.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.opt.onnx", "src"], "a failed export left files"


def test_bad_sources_give_clear_errors(runs, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a run or generator directory"):
        export_onnx(tmp_path)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(runs["uncond"] / "generator" / "generator.json", no_weights)
    with pytest.raises(FileNotFoundError, match=r"no-weights: not a run or generator directory \(needs generator.json "
                                                 r"and generator.safetensors\)"):
        export_onnx(no_weights)
    spec_dir, weights_dir, arch_dir = (tmp_path / n for n in ("garbage", "foreign", "arch"))
    for d in (spec_dir, weights_dir, arch_dir):
        shutil.copytree(runs["uncond"] / "generator", d)
    (spec_dir / "generator.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match=r"generator.safetensors: not a safetensors file"):
        export_onnx(spec_dir)
    shutil.copy(runs["cond"] / "generator" / "generator.safetensors", weights_dir)  # the other run's weights
    with pytest.raises(ValueError, match="weights do not fit the architecture"):
        export_onnx(weights_dir)
    info = json.loads((arch_dir / "generator.json").read_text())
    info["spec"]["arch"] = "nosuch"
    (arch_dir / "generator.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"generator.json: unknown model.arch 'nosuch'; valid: mlp, dcgan, dcgan28"):
        export_onnx(arch_dir)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--onnx", str(arch_dir)])
    assert exit_info.value.code == 2 and "distgan-export: error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        export_onnx(runs["uncond"], tmp_path / "x.onnx", quantize="int4")


def test_export_cli_end_to_end(runs, tmp_path):
    out = tmp_path / "cli" / "g.onnx"
    proc = subprocess.run([sys.executable, "-m", "distgan.export.cli", "--onnx", str(runs["cond"] / "generator"),
                           "--out", str(out)], env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "parity fp32 max |onnxruntime - torch|: batch 1:" in proc.stdout and f"wrote {out}" in proc.stdout
    assert OnnxGenerator(out).info.class_names[9] == "Ankle boot"


# --- the torch-free sampler ---------------------------------------------------------

# Runs distgan-sample, then fails if anything imported torch (even indirectly).
NO_TORCH = ("import runpy, sys; sys.argv = ['distgan-sample'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('distgan.sample', run_name='__main__')\n"
            "finally:\n    assert 'torch' not in sys.modules, 'distgan-sample imported torch'\n")


def sample(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], env=run_env(), capture_output=True,
                          text=True, timeout=120)


def test_sampler_is_torch_free_deterministic_and_writes_every_output(exported, tmp_path):
    model = exported["cond"].path
    for name in ("a", "b"):
        proc = sample("--onnx", model, "--n", 12, "--seed", 3, "--grid", tmp_path / f"{name}.png")
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes(), "same seed, different images"
    grid = np.asarray(Image.open(tmp_path / "a.png"))
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2) and grid.std() > 0  # 12 images: 3 rows of 4, 28 + 2 px each

    proc = sample("--onnx", model, "--n", 12, "--seed", 3, "--npz", tmp_path / "s.npz")
    assert proc.returncode == 0, proc.stderr
    saved = np.load(tmp_path / "s.npz")
    assert saved["images"].shape == (12, 28, 28, 1) and saved["images"].dtype == np.uint8
    assert saved["seeds"].tolist() == list(range(3, 15))  # image i is seed 3 + i, of class (3 + i) mod 10
    assert saved["labels"].tolist() == [(3 + i) % 10 for i in range(12)]
    reference = torch_images(exported["cond"].path.parent, saved["z"], saved["labels"])
    expected = np.round(np.clip((reference + 1) * 127.5, 0, 255)).transpose(0, 2, 3, 1)
    assert np.abs(saved["images"].astype(int) - expected).max() <= 1

    proc = sample("--onnx", model, "--n", 3, "--seed", 0, "--outdir", tmp_path / "dir", "--class", "sandal")
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (tmp_path / "dir").iterdir())
    digest = OnnxGenerator(model).sha256[:12]
    assert files == [f"{digest}_seed{s}_sandal_psi1.0.png" for s in range(3)]
    assert sample("--onnx", model, "--n", 1, "--seed", 2, "--class", "SANDAL", "--grid", tmp_path / "one.png",
                  ).returncode == 0
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "dir" / files[2]).read_bytes()

    # The walk needs images that visibly change with z: after 4 training steps they differ by ~1e-4, which
    # rounds to the same uint8 frames (and a GIF stores repeated frames once).
    lively = export_onnx(generator_dir(tmp_path, "dcgan28", (1, 28, 28), conditional=True)).path
    proc = sample("--onnx", lively, "--n", 3, "--seed", 0, "--class", "c1", "--interpolate", 5, "--steps", 4,
                  "--gif", tmp_path / "walk.gif")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "walk.gif").n_frames == 6  # 4 frames there, 2 back
    proc = sample("--onnx", lively, "--n", 3, "--seed", 0, "--class", "c1", "--interpolate", 5, "--steps", 4,
                  "--grid", tmp_path / "walk.png")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "walk.png").size == (4 * 30 + 2, 3 * 30 + 2)  # a row of 4 frames per image


def test_sampler_bad_input_errors(exported, tmp_path):
    model = OnnxGenerator(exported["cond"].path)
    labels = np.zeros(2, np.int64)
    with pytest.raises(ModelError, match=r"z must be float32 of shape \[batch, 100\]; got float32 \[2, 64\]"):
        model.run(np.zeros((2, 64), np.float32), labels)
    with pytest.raises(ModelError, match=r"z must be float32 of shape \[batch, 100\]; got float64 \[2, 100\]"):
        model.run(np.zeros((2, 100)), labels)
    with pytest.raises(ModelError, match=r"labels must be int64 of shape \[2\]"):
        model.run(np.zeros((2, 100), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ModelError, match="conditional: pass labels"):
        model.run(np.zeros((2, 100), np.float32))
    with pytest.raises(ModelError, match=r"class ids in 0\.\.9"):
        model.run(np.zeros((2, 100), np.float32), np.array([0, 10], np.int64))
    assert model.class_id("SANDAL") == 5
    proc = sample("--onnx", exported["cond"].path, "--n", 4, "--grid", tmp_path / "x.png", "--class", "sandle")
    assert proc.returncode == 2
    assert "unknown class 'sandle'; valid: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal" in proc.stderr
    with pytest.raises(ModelError, match="unconditional"):
        OnnxGenerator(exported["uncond"].path).class_id("sandal")
    # An ONNX model that is not a distgan generator, and a file that is not ONNX at all.
    plain = onnx.load(str(exported["uncond"].path))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelError, match="not a distgan generator; metadata_props lacks distgan.family"):
        OnnxGenerator(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="onnxruntime cannot load it"):
        OnnxGenerator(tmp_path / "junk.onnx")


# --- the deployment kit -------------------------------------------------------------


@pytest.fixture(scope="session")
def kit_python(request) -> Path:
    """A venv with only export/requirements.txt installed, cached across runs (keyed by the requirements)."""
    requirements = REPO / "export" / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = Path(request.config.cache.mkdir("export-kit-venv")) / key
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                                 capture_output=True, text=True, timeout=600)
        if install.returncode != 0:
            pytest.skip(f"cannot install export/requirements.txt into a fresh venv (no PyPI?): {install.stderr[-500:]}")
        (venv / ".complete").touch()
    return python


def test_deployment_kit_runs_where_only_onnxruntime_is_installed(kit_python, serve_models, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run([str(kit_python), "-c", "import torch"], cwd=tmp_path, env=env, capture_output=True)
    assert probe.returncode != 0, "the kit's venv has torch: the test would prove nothing"
    for name in ("generate.py", "runtime.py"):  # as a user would: the two files alone (runtime.py is a link)
        shutil.copy(REPO / "export" / name, tmp_path / name)
    model = serve_models["cond"]  # images that change with seed, class and psi
    args = ["--n", "12", "--seed", "3", "--class", "Sandal", "--psi", "0.5"]
    proc = subprocess.run([str(kit_python), "generate.py", str(model), *args, "--out", str(tmp_path / "kit.png")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sample("--onnx", model, *args, "--grid", tmp_path / "ours.png").returncode == 0
    assert (tmp_path / "kit.png").read_bytes() == (tmp_path / "ours.png").read_bytes()  # one convention, one file
    assert sample("--onnx", model, *args[:-1], "1", "--grid", tmp_path / "psi1.png").returncode == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "psi1.png")), np.asarray(Image.open(tmp_path / "kit.png")))
    bad = subprocess.run([str(kit_python), "generate.py", str(model), "--class", "sandle"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown class 'sandle'; valid: T-shirt/top" in bad.stderr
