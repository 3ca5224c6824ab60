"""Perceptual path length: what it measures (0 when the image ignores w, growing with the speed of the W -> image
map), its LPIPS distance (equal to the lpips package's, its VGG16 weights located or downloaded with a digest
check), and `distgan-eval --metrics ppl` end to end. The VGG16 here has random weights (the real file is a 528 MB
download): the properties tested hold for any weights."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_env
from distgan.artifacts import save_generator
from distgan.metrics import lpips_vgg
from distgan.metrics.lpips_vgg import LPIPSDistance, LPIPSWeightsError, find_vgg16_weights
from distgan.metrics.ppl import lpips_input, path_lengths, ppl_of, w_space_of
from distgan.metrics.weights import WeightsDownloadError
from distgan.models import ModelConfig, WSpace, build_generator
from distgan.models.stylegan2 import StyleGAN2Spec, SynthesisLayer, ToRGB, build_stylegan2_generator

NZ = 16
INFO = {"step": 3, "dataset": "fashion-mnist", "classes": [], "image_shape": [1, 28, 28], "config_hash": "abc",
        "distgan_version": "test"}


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """A torchvision VGG16 state dict (its `features.*`, as in vgg16-397923af.pth) with random weights."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "random-vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def distance(vgg_file) -> LPIPSDistance:
    return LPIPSDistance(vgg_file)


@pytest.fixture(scope="module")
def generator() -> torch.nn.Module:
    """A small StyleGAN2 for 28x28 gray images, w_avg moved off zero as training moves it."""
    spec = StyleGAN2Spec(arch="stylegan2", nz=NZ, w_dim=16, mapping_layers=2, mapping_lr=0.01, channel_base=128,
                         channel_max=16, mbstd_group=2, channels=1, height=28, width=28, num_classes=0,
                         conditional=False)
    torch.manual_seed(0)
    G = build_stylegan2_generator(spec).train()
    with torch.no_grad():
        for _ in range(20):
            G(torch.randn(16, NZ))
    return G.eval()


# --- the distance -------------------------------------------------------------------------------------------


def test_distance_equals_the_lpips_package_on_the_same_trunk(vgg_file, distance):
    import lpips

    with warnings.catch_warnings():  # its trunk comes from torchvision's deprecated vgg16(pretrained=False)
        warnings.simplefilter("ignore", UserWarning)
        reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    trunk = torch.load(vgg_file, weights_only=True)
    reference.net.load_state_dict({k: trunk[f"features.{k.split('.', 1)[1]}"] for k in reference.net.state_dict()})
    torch.manual_seed(1)
    x0 = torch.rand(4, 3, 48, 48) * 2 - 1
    x1 = (x0 + 0.2 * torch.randn_like(x0)).clamp(-1, 1)
    with torch.no_grad():
        expected = reference(x0, x1).flatten()
    assert torch.allclose(distance(x0, x1), expected, rtol=1e-5, atol=1e-8)
    assert (expected > 0).all() and (distance(x0, x0) == 0).all()


def test_images_reach_lpips_as_3x256():
    gray = torch.rand(2, 1, 28, 28) * 2 - 1
    up = lpips_input(gray)
    assert up.shape == (2, 3, 256, 256) and torch.equal(up[:, 0], up[:, 2])
    big = torch.rand(2, 3, 512, 512)
    assert torch.allclose(lpips_input(big), F.avg_pool2d(big, 2), atol=1e-6)  # NVlabs' area mean
    odd = torch.rand(1, 3, 384, 320)  # larger, not a multiple: area-averaged too (not bilinear)
    assert torch.allclose(lpips_input(odd), F.adaptive_avg_pool2d(odd, 256), atol=1e-6)


def test_percentile_filtering_drops_the_outliers():
    lengths = torch.cat([torch.full((5,), 1e6), torch.ones(990), torch.zeros(5)]).double()
    assert ppl_of(lengths) == 1.0 and lengths.mean() > 1000


# --- what PPL measures ------------------------------------------------------------------------------------


def test_a_synthesis_that_ignores_w_has_zero_ppl(generator, distance):
    G0 = copy.deepcopy(generator)
    with torch.no_grad():  # every style = its bias: the image no longer depends on w
        for layer in G0.modules():
            if isinstance(layer, (SynthesisLayer, ToRGB)):
                layer.affine.weight.zero_()
    normal = path_lengths(w_space_of(generator), distance, 16, NZ, size=64)
    ignoring = path_lengths(w_space_of(G0), distance, 16, NZ, size=64)
    assert ppl_of(normal) > 0.1 and ppl_of(ignoring) < 1e-6 * ppl_of(normal)


def test_ppl_grows_with_the_speed_of_the_w_to_image_map(generator, distance):
    """synthesis_k(w) = synthesis(w_avg + k (w - w_avg)): the same network, its image moving k times as fast per
    unit of w. While the map is about linear over the images' range (small k), a squared distance over eps²
    grows as k²: a 4x faster map gives 7-16x the PPL on other latent seeds; more than 4x is asserted. (Over
    larger k the network and LPIPS' feature normalisation are far from linear: no law holds there.)"""
    space = w_space_of(generator)
    centre = generator.mapping.w_avg.clone()
    figures = {}
    for k in (0.0, 0.125, 0.5):
        faster = WSpace(space.mapping, lambda w, k=k: space.synthesis(centre + k * (w - centre)), space.resample_noise)
        figures[k] = ppl_of(path_lengths(faster, distance, 16, NZ, size=64))
    assert figures[0.0] == 0.0 and figures[0.125] > 0
    assert figures[0.5] > 4 * figures[0.125], figures


def test_a_family_without_w_is_refused_naming_its_arch():
    G = build_generator(ModelConfig(arch="dcgan", ngf=8, nz=NZ), 1, 28, 28, 0)
    with pytest.raises(ValueError, match="model.arch 'dcgan'"):
        w_space_of(G)


# --- where the VGG16 weights come from ---------------------------------------------------------------------


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(lpips_vgg.VGG16_ENV_VAR, raising=False)
    return tmp_path / "cache"


def test_weights_are_found_by_path_env_var_and_cache(vgg_file, no_weights, monkeypatch, tmp_path):
    with pytest.raises(LPIPSWeightsError) as error:
        find_vgg16_weights()
    for expected in ("DISTGAN_VGG16", str(no_weights / lpips_vgg.VGG16_FILE),
                     str(tmp_path / "torch" / "hub" / "checkpoints"), "--download", lpips_vgg.VGG16_URL,
                     lpips_vgg.VGG16_SHA256):
        assert expected in str(error.value)
    with pytest.raises(LPIPSWeightsError, match="none.pth: no such file"):
        find_vgg16_weights(tmp_path / "none.pth")
    assert find_vgg16_weights(vgg_file) == vgg_file
    monkeypatch.setenv(lpips_vgg.VGG16_ENV_VAR, str(vgg_file))
    assert find_vgg16_weights() == vgg_file
    monkeypatch.delenv(lpips_vgg.VGG16_ENV_VAR)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / lpips_vgg.VGG16_FILE  # where torchvision keeps it
    hub.parent.mkdir(parents=True)
    hub.symlink_to(vgg_file)
    assert find_vgg16_weights() == hub


def test_download_keeps_only_a_file_with_the_expected_digest(vgg_file, no_weights, monkeypatch):
    monkeypatch.setattr(lpips_vgg, "VGG16_URL", vgg_file.as_uri())  # urllib reads file:// like https://
    monkeypatch.setattr(lpips_vgg, "VGG16_SHA256", "0" * 64)
    with pytest.raises(WeightsDownloadError, match="expected 0000"):
        find_vgg16_weights(download=True)
    assert not no_weights.exists() or not any(no_weights.iterdir())  # nothing kept, not even a partial file
    monkeypatch.setattr(lpips_vgg, "VGG16_SHA256", hashlib.sha256(vgg_file.read_bytes()).hexdigest())
    got = find_vgg16_weights(download=True)
    assert got == no_weights / lpips_vgg.VGG16_FILE and got.read_bytes() == vgg_file.read_bytes()


def test_a_state_dict_of_another_network_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, path)
    with pytest.raises(LPIPSWeightsError, match=r"features.0.weight has shape \(64, 1, 3, 3\)"):
        LPIPSDistance(path)


# --- distgan-eval ------------------------------------------------------------------------------------------


def eval_cmd(run: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "distgan.metrics.cli", "--run", str(run), "--device", "cpu", "--quiet", *args]


def test_distgan_eval_reports_ppl(generator, vgg_file, tmp_path):
    save_generator(generator, tmp_path / "generator", INFO)
    out = tmp_path / "result.json"
    proc = subprocess.run(eval_cmd(tmp_path / "generator", "--metrics", "ppl", "--ppl-n", "4", "--lpips-vgg",
                                   str(vgg_file), "--out", str(out)),
                          env=run_env(DISTGAN_CACHE=str(tmp_path / "cache")), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert np.isfinite(result["metrics"]["ppl"]) and result["metrics"]["ppl"] > 0
    settings = result["ppl"]
    assert settings["space"] == "w" and settings["sampling"] == "end" and settings["epsilon"] == 1e-4
    assert settings["crop"] is False and settings["size"] == 256 and settings["n"] == 4
    assert settings["distance"].startswith("lpips-vgg16-v0.1:")
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("ppl "))
    assert float(row[1]) == pytest.approx(result["metrics"]["ppl"], rel=1e-5) and row[2:4] == ["lpips-vgg16-v0.1",
                                                                                                "4"]
    assert "not torchvision's vgg16-397923af.pth" in proc.stderr  # random weights: said, and in the name


def test_distgan_eval_without_the_vgg16_weights_says_how_to_get_them(generator, tmp_path):
    save_generator(generator, tmp_path / "generator", INFO)
    env = run_env(DISTGAN_CACHE=str(tmp_path / "cache"), TORCH_HOME=str(tmp_path / "torch"))
    env.pop(lpips_vgg.VGG16_ENV_VAR, None)
    proc = subprocess.run(eval_cmd(tmp_path / "generator", "--metrics", "ppl"), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for expected in ("distgan-eval: error: no VGG16 weights", "--download", lpips_vgg.VGG16_URL, "--lpips-vgg"):
        assert expected in proc.stderr


def test_distgan_eval_refuses_ppl_for_a_family_without_w(tmp_path):
    G = build_generator(ModelConfig(arch="dcgan", ngf=8, nz=NZ), 1, 28, 28, 0)
    save_generator(G, tmp_path / "generator", INFO)
    proc = subprocess.run(eval_cmd(tmp_path / "generator", "--metrics", "ppl"), env=run_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "ppl walks in W" in proc.stderr and "model.arch 'dcgan'" in proc.stderr
