"""StyleGAN2 in ONNX: parity with every input (z, labels, psi, z2, mix_layer), a dynamic batch, and the
torch-free sampler's truncation and style mixing (`distgan-sample --psi --mix-seed --mix-layer`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import GENERATOR_INFO
from distgan.artifacts import save_generator
from distgan.export import export_onnx
from distgan.models.stylegan2 import StyleGAN2Generator, StyleGAN2Spec, build_stylegan2_generator
from distgan.runtime import InputError, OnnxGenerator, latents
from test_export import sample  # distgan-sample in a subprocess that fails if anything imported torch

CLASSES = ["a", "b", "c"]
NZ = 8


def lively_generator() -> StyleGAN2Generator:
    """A tiny conditional G whose noise, w_avg and mixing all change the image."""
    torch.manual_seed(0)
    spec = StyleGAN2Spec(arch="stylegan2", nz=NZ, w_dim=8, mapping_layers=2, mapping_lr=0.01, channel_base=128,
                         channel_max=16, mbstd_group=4, channels=3, height=16, width=16, num_classes=3,
                         conditional=True)
    G = build_stylegan2_generator(spec)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.2)
            elif "mapping" in name and name.endswith("weight"):
                p.mul_(3.0)  # lr x 0.01 storage: a wider spread of w between latents
        G.train()
        for _ in range(10):
            G(torch.randn(16, NZ), torch.randint(0, 3, (16,)))
    return G.eval()


@pytest.fixture(scope="module")
def style_model(tmp_path_factory) -> tuple[Path, StyleGAN2Generator, dict[int, float]]:
    """The generator/ directory of a lively G, exported the way every run is (distgan-export's function)."""
    G = lively_generator()
    root = tmp_path_factory.mktemp("stylegan2-onnx")
    save_generator(G, root / "generator", {**GENERATOR_INFO, "classes": CLASSES, "image_shape": [3, 16, 16]})
    result = export_onnx(root / "generator", root / "generator.onnx")
    return result.path, G, result.parity


def torch_uint8(G: StyleGAN2Generator, z, labels, psi, z2=None, mix_layer=None) -> np.ndarray:
    n = len(z)
    with torch.inference_mode():
        images = G(torch.from_numpy(z), torch.from_numpy(labels), torch.full((n,), psi),
                   None if z2 is None else torch.from_numpy(z2),
                   None if mix_layer is None else torch.full((n,), mix_layer))
    return np.round(np.clip((images.numpy() + 1) * 127.5, 0, 255)).transpose(0, 2, 3, 1)


def test_onnx_parity_with_every_input_and_a_dynamic_batch(style_model):
    path, G, parity = style_model
    assert set(parity) == {1, 37} and max(parity.values()) <= 1e-4
    model = OnnxGenerator(path)
    assert model.styled and model.info.num_ws == G.num_ws == 6
    assert [i.name for i in model.session.get_inputs()] == ["z", "labels", "psi", "z2", "mix_layer"]
    assert all(isinstance(i.shape[0], str) for i in model.session.get_inputs()), "batch is not dynamic"
    rng = np.random.default_rng(1)
    z, z2 = rng.standard_normal((5, NZ), dtype=np.float32), rng.standard_normal((5, NZ), dtype=np.float32)
    labels = np.array([0, 1, 2, 0, 1])
    layers = np.array([0, 2, 3, 5, 6])
    out = model.run(z, labels, psi=0.6, z2=z2, mix_layer=layers)
    with torch.inference_mode():
        want = G(torch.from_numpy(z), torch.from_numpy(labels), torch.full((5,), 0.6), torch.from_numpy(z2),
                 torch.from_numpy(layers)).numpy()
    assert np.abs(out - want).max() <= 1e-4
    psi0 = model.run(z, np.zeros(5, np.int64), psi=0.0)
    assert np.abs(psi0 - psi0[:1]).max() <= 1e-5  # every z gives the w_avg image
    assert np.abs(model.run(z, labels) - model.run(z, labels, z2=z2, mix_layer=6)).max() == 0.0
    assert np.abs(model.run(z2, labels) - model.run(z, labels, z2=z2, mix_layer=0)).max() <= 1e-5


def test_sampler_truncates_and_mixes_without_torch(style_model, tmp_path):
    path, G, _ = style_model
    proc = sample("--onnx", path, "--n", 6, "--seed", 2, "--psi", 0.7, "--mix-seed", 5, "--mix-layer", 4,
                  "--npz", tmp_path / "m.npz")
    assert proc.returncode == 0, proc.stderr
    saved = np.load(tmp_path / "m.npz")
    z, z2 = latents(np.arange(2, 8), NZ), latents(np.arange(5, 11), NZ)
    assert np.array_equal(saved["z"], z)  # truncation is in W, inside the graph: z goes in as drawn
    expected = torch_uint8(G, z, saved["labels"], 0.7, z2, 4)
    assert np.abs(saved["images"].astype(int) - expected).max() <= 1
    unmixed = torch_uint8(G, z, saved["labels"], 0.7)
    assert np.abs(saved["images"].astype(int) - unmixed).max() > 10  # mixing changed the images
    proc = sample("--onnx", path, "--n", 2, "--seed", 2, "--psi", 0.7, "--mix-seed", 5, "--mix-layer", 4,
                  "--outdir", tmp_path / "dir")
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "dir").iterdir())
    assert [f.name.split("_", 1)[1] for f in files] == ["seed2_mix5-at4_every-class_psi0.7.png",
                                                        "seed3_mix6-at4_every-class_psi0.7.png"]
    assert np.array_equal(np.asarray(Image.open(files[1])), saved["images"][1])


def test_bad_psi_and_mix_layer_are_refused_naming_the_input(style_model, tmp_path):
    path, G, _ = style_model
    cases = {("--psi", "2.5"): "psi: 2.5 is out of range; valid: a number in 0..2",
             ("--mix-seed", "5", "--mix-layer", "7"): "mix_layer: 7 is out of range; valid: 0..6",
             ("--mix-seed", "5", "--mix-layer", "-1"): "mix_layer: -1 is out of range",
             ("--mix-seed", "-3", "--mix-layer", "2"): "mix_seed: -3 is out of range",
             ("--mix-seed", "5"): "style mixing needs both --mix-seed and --mix-layer"}
    for args, message in cases.items():
        proc = sample("--onnx", path, "--n", 2, *args, "--grid", tmp_path / "x.png")
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    model = OnnxGenerator(path)
    with pytest.raises(InputError, match="mix_layer") as caught:
        model.run(np.zeros((2, NZ), np.float32), np.zeros(2, np.int64), mix_layer=np.array([0, 7]))
    assert caught.value.field == "mix_layer"
    with pytest.raises(InputError, match="mix_seed"):
        model.sample(0, 2, mix_layer=3)


def test_mixing_grid_is_the_papers_figure(style_model):
    path, _, _ = style_model
    model = OnnxGenerator(path)
    drawing = model.mixing_grid(row_seed=3, rows=2, col_seed=10, cols=3, mix_layer=4, class_name="b")
    tiles = drawing.images.reshape(3, 4, 16, 16, 3)
    assert drawing.columns == 4 and not tiles[0, 0].any()
    assert np.array_equal(tiles[0, 1:], model.sample(10, 3, "b").images)
    assert np.array_equal(tiles[1:, 0], model.sample(3, 2, "b").images)
    for r in range(2):
        for c in range(3):
            mixed = model.sample(3 + r, 1, "b", mix_seed=10 + c, mix_layer=4).images[0]
            assert np.array_equal(tiles[1 + r, 1 + c], mixed)
    with pytest.raises(InputError, match="mix_layer: 7 is out of range"):
        model.mixing_grid(0, 2, 5, 2, mix_layer=7)


def test_mixing_grid_through_the_sampler_and_the_api(style_model, tmp_path):
    from starlette.testclient import TestClient

    from distgan.serve.app import create_app
    from distgan.serve.catalog import load_models

    path, _, _ = style_model
    expected = OnnxGenerator(path).mixing_grid(3, 2, 10, 3, mix_layer=4, class_name="b", psi=0.8)
    proc = sample("--onnx", path, *expected.args, "--grid", tmp_path / "mix.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mix.png").read_bytes() == expected.png()
    client = TestClient(create_app(load_models([path])), base_url="http://localhost")
    params = {"row_seed": 3, "rows": 2, "col_seed": 10, "cols": 3, "mix_layer": 4, "class": "b", "psi": 0.8}
    assert client.get("/api/meta").json()["num_ws"] == 6
    response = client.get("/api/mixing", params=params)
    assert response.status_code == 200 and response.content == expected.png()
    answer = client.get("/api/mixing", params={**params, "format": "json"}).json()
    assert "--mix-grid 10" in answer["command"] and answer["shape"] == [3, 4, 16, 16, 3]
    grid = np.load(io.BytesIO(client.get("/api/mixing", params={**params, "format": "npy"}).content))
    assert grid.shape == (3, 4, 16, 16, 3) and np.array_equal(grid.reshape(expected.images.shape), expected.images)
    for bad, field in (({"mix_layer": 7}, "mix_layer"), ({"psi": 2.5}, "psi"), ({"rows": 0}, "rows")):
        response = client.get("/api/mixing", params={**params, **bad})
        assert response.status_code == 400 and response.json()["field"] == field, response.json()
