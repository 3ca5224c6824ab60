"""StyleGAN2's networks and regularisers: demodulation, equalised lr, truncation, style mixing, and the
path-length and R1 penalties against finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from distgan.losses import path_length_penalty, path_lengths, r1_penalty
from distgan.models.stylegan2 import (StyleGAN2Discriminator, StyleGAN2Generator, StyleGAN2Spec,
                                      build_stylegan2_generator)
from distgan.models.stylegan2_layers import EqualLinear, modulated_conv2d


def tiny_spec(size: int = 8, channels: int = 1, conditional: bool = False, **overrides) -> StyleGAN2Spec:
    fields = dict(arch="stylegan2", nz=4, w_dim=4, mapping_layers=2, mapping_lr=0.01, channel_base=32, channel_max=8,
                  mbstd_group=2, channels=channels, height=size, width=size, num_classes=3 if conditional else 0,
                  conditional=conditional)
    return StyleGAN2Spec(**{**fields, **overrides})


def trained_w_avg(G: StyleGAN2Generator) -> None:
    """Move w_avg away from zero the way training does (train-mode forwards), then switch to eval."""
    G.train()
    with torch.no_grad():
        for _ in range(20):
            G(torch.randn(16, G.spec.nz))
    G.eval()


def test_demodulation_gives_unit_output_variance():
    torch.manual_seed(0)
    B, I, O = 8, 32, 16
    x = torch.randn(B, I, 24, 24)
    weight = torch.randn(O, I, 3, 3) * torch.rand(O, 1, 1, 1) * 3  # very different scales per output map
    styles = torch.rand(B, I) * 2 + 0.1
    y = modulated_conv2d(x, weight, styles)[:, :, 1:-1, 1:-1]  # interior: the border sees zero padding
    variances = y.var(dim=(2, 3))  # per image and output map
    assert abs(variances.mean().item() - 1.0) < 0.03
    assert (variances - 1.0).abs().max().item() < 0.2
    plain = modulated_conv2d(x, weight, styles, demodulate=False)[:, :, 1:-1, 1:-1].var(dim=(2, 3))
    assert (plain - 1.0).abs().max().item() > 5  # without demodulation the scales come through


def test_mapping_lr_multiplier_is_applied():
    """Adam's first step moves every stored weight by lr; the effective weight moves lr x lr_mult / sqrt(fan_in)."""
    torch.manual_seed(0)
    fan_in, lr = 64, 1e-3
    moves, inits = {}, {}
    for lr_mult in (1.0, 0.01):
        layer = EqualLinear(fan_in, 32, lr_multiplier=lr_mult)
        inits[lr_mult] = (layer.weight * layer.weight_gain).std().item()
        before = (layer.weight * layer.weight_gain).detach().clone()
        opt = torch.optim.Adam(layer.parameters(), lr=lr)
        layer(torch.randn(16, fan_in)).square().sum().backward()
        opt.step()
        moves[lr_mult] = ((layer.weight * layer.weight_gain).detach() - before).abs()
    for lr_mult, init_std in inits.items():  # He init of the effective weight whatever the multiplier
        assert init_std == pytest.approx(1 / math.sqrt(fan_in), rel=0.1)
    assert moves[1.0].mean().item() == pytest.approx(lr / math.sqrt(fan_in), rel=1e-3)
    # (the stored weights are ~100x larger here: float32 rounding of them is ~1e-3 of the step)
    assert moves[0.01].mean().item() == pytest.approx(0.01 * lr / math.sqrt(fan_in), rel=1e-2)
    mapping = StyleGAN2Generator(tiny_spec(mapping_lr=0.01)).mapping
    assert all(layer.weight_gain == pytest.approx(0.01 / math.sqrt(layer.weight.shape[1])) for layer in mapping.layers)


def test_w_avg_tracks_the_mapping_output_in_training_only():
    torch.manual_seed(0)
    G = StyleGAN2Generator(tiny_spec())
    z = torch.randn(16, 4)
    with torch.no_grad():
        G.eval()
        G(z)
        assert torch.equal(G.mapping.w_avg, torch.zeros(4))
        G.train()
        G(z)
        expected = G.mapping(z, None).mean(dim=0) * (1 - 0.995)
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-7)


@pytest.mark.parametrize("conditional", [False, True])
def test_psi_zero_gives_the_w_avg_image_for_every_z(conditional):
    torch.manual_seed(0)
    G = build_stylegan2_generator(tiny_spec(conditional=conditional))
    trained_w_avg(G) if not conditional else None
    if conditional:
        G.mapping.w_avg.normal_()
    labels = torch.zeros(6, dtype=torch.int64) if conditional else None
    with torch.no_grad():
        images = G(torch.randn(6, 4), labels=labels, psi=torch.zeros(6))
        w_avg_image = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1))
        half = G(torch.randn(6, 4), labels=labels, psi=torch.full((6,), 0.5))
    assert torch.allclose(images, w_avg_image.expand_as(images), atol=1e-6)
    assert (half - w_avg_image).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # psi > 0 keeps each z's own image


def test_style_mixing_bounds():
    torch.manual_seed(0)
    G = StyleGAN2Generator(tiny_spec(size=16)).eval()
    z, z2, n = torch.randn(5, 4), torch.randn(5, 4), G.num_ws
    with torch.no_grad():
        own, other = G(z), G(z2)
        beyond = G(z, z2=z2, mix_layer=torch.full((5,), n))
        far_beyond = G(z, z2=z2, mix_layer=torch.full((5,), 10 * n))
        at_zero = G(z, z2=z2, mix_layer=torch.zeros(5, dtype=torch.int64))
        middle = G(z, z2=z2, mix_layer=torch.full((5,), n // 2))
        per_image = G(z, z2=z2, mix_layer=torch.tensor([0, n, 0, n, 0]))
    assert torch.equal(beyond, own) and torch.equal(far_beyond, own)
    assert torch.equal(at_zero, other)
    assert (middle - own).abs().max() > 1e-3 and (middle - other).abs().max() > 1e-3
    assert torch.equal(per_image[0::2], other[0::2]) and torch.equal(per_image[1::2], own[1::2])


def test_style_mixing_regulariser_in_training():
    torch.manual_seed(0)
    always = StyleGAN2Generator(tiny_spec(size=16), style_mixing=1.0).train()
    never = StyleGAN2Generator(tiny_spec(size=16), style_mixing=0.0).train()
    z = torch.randn(4, 4)
    for _ in range(5):
        ws = always.ws(z)
        differs = (ws != ws[:, :1]).any(dim=2).all(dim=0)  # layers whose styles are not layer 0's
        cutoff = int(differs.int().argmax())
        assert 1 <= cutoff < always.num_ws and differs[cutoff:].all() and not differs[:cutoff].any()
    ws = never.ws(z)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))
    with pytest.raises(ValueError, match="style_mixing"):
        StyleGAN2Generator(tiny_spec(), style_mixing=1.5)


def test_training_noise_is_random_and_eval_noise_is_the_stored_constant():
    torch.manual_seed(0)
    G = StyleGAN2Generator(tiny_spec())
    for layer in G.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    z = torch.randn(2, 4)
    with torch.no_grad():
        G.train()
        a, b = G(z, psi=torch.ones(2)), G(z, psi=torch.ones(2))
        G.eval()
        c, d = G(z), G(z)
    assert not torch.equal(a, b) and torch.equal(c, d)


def test_shapes_sizes_and_labels():
    torch.manual_seed(0)
    spec = tiny_spec(size=28, channels=3, conditional=True, channel_base=64)
    assert spec.resolution == 32 and spec.num_ws == 8
    G, D = build_stylegan2_generator(spec), StyleGAN2Discriminator(spec)
    labels = torch.tensor([0, 1, 2, 1])
    images = G(torch.randn(4, 4), labels)
    assert images.shape == (4, 3, 28, 28)
    logits = D(images, labels)
    assert logits.shape == (4,) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match="conditional"):
        G(torch.randn(4, 4))
    with pytest.raises(ValueError, match="conditional"):
        D(images)
    with pytest.raises(ValueError, match="square images"):
        tiny_spec(size=300)
    with pytest.raises(ValueError, match="channel_base"):
        tiny_spec(size=64, channel_base=32)
    assert StyleGAN2Spec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="'nz' must be int"):
        StyleGAN2Spec.from_dict({**spec.to_dict(), "nz": "4"})


def test_minibatch_std_groups_never_mix_real_and_fake():
    """D scores cat(real, fake): changing the fakes must not change any real image's logit."""
    torch.manual_seed(0)
    D = StyleGAN2Discriminator(tiny_spec(mbstd_group=4))
    real = torch.randn(8, 1, 8, 8)
    a = D(torch.cat([real, torch.randn(8, 1, 8, 8)]))
    b = D(torch.cat([real, torch.randn(8, 1, 8, 8)]))
    assert torch.equal(a[:8], b[:8]) and not torch.equal(a[8:], b[8:])


def _central_difference(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat, g = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        keep = flat[i].item()
        flat[i] = keep + eps
        up = f(x).item()
        flat[i] = keep - eps
        down = f(x).item()
        flat[i] = keep
        g[i] = (up - down) / (2 * eps)
    return grad


def test_path_length_penalty_matches_finite_differences():
    torch.manual_seed(0)
    G = StyleGAN2Generator(tiny_spec()).double().eval()
    ws = G.ws(torch.randn(2, 4, dtype=torch.float64)).detach().clone().requires_grad_(True)
    images = G.synthesis(ws)
    noise = torch.randn_like(images) / 8
    lengths = path_lengths(images, ws, noise)
    with torch.no_grad():
        fd = _central_difference(lambda w: (G.synthesis(w) * noise).sum(), ws.detach().clone())
    assert torch.allclose(lengths, fd.square().sum(dim=2).mean(dim=1).sqrt(), rtol=1e-6)
    # The penalty's gradient w.r.t. a weight (through the double backward) against finite differences.
    target, mean = G.blocks[1].conv1.weight, torch.tensor(0.3, dtype=torch.float64)

    def penalty(weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target.copy_(weight)
        w = ws.detach().requires_grad_(True)
        return (path_lengths(G.synthesis(w), w, noise) - mean).square().mean()

    (analytic,) = torch.autograd.grad(penalty(target.detach().clone()), target)
    with torch.enable_grad():
        fd = _central_difference(penalty, target.detach().clone())
    assert torch.allclose(analytic, fd, rtol=1e-5, atol=1e-8)


def test_path_length_penalty_running_mean():
    torch.manual_seed(0)
    G = StyleGAN2Generator(tiny_spec()).train()
    images, ws = G(torch.randn(4, 4), return_ws=True)
    pl_mean = torch.zeros(())
    penalty = path_length_penalty(images, ws, pl_mean, decay=0.01)
    assert pl_mean.item() > 0 and penalty.item() > 0
    penalty.backward()
    assert G.mapping.layers[0].weight.grad is not None


def test_r1_matches_finite_differences():
    torch.manual_seed(0)
    D = StyleGAN2Discriminator(tiny_spec()).double()
    real = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fd = _central_difference(lambda x: D(x).sum(), real.clone())
    gamma = 10.0
    expected = 0.5 * gamma * fd.flatten(1).square().sum(dim=1).mean()
    assert r1_penalty(D, real, gamma=gamma).item() == pytest.approx(expected.item(), rel=1e-6)
    target = D.conv.weight

    def penalty(weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target.copy_(weight)
        return r1_penalty(D, real, gamma=gamma)

    (analytic,) = torch.autograd.grad(penalty(target.detach().clone()), target)
    with torch.enable_grad():
        fd = _central_difference(penalty, target.detach().clone())
    assert torch.allclose(analytic, fd, rtol=1e-5, atol=1e-8)
