"""Generators and discriminators: shapes, init, conditioning, spec round trip, ONNX, precision."""

from __future__ import annotations

import io
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from distgan.models import (
    ModelConfig,
    build_discriminator,
    build_generator,
    generator_from_spec,
)

# A shape each arch accepts; the mlp one is deliberately neither 28x28 nor 64x64.
SHAPES = {"mlp": (3, 16, 16), "dcgan28": (1, 28, 28), "dcgan64": (3, 64, 64)}
ARCHS = tuple(SHAPES)
NUM_CLASSES = 10


def small_config(arch: str, **overrides) -> ModelConfig:
    """Narrow models so the whole file runs in seconds on two CPU cores."""
    return ModelConfig(arch=arch, nz=16, ngf=8, ndf=8, mlp_hidden=32, **overrides)


def build_pair(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    shape = SHAPES[cfg.arch]
    return build_generator(cfg, *shape, NUM_CLASSES), build_discriminator(cfg, *shape, NUM_CLASSES)


def sample_inputs(cfg: ModelConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, cfg.nz, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen) if cfg.conditional else None
    return z, labels


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Weights far from the tiny DCGAN init, so outputs are O(1) and comparisons mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.mark.parametrize(
    "arch,conditional,spectral_norm", list(itertools.product(ARCHS, (False, True), (False, True)))
)
def test_every_variant_builds_and_runs(arch: str, conditional: bool, spectral_norm: bool) -> None:
    cfg = small_config(arch, conditional=conditional, spectral_norm=spectral_norm, d_dropout=0.2)
    G, D = build_pair(cfg)
    z, labels = sample_inputs(cfg, batch=4)
    images = G(z, labels)
    assert images.shape == (4, *SHAPES[arch])
    assert images.min() >= -1.0 and images.max() <= 1.0
    logits = D(images, labels)
    assert logits.shape == (4,) and logits.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())


def test_dcgan64_matches_the_paper_stack_parameter_count() -> None:
    """The reference PyTorch DCGAN has 3,576,704 (G) and 2,765,568 (D) weights; we add biases
    where no BatchNorm follows: G's last layer (3), D's first (64) and last (1)."""
    cfg = ModelConfig(arch="dcgan64")
    assert param_count(build_generator(cfg, 3, 64, 64, 0)) == 3_576_704 + 3
    assert param_count(build_discriminator(cfg, 3, 64, 64, 0)) == 2_765_568 + 64 + 1


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_are_sane(arch: str) -> None:
    """Default widths give models of a few hundred thousand to a few million parameters."""
    cfg = ModelConfig(arch=arch)
    shape = SHAPES[arch]
    for model in (build_generator(cfg, *shape, 0), build_discriminator(cfg, *shape, 0)):
        assert 5e4 < param_count(model) < 5e6
    # Conditioning G turns each BatchNorm's scale and shift into one per class, nothing else.
    plain_g = build_generator(cfg, *shape, 0)
    cond_g = build_generator(ModelConfig(arch=arch, conditional=True), *shape, 10)
    bn_channels = sum(m.num_features for m in plain_g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert param_count(cond_g) - param_count(plain_g) == 2 * bn_channels * (10 - 1)


@pytest.mark.parametrize("spectral_norm", (False, True))
def test_dcgan_init(spectral_norm: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dcgan64", spectral_norm=spectral_norm)
    G, D = build_pair(cfg)
    for module in itertools.chain(G.modules(), D.modules()):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            # Spectral norm rescales what forward sees; the trained parameter keeps the init.
            weight = module.parametrizations.weight.original if hasattr(module, "parametrizations") else module.weight
            if weight.numel() >= 4096:  # enough samples for a tight estimate
                assert abs(weight.std().item() - 0.02) < 0.002
                assert abs(weight.mean().item()) < 0.002
        if isinstance(module, nn.BatchNorm2d):
            assert abs(module.weight.mean().item() - 1.0) < 0.01
            assert torch.all(module.bias == 0)


def test_spectral_norm_replaces_batchnorm_in_d() -> None:
    _, D = build_pair(small_config("dcgan64", spectral_norm=True, d_batchnorm=True, conditional=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    wrapped = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(wrapped) == 6 and all(hasattr(m, "parametrizations") for m in wrapped)
    _, plain = build_pair(small_config("dcgan64"))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) == 3  # not on the first layer


def test_dropout_only_in_d_and_only_when_asked() -> None:
    G, D = build_pair(small_config("dcgan28", d_dropout=0.3))
    assert sum(isinstance(m, nn.Dropout) for m in D.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in G.modules())
    _, no_dropout = build_pair(small_config("dcgan28"))
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_generator_follows_the_label(arch: str) -> None:
    cfg = small_config(arch, conditional=True)
    G = build_generator(cfg, *SHAPES[arch], NUM_CLASSES).eval()
    z = torch.randn(1, cfg.nz).expand(NUM_CLASSES, -1)
    with torch.no_grad():
        images = G(z, torch.arange(NUM_CLASSES))
        again = G(z, torch.arange(NUM_CLASSES))
    assert torch.equal(images, again)
    # Same z, ten labels: ten different images.
    flat = images.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(NUM_CLASSES)
    assert distances.min() > 0


def _within_and_overall_spread(G: nn.Module, classes: int, nz: int) -> tuple[float, float]:
    """Mean pairwise L2 of G's images within each class (averaged) and over all classes, eval mode."""
    gen = torch.Generator().manual_seed(1)
    z, labels = torch.randn(32 * classes, nz, generator=gen), torch.arange(32 * classes) % classes
    with torch.no_grad():
        images = G.eval()(z, labels).flatten(1)
    G.train()

    def spread(x: torch.Tensor) -> float:
        return float(torch.cdist(x, x).sum() / (len(x) * (len(x) - 1)))

    return sum(spread(images[labels == c]) for c in range(classes)) / classes, spread(images)


def test_conditional_generator_keeps_z_under_a_per_class_push() -> None:
    # The conditional-collapse mechanism, without a D: in the collapsed runs D's gradient for the
    # fakes of one class was nearly the same whatever z (mean cosine 0.9), so G is pushed towards
    # one image per class. With the label concatenated to z, G's BatchNorms restore a batch
    # variance that the label alone can supply, and 100 steps of that push left the images of a
    # class 0.17 as far apart as images overall (z dropped). With conditional BatchNorm the
    # normalised features come from z, and z's spread survives (0.99).
    classes, cfg = 4, ModelConfig(arch="dcgan28", nz=16, ngf=16, conditional=True)
    torch.manual_seed(0)
    G = build_generator(cfg, 1, 28, 28, classes)
    push = torch.randn(classes, 1, 28, 28)  # per class, the same for every z
    optimizer = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(100):
        z, labels = torch.randn(64, cfg.nz), torch.randint(0, classes, (64,))
        loss = -(G(z, labels) * push[labels]).flatten(1).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    within, overall = _within_and_overall_spread(G, classes, cfg.nz)
    assert within > 0.5 * overall, f"within-class spread {within:.3f} vs overall {overall:.3f}: G dropped z"


class _ShuffleSpace(nn.Module):
    """Wraps D's feature stack and permutes the H*W positions of its output (same permutation every call)."""

    def __init__(self, features: nn.Module, perm: torch.Tensor):
        super().__init__()
        self.features, self.perm = features, perm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return h.flatten(2)[:, :, self.perm].reshape(h.shape)


@pytest.mark.parametrize("arch,spectral_norm", [(a, sn) for a in ("dcgan28", "dcgan64") for sn in (False, True)])
def test_projection_sees_pooled_channels_not_positions(arch: str, spectral_norm: bool) -> None:
    # Miyato & Koyama 2018: the class term is <embed(y), phi(x)> with phi(x) the
    # features summed over H, W. A per-position embedding (over the flattened map)
    # is a per-class spatial template that G satisfies with one prototype per class.
    cfg = small_config(arch, conditional=True, spectral_norm=spectral_norm)
    _, D = build_pair(cfg)
    randomize(D)
    D.eval()
    x = torch.rand(4, *SHAPES[arch], generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        channels = D.features(x).shape[1]
    assert D.projection.weight.shape == (NUM_CLASSES, channels)

    def class_margins() -> torch.Tensor:
        # logit(x, y) - logit(x, 0): the unconditional head cancels, the class term remains.
        with torch.no_grad():
            logits = torch.stack([D(x, torch.full((4,), y)) for y in range(NUM_CLASSES)])
        return logits[1:] - logits[0]

    margins = class_margins()
    assert margins.abs().mean() > 0.1  # the class term is not negligible, so the comparison means something
    height = width = 7 if arch == "dcgan28" else 4
    perm = torch.randperm(height * width, generator=torch.Generator().manual_seed(2))
    D.features = _ShuffleSpace(D.features, perm)
    torch.testing.assert_close(class_margins(), margins, atol=1e-4, rtol=1e-4)


def test_label_mismatches_are_errors() -> None:
    cond = small_config("dcgan28", conditional=True)
    G, D = build_pair(cond)
    z, labels = sample_inputs(cond, batch=2)
    with pytest.raises(ValueError, match="conditional"):
        G(z)
    with pytest.raises(ValueError, match="conditional"):
        D(torch.zeros(2, 1, 28, 28))
    plain = small_config("dcgan28")
    G, D = build_pair(plain)
    with pytest.raises(ValueError, match="unconditional"):
        G(z, labels)
    with pytest.raises(ValueError, match="unconditional"):
        D(torch.zeros(2, 1, 28, 28), labels)


def test_config_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError) as err:
        build_generator(ModelConfig(arch="dcgan28"), 3, 64, 64, 0)
    assert "28x28" in str(err.value) and "64x64" in str(err.value) and "dcgan64" in str(err.value)
    with pytest.raises(ValueError) as err:
        build_discriminator(ModelConfig(arch="dcgan64"), 1, 28, 28, 0)
    assert "64x64" in str(err.value) and "28x28" in str(err.value) and "dcgan28" in str(err.value)
    with pytest.raises(ValueError, match="use arch 'dcgan' for 32x32"):
        build_generator(ModelConfig(arch="dcgan28"), 3, 32, 32, 0)
    with pytest.raises(ValueError, match="use arch 'mlp' for 30x30"):
        build_generator(ModelConfig(arch="dcgan28"), 3, 30, 30, 0)
    with pytest.raises(ValueError, match="unknown model.arch 'nosuch'; valid: mlp, dcgan, dcgan28, dcgan64"):
        build_generator(ModelConfig(arch="nosuch"), 1, 28, 28, 0)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        build_discriminator(ModelConfig(conditional=True), 1, 28, 28, 1)
    with pytest.raises(ValueError, match="d_dropout"):
        build_discriminator(ModelConfig(d_dropout=1.0), 1, 28, 28, 0)


@pytest.mark.parametrize("arch,conditional", [("mlp", False), ("dcgan28", True), ("dcgan64", False)])
def test_spec_and_safetensors_round_trip(arch: str, conditional: bool, tmp_path) -> None:
    cfg = small_config(arch, conditional=conditional)
    G = build_generator(cfg, *SHAPES[arch], NUM_CLASSES)
    randomize(G)
    G.eval()
    path = tmp_path / "generator.safetensors"
    spec_json = json.dumps(G.spec.to_dict())
    save_file(G.state_dict(), path, metadata={"spec": spec_json})

    loaded = generator_from_spec(json.loads(spec_json))
    loaded.load_state_dict(load_file(path))
    loaded.eval()
    assert loaded.spec == G.spec
    z, labels = sample_inputs(cfg, batch=3)
    with torch.no_grad():
        assert torch.equal(loaded(z, labels), G(z, labels))


def test_bad_specs_name_the_key() -> None:
    spec = build_generator(small_config("dcgan28"), 1, 28, 28, 10).spec.to_dict()
    with pytest.raises(ValueError, match="missing key 'nz'"):
        generator_from_spec({k: v for k, v in spec.items() if k != "nz"})
    with pytest.raises(ValueError, match="unknown key 'ndf'"):
        generator_from_spec({**spec, "ndf": 64})
    with pytest.raises(ValueError, match="'ngf' must be int"):
        generator_from_spec({**spec, "ngf": "64"})
    with pytest.raises(ValueError, match="'conditional' must be bool"):
        generator_from_spec({**spec, "conditional": 1})
    with pytest.raises(ValueError, match="64x64"):
        generator_from_spec({**spec, "height": 64, "width": 64})


@pytest.mark.parametrize("arch,conditional", [("mlp", True), ("dcgan28", False), ("dcgan64", True)])
def test_onnx_export_matches_torch(arch: str, conditional: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    cfg = small_config(arch, conditional=conditional)
    G = build_generator(cfg, *SHAPES[arch], NUM_CLASSES)
    randomize(G)
    G.eval()
    z, labels = sample_inputs(cfg, batch=2)
    args = (z, labels) if conditional else (z,)
    input_names = ["z", "labels"][: len(args)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        torch.onnx.export(
            G, args, buffer, dynamo=False, opset_version=17,
            input_names=input_names, output_names=["images"],
            dynamic_axes={name: {0: "batch"} for name in input_names + ["images"]},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        z, labels = sample_inputs(cfg, batch=batch, seed=batch)
        with torch.no_grad():
            expected = G(z, labels).numpy()
        feeds = {"z": z.numpy()} | ({"labels": labels.numpy()} if conditional else {})
        (actual,) = session.run(None, feeds)
        assert actual.shape == (batch, *SHAPES[arch])
        assert np.abs(expected).mean() > 0.1  # a real comparison, not two arrays of near-zeros
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ("dcgan28", "dcgan64"))
def test_channels_last_gives_the_same_results(arch: str) -> None:
    cfg = small_config(arch, conditional=True)
    G, D = build_pair(cfg)
    randomize(G)
    G.eval()
    D.eval()
    z, labels = sample_inputs(cfg, batch=3)
    with torch.no_grad():
        images = G(z, labels)
        logits = D(images, labels)
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
        images_cl = G(z, labels)
        logits_cl = D(images.contiguous(memory_format=torch.channels_last), labels)
    torch.testing.assert_close(images_cl, images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_cl, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,spectral_norm", [(a, sn) for a in ARCHS for sn in (False, True)])
def test_bf16_autocast_forward_and_backward(arch: str, spectral_norm: bool) -> None:
    cfg = small_config(arch, conditional=True, spectral_norm=spectral_norm, d_dropout=0.1)
    G, D = build_pair(cfg)
    z, labels = sample_inputs(cfg, batch=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = G(z, labels)
        logits = D(images.contiguous(memory_format=torch.channels_last), labels)
    assert images.dtype == torch.bfloat16 and logits.dtype == torch.float32
    logits.mean().backward()
    grads = [p.grad for p in itertools.chain(G.parameters(), D.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
