"""SRGAN: the networks, the on-device down-sampler and crops, the content losses, the image export and
`distgan-upscale` (tiling, sizes, alpha, refusals, no torch)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distgan.content_loss import ContentLoss, VGGWeightsError, find_vgg19_weights, vgg_features
from distgan.export.image_onnx import PARITY_SHAPES, TOLERANCE, export_image_model, parity
from distgan.image_runtime import ImageModelError, OnnxImageModel, tile_starts, upscale
from distgan.models.srgan import (
    SRDiscriminator, SRDiscriminatorSpec, SRGeneratorSpec, SRResNet, downsample, random_crops, receptive_radius,
)
from conftest import LAUNCH_2_CPU, REPO, run_env

SR_META = {"task": "super-resolution", "family": "srgan", "step": 0}


def g_spec(scale: int = 2, channels: int = 3, blocks: int = 1, ngf: int = 8) -> SRGeneratorSpec:
    return SRGeneratorSpec(arch="srgan", channels=channels, height=16, width=16, num_classes=0, conditional=False,
                           scale=scale, ngf=ngf, blocks=blocks)


def d_spec(channels: int = 3, ndf: int = 4, dense: int = 8) -> SRDiscriminatorSpec:
    return SRDiscriminatorSpec(arch="srgan", channels=channels, height=16, width=16, num_classes=0,
                               conditional=False, ndf=ndf, dense=dense)


def tiny_sr(scale: int = 2, channels: int = 3, blocks: int = 1) -> SRResNet:
    torch.manual_seed(0)
    g = SRResNet(g_spec(scale, channels, blocks)).eval()
    with torch.no_grad():  # BatchNorm statistics as after training, so eval mode is not the identity
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return g


@pytest.fixture(scope="module")
def sr_onnx(tmp_path_factory) -> tuple[Path, SRResNet]:
    g = tiny_sr(scale=2)
    path = tmp_path_factory.mktemp("sr") / "sr.onnx"
    export_image_model(g, path, channels=3, metadata={**SR_META, "scale": 2})
    return path, g


@pytest.mark.parametrize("scale", [2, 4])
def test_generator_shapes_and_receptive_radius(scale):
    """Odd sizes give exactly scale x; one input pixel changes nothing beyond receptive_radius."""
    g = tiny_sr(scale=scale, blocks=2)
    x = torch.zeros(1, 3, 41, 37)
    with torch.no_grad():
        base = g(x)
        assert base.shape == (1, 3, 41 * scale, 37 * scale)
        x[0, :, 20, 18] = 1.0
        changed = torch.nonzero((g(x) - base).abs().sum(1)[0] > 0)
    radius = receptive_radius(g.spec)
    lo, hi = changed.min(0).values, changed.max(0).values
    assert lo[0] >= (20 - radius) * scale and hi[0] < (21 + radius) * scale
    assert lo[0] < (20 - radius + 1) * scale  # the bound is tight, not merely safe


def test_discriminator_any_crop_size():
    d = SRDiscriminator(d_spec(channels=1))
    assert d(torch.randn(3, 1, 24, 24)).shape == (3,) and d(torch.randn(2, 1, 96, 96)).shape == (2,)


@pytest.mark.parametrize("scale", [2, 4])
def test_downsample_matches_pil_bicubic(scale):
    """torch's antialiased bicubic vs PIL's Image.resize(BICUBIC) reduce, on smooth + noisy content: within
    0.5 of a level on average and one level at worst (PIL rounds to uint8 between its two 1-D passes;
    measured 0.28 / 0.91 at x2, 0.27 / 0.75 at x4)."""
    rng = np.random.default_rng(scale)
    yy, xx = np.mgrid[0:96, 0:64]
    smooth = 127 + 100 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 5.0)[..., None]
    image = np.clip(smooth + rng.normal(0, 20, (96, 64, 3)), 0, 255).astype(np.uint8)
    want = np.asarray(Image.fromarray(image).resize((64 // scale, 96 // scale), Image.Resampling.BICUBIC))
    hr = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    got = ((downsample(hr, scale)[0].permute(1, 2, 0).numpy() + 1) * 127.5)
    diff = np.abs(got - want.astype(np.float64))
    assert diff.mean() < 0.5 and diff.max() <= 1.0
    with pytest.raises(ValueError, match="not a multiple of scale"):
        downsample(hr[..., :63], scale)


def test_random_crops_are_crops():
    images = torch.arange(2 * 1 * 10 * 12, dtype=torch.float32).view(2, 1, 10, 12)
    crops = random_crops(images, 4, generator=torch.Generator().manual_seed(1))
    assert crops.shape == (2, 1, 4, 4)
    for image, crop in zip(images, crops):
        top, left = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 12)
        assert torch.equal(crop, image[:, top:top + 4, left:left + 4])
    with pytest.raises(ValueError, match="larger than the images"):
        random_crops(images, 11)


def test_content_losses(tmp_path, monkeypatch):
    """mse / l1 on pixels; features through VGG weights loaded from a torchvision-shaped state dict;
    offline without weights: an error naming where to put them and how to download."""
    sr, hr = torch.zeros(2, 1, 16, 16), torch.full((2, 1, 16, 16), 0.5)
    assert ContentLoss("mse")(sr, hr).item() == pytest.approx(0.25)
    assert ContentLoss("l1")(sr, hr).item() == pytest.approx(0.5)
    from torchvision.models.vgg import cfgs, make_layers

    state = {f"features.{k}": v for k, v in make_layers(cfgs["E"])[:9].state_dict().items()}
    torch.save(state, tmp_path / "vgg.pth")
    loss = ContentLoss("features", vgg_features(tmp_path / "vgg.pth", "vgg22"))
    assert loss(sr, sr).item() == 0 and loss(sr, hr).item() > 0
    with pytest.raises(VGGWeightsError, match=r"no features\.10\.weight"):
        vgg_features(tmp_path / "vgg.pth", "vgg54")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DISTGAN_VGG19", raising=False)
    with pytest.raises(VGGWeightsError, match="download.pytorch.org.*DISTGAN_VGG19.*--download"):
        find_vgg19_weights()
    monkeypatch.setenv("DISTGAN_VGG19", str(tmp_path / "vgg.pth"))
    assert find_vgg19_weights() == tmp_path / "vgg.pth"


def test_onnx_parity_at_two_sizes(sr_onnx):
    path, g = sr_onnx
    diffs = parity(path, g, channels=3)
    assert len(diffs) == len(PARITY_SHAPES) == 2 and max(diffs.values()) < TOLERANCE
    model = OnnxImageModel(path, task="super-resolution")
    out = model.run(np.zeros((3, 3, 13, 29), np.float32))
    assert out.shape == (3, 3, 26, 58) and model.info.scale == 2


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [(100, 32, 8), (33, 32, 8), (257, 64, 16), (64, 64, 8), (10, 0, 0)]:
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length) if tile else length
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_equals_untiled_away_from_seams(sr_onnx):
    """Beyond the receptive radius from every internal tile edge, tiles agree with the whole image within
    1e-3; at the seams (zero padding inside a tile), within 0.05 on the [-1, 1] scale for this net (measured:
    0.017 at the seams, 76% of the pixels here; 3e-8 elsewhere)."""
    path, g = sr_onnx
    model = OnnxImageModel(path)
    image = np.random.default_rng(0).integers(0, 256, (150, 130, 3), dtype=np.uint8)
    tile, overlap, s, r = 64, 8, 2, receptive_radius(g.spec)
    whole = upscale(model, image, tile=0, float_output=True)
    tiled = upscale(model, image, tile=tile, overlap=overlap, float_output=True)
    assert whole.shape == tiled.shape == (300, 260, 3)
    near = []
    for length in image.shape[:2]:
        starts = tile_starts(length, tile, overlap)
        edges = starts[1:] + [a + tile for a in starts[:-1]]
        mask = np.zeros(length * s, bool)
        for edge in edges:
            mask[max(0, (edge - r) * s): (edge + r) * s] = True
        near.append(mask)
    seam = near[0][:, None] | near[1][None, :]
    assert 0 < seam.mean() < 1
    diff = np.abs(whole - tiled).max(axis=2)
    assert diff[~seam].max() < 1e-3
    assert diff[seam].max() < 0.05


def test_upscale_cli(sr_onnx, tmp_path):
    """Odd sizes, alpha, gray, a folder; and no torch imported along the way."""
    path, _ = sr_onnx
    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    src.mkdir()
    rgba = rng.integers(0, 256, (33, 47, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (21, 19), dtype=np.uint8), "L").save(src / "b.png")
    Image.fromarray(rng.integers(0, 256, (17, 25, 3), dtype=np.uint8)).save(src / "c.jpg")
    code = ("import sys, runpy; sys.argv = sys.argv[1:]\n"
            "try:\n    runpy.run_module('distgan.upscale', run_name='__main__')\n"
            "finally:\n    assert 'torch' not in sys.modules, 'distgan-upscale imported torch'\n")
    run = subprocess.run([sys.executable, "-c", code, "distgan-upscale", "--model", str(path), str(src),
                          str(tmp_path / "out"), "--tile", "16", "--overlap", "4"],
                         env=run_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    a, b, c = (Image.open(tmp_path / "out" / n) for n in ("a.png", "b.png", "c.jpg"))
    assert (a.mode, a.size) == ("RGBA", (94, 66)) and (b.mode, b.size) == ("L", (38, 42)) and c.size == (50, 34)
    want_alpha = Image.fromarray(rgba[..., 3]).resize((94, 66), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(a.getchannel("A")), np.asarray(want_alpha))


def _upscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgan.upscale", *args], env=run_env(), capture_output=True,
                          text=True)


def test_upscale_refusals(sr_onnx, tmp_path):
    """A non-image, a too-large image and a model that is not an SR model: one line each, exit 2."""
    path, _ = sr_onnx
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    gan = tmp_path / "gan.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(torch.nn.Linear(4, 4), (torch.zeros(1, 4),), str(gan), dynamo=False)
    cases = [
        (["--model", str(path), str(tmp_path / "notes.png"), str(tmp_path / "o.png")], "notes.png: not an image"),
        (["--model", str(path), str(tmp_path / "big.png"), str(tmp_path / "o.png"), "--max-pixels", "50000"],
         "300x200 is more than --max-pixels 50,000"),
        (["--model", str(gan), str(tmp_path / "big.png"), str(tmp_path / "o.png")],
         "gan.onnx: not a distgan image-to-image model"),
        (["--model", str(tmp_path / "notes.png"), str(tmp_path / "big.png"), str(tmp_path / "o.png")],
         "onnxruntime cannot load it"),
    ]
    for args, message in cases:
        run = _upscale(*args)
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not (tmp_path / "o.png").exists()


def test_image_runtime_checks_inputs(sr_onnx):
    model = OnnxImageModel(sr_onnx[0])
    with pytest.raises(ImageModelError, match="3 channels"):
        model.run(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ImageModelError, match="not a 'lapgan-level' one"):
        OnnxImageModel(sr_onnx[0], task="lapgan-level")


def test_comparison_rows():
    """LR (nearest), bicubic, SR and HR rows at the HR size, for the W&B / PNG grids."""
    from distgan.models.srgan import comparison_rows

    g = tiny_sr(scale=2, channels=1)
    hr = torch.rand(3, 1, 12, 16) * 2 - 1
    rows = comparison_rows(g, hr, 2)
    assert rows.shape == (12, 1, 12, 16) and torch.equal(rows[9:], hr)
    lr = downsample(hr, 2)
    assert torch.equal(rows[:3, :, ::2, ::2], lr) and torch.allclose(rows[6:9], g(lr).detach())


# --- the family in the trainer -------------------------------------------------------------------

SR_TINY = ["model.arch=srgan", "model.scale=2", "model.hr_patch=16", "model.ngf=8", "model.ndf=4", "model.blocks=1",
           "model.d_dense=8", "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=64",
           "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4", "train.pretrain_steps=3"]


def sr_config(data: Path, run_dir: Path, *extra: str):
    from distgan.config import load_config

    return load_config(None, [f"data.path={data}", f"run_dir={run_dir}", "name=sr", *SR_TINY, *extra])


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_srgan_trains_exports_and_upscales(shards, tmp_path):
    """The family through the trainer: warm-up then GAN, the LR/bicubic/SR/HR grid, generator/ exported by
    distgan-export's path (parity at the trained size) and again at two other sizes, run by distgan-upscale's
    runtime."""
    from distgan.export.onnx import export_onnx
    from distgan.training import train

    data, _ = shards
    cfg = sr_config(data, tmp_path, "train.steps=6")
    assert (cfg.optim.g_betas, cfg.log.sample_grid) == ((0.9, 0.999), 8)  # the family's defaults
    assert train(cfg) == "completed"
    run = tmp_path / "sr"
    grid_png = Image.open(run / "samples" / "step-0000004.png")
    assert grid_png.size[0] > grid_png.size[1]  # 8 columns x 4 rows: LR, bicubic, SR, HR
    result = export_onnx(run)
    model = OnnxImageModel(result.path, task="super-resolution")
    assert model.info.scale == 2 and model.info.family == "srgan"
    from distgan.artifacts import load_generator

    g, _ = load_generator(run)
    assert max(parity(result.path, g.eval(), channels=1).values()) < TOLERANCE  # two other sizes
    out = upscale(model, np.zeros((13, 21, 1), np.uint8), tile=8, overlap=2)
    assert out.shape == (26, 42, 1)
    from distgan.serve.catalog import ServedUpscaler, load_models

    (served,) = load_models([result.path])  # distgan-serve takes the export as a super-resolution model
    assert isinstance(served, ServedUpscaler) and served.describe()["scale"] == 2


def test_srgan_config_errors_name_the_key(shards, tmp_path):
    """Bad values refused before training, each naming its key (family keys checked against the data)."""
    from distgan.config import ConfigError
    from distgan.training import TrainingError, train

    data, _ = shards
    for override, key in [("loss.content=vgg", "loss.content"), ("loss.adv_weight=-1", "loss.adv_weight"),
                          ("train.pretrain_steps=-1", "train.pretrain_steps"), ("loss.vgg_layer=vgg99", "vgg_layer")]:
        with pytest.raises(ConfigError, match=key):
            sr_config(data, tmp_path, override)
    for override, key in [("model.scale=3", "model.scale"), ("model.hr_patch=15", "model.hr_patch"),
                          ("model.hr_patch=32", "model.hr_patch"), ("model.blocks=0", "model.blocks"),
                          ("model.conditional=true", "model.conditional")]:
        with pytest.raises(TrainingError, match=key):
            train(sr_config(data, tmp_path, override, "train.steps=3"))


@pytest.mark.slow
def test_srgan_two_rank_ddp_with_wandb(shards, tmp_path):
    """2 gloo ranks train the family (warm-up, then GAN), W&B offline holds the sample grids."""
    data, _ = shards
    args = [str(REPO / "distgan" / "train.py"), f"data.path={data}", f"run_dir={tmp_path}", "name=sr", *SR_TINY,
            "train.steps=6", "log.log_with=wandb"]
    env = run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.run(LAUNCH_2_CPU + args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stderr and (tmp_path / "sr" / "COMPLETED").read_text().strip() == "6"
    run_id = (tmp_path / "sr" / "wandb_id.txt").read_text().strip()
    offline = list((tmp_path / "sr" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(list((offline[0] / "files" / "media" / "images").glob("samples_*.png"))) == 2


def test_specs_from_json_are_checked_as_whole_images():
    """generator.json / discriminator.json round trips at any patch the config allowed (28, not the default 96),
    and a bad value read back is refused naming its key."""
    from distgan.models import discriminator_from_spec, generator_from_spec

    g = dict(arch="srgan", channels=1, height=28, width=28, num_classes=0, conditional=False, scale=2, ngf=8,
             blocks=1)
    assert isinstance(generator_from_spec(g), SRResNet)
    d = dict(arch="srgan", channels=1, height=28, width=28, num_classes=0, conditional=False, ndf=4, dense=8)
    assert isinstance(discriminator_from_spec(d), SRDiscriminator)
    with pytest.raises(ValueError, match="model.scale"):
        generator_from_spec({**g, "scale": 3})
    with pytest.raises(ValueError, match="model.blocks"):
        generator_from_spec({**g, "blocks": 0})
