"""A LAPGAN export's stages (extra ONNX outputs stage_0..stage_K, coarse to fine) through the torch-free runtime,
distgan-sample --stages and distgan-serve's /api/stages; a model without stages is refused with the reason."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from starlette.testclient import TestClient

from conftest import run_env
from distgan.runtime import InputError, OnnxGenerator, latents


def test_stage_grid_is_each_stage_enlarged_coarse_to_fine(lapgan_model):
    model = OnnxGenerator(lapgan_model)
    drawing = model.stage_grid(7, "Sandal", psi=0.8)
    assert drawing.images.shape == (3, 28, 28, 1) and drawing.columns == 3
    assert drawing.text["distgan.stages"] == "7x7,14x14,28x28" and drawing.args[-1] == "--stages"
    z = latents(np.array([7]), model.info.nz) * np.float32(0.8)
    session = ort.InferenceSession(str(lapgan_model), providers=["CPUExecutionProvider"])
    raw = session.run(["stage_0", "stage_1", "stage_2"], {"z": z, "labels": np.array([3], np.int64)})
    for tile, stage in zip(drawing.images, raw):
        factor = 28 // stage.shape[-1]
        as_uint8 = np.round(np.clip((stage[0, 0] + 1) * 127.5, 0, 255)).astype(np.uint8)
        assert np.array_equal(tile[..., 0], as_uint8.repeat(factor, 0).repeat(factor, 1))
    assert np.array_equal(drawing.images[-1], model.sample(7, 1, "Sandal", 0.8).images[0])  # the last: the sample
    assert len({tile.tobytes() for tile in drawing.images}) == 3


def test_sampler_draws_the_stages_and_again_from_the_png(lapgan_model, tmp_path):
    expected = OnnxGenerator(lapgan_model).stage_grid(4, "Trouser")

    def sample(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "distgan.sample", *map(str, args)], env=run_env(),
                              capture_output=True, text=True, timeout=120)

    proc = sample("--onnx", lapgan_model, *expected.args, "--grid", tmp_path / "stages.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "stages.png").read_bytes() == expected.png()
    proc = sample("--from-png", tmp_path / "stages.png", "--grid", tmp_path / "again.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again.png").read_bytes() == expected.png()


def test_a_model_without_stages_is_refused_with_the_reason(serve_models):
    model = OnnxGenerator(serve_models["cond"])
    try:
        model.stage_grid(0)
    except InputError as exc:
        assert exc.field == "model" and "has no pyramid stages" in str(exc) and "LAPGAN" in str(exc)
    else:
        raise AssertionError("a dcgan28 model drew stages")


def test_stages_through_the_api(lapgan_model, serve_models):
    from distgan.serve.app import create_app
    from distgan.serve.catalog import load_models

    client = TestClient(create_app(load_models([lapgan_model, serve_models["cond"]])), base_url="http://localhost")
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert models["pyramid28"]["stages"] == 3 and models["fashion28"]["stages"] == 0
    expected = OnnxGenerator(lapgan_model).stage_grid(5, "Pullover", 0.9)
    params = {"model": "pyramid28", "seed": 5, "class": "Pullover", "psi": 0.9}
    response = client.get("/api/stages", params=params)
    assert response.status_code == 200 and response.content == expected.png()
    answer = client.get("/api/stages", params={**params, "format": "json"}).json()
    assert answer["shape"] == [1, 3, 28, 28, 1] and answer["seeds"] == [5, 5, 5] and answer["columns"] == 3
    assert "--stages" in answer["command"] and answer["text"]["distgan.stages"] == "7x7,14x14,28x28"
    assert answer["link"] == "/?model=pyramid28"  # relative: the page, under any prefix
    grid = np.load(io.BytesIO(client.get("/api/stages", params={**params, "format": "npy"}).content))
    assert grid.shape == (1, 3, 28, 28, 1) and np.array_equal(grid[0], expected.images)
    refused = client.get("/api/stages", params={"model": "fashion28", "seed": 5})
    assert refused.status_code == 400 and refused.json()["field"] == "model"
    assert "fashion28.onnx (dcgan28) has no pyramid stages" in refused.json()["error"]
    for bad, field in (({"seed": -1}, "seed"), ({"class": "all"}, "class"), ({"psi": 3}, "psi"),
                       ({"class": "Hat"}, "class"), ({"n": 2}, "n")):
        response = client.get("/api/stages", params={**params, **bad})
        assert response.status_code == 400 and response.json()["field"] == field, response.json()
    sample = np.load(io.BytesIO(client.get("/api/sample", params={"model": "pyramid28", "seed": 5, "n": 1,
                                                                  "class": "Pullover", "psi": 0.9,
                                                                  "format": "npy"}).content))
    assert np.array_equal(sample[0], expected.images[-1])  # /api/sample works unchanged on a model with stages
