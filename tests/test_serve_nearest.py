"""The memorisation check (distgan-serve --data): the nearest-images index on a toy set whose answer is known."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from conftest import run_env, start_server, stop_server
from distgan.data.manifest import DataError
from distgan.serve.nearest import NearestIndex, downscale_factor, pixel_features


def test_every_training_image_is_its_own_nearest_at_distance_zero(shards):
    directory, arrays = shards
    index = NearestIndex.open(directory)
    assert len(index.labels) == 1000 and index.image_shape == (28, 28, 1) and index.cache is not None
    images = index.images(np.arange(1000))
    features = pixel_features(images, 1)
    for i in (0, 17, 999):
        found = index.query(images[i], 5)
        assert found.indices[0] == i and found.distances[0] == 0.0
        brute = np.sqrt(np.mean((features - features[i]) ** 2, axis=1))  # every distance, the slow way
        assert np.allclose(found.distances, np.sort(brute)[:5], atol=1e-6)
        assert np.all(np.diff(found.distances) >= 0)
    # A training image slightly changed still finds its original first.
    noisy = np.clip(images[42].astype(np.int16) + np.random.default_rng(0).integers(-3, 4, images[42].shape), 0, 255)
    assert index.query(noisy.astype(np.uint8), 1).indices[0] == 42
    # The second start loads the cache: the same index, no shard read.
    cached = NearestIndex.open(directory)
    assert np.array_equal(cached.features, index.features) and np.array_equal(cached.labels, index.labels)
    assert isinstance(cached.features.base, np.memmap) or isinstance(cached.features, np.memmap)


def test_features_are_box_means_within_the_budget():
    assert downscale_factor(28, 28, 1) == 1 and downscale_factor(64, 64, 3) == 4 and downscale_factor(32, 32, 3) == 2
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
    assert np.allclose(pixel_features(image, 2)[0] * 255, [25, 45, 105, 125])


def test_bad_data_is_a_clear_error(shards, tmp_path):
    directory, _ = shards
    with pytest.raises(DataError, match="dataset.json: no such file"):
        NearestIndex.open(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text((directory / "dataset.json").read_text())
    first = sorted(directory.glob("train-*.tar"))[0]
    (broken / first.name).write_bytes(first.read_bytes()[:5000])
    with pytest.raises(DataError, match=first.name):
        NearestIndex.open(broken)


@pytest.mark.slow
def test_serve_with_data_answers_nearest_and_refuses_bad_data(serve_models, shards, tmp_path):
    directory, _ = shards
    proc, url = start_server(tmp_path / "log", serve_models["cond"], serve_models["rgb"], "--port", "0",
                             "--data", directory)
    try:
        assert "nearest training images for fashion28: 1000 images" in (tmp_path / "log").read_text()
        answer = httpx.get(url + "api/nearest", params={"seed": 3, "class": "Trouser", "k": 4}, timeout=30).json()
        neighbours = answer["neighbours"]
        assert neighbours["shape"] == [4, 28, 28, 1] and len(neighbours["distances"]) == 4
        drawn = np.frombuffer(__import__("base64").b64decode(answer["query"]["pixels"]), np.uint8).reshape(28, 28, 1)
        expected = NearestIndex.open(directory).query(drawn, 4)
        assert neighbours["indices"] == expected.indices.tolist()
        assert httpx.get(url + "api/meta", params={"model": "faces64"}).json()["nearest"] is None
        refused = httpx.get(url + "api/nearest", params={"model": "faces64"})
        assert refused.status_code == 400 and refused.json()["field"] == "model"
    finally:
        stop_server(proc)
    for data, message in [(tmp_path / "nothing", "dataset.json: no such file"),
                          (directory, "no served model draws that shape")]:
        models = [serve_models["rgb"]] if data == directory else [serve_models["cond"]]
        result = subprocess.run([sys.executable, "-m", "distgan.serve.cli", *map(str, models), "--data", str(data)],
                                env=run_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_format_1_manifest_is_checked_by_the_whole_files_sha256(shards, tmp_path):
    directory, _ = shards
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((directory / "dataset.json").read_text())
    manifest["format_version"] = 1
    for shard in manifest["splits"]["train"]["shards"] + manifest["splits"]["test"]["shards"]:
        del shard["chunk_xxh3_128"]
    (old / "dataset.json").write_text(json.dumps(manifest))
    for shard in directory.glob("*.tar"):
        (old / shard.name).write_bytes(shard.read_bytes())
    assert len(NearestIndex.open(old).labels) == 1000
    shutil.rmtree(old / "nearest-index")
    data = bytearray((old / "train-000002.tar").read_bytes())
    data[3000] ^= 0xFF
    (old / "train-000002.tar").write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-000002.tar: sha256 does not match"):
        NearestIndex.open(old)
