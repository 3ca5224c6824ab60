"""GAN losses: values on hand-made logits, label smoothing, the gradient penalty, precision, a training smoke test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from distgan.losses import LOSS_KINDS, discriminator_loss, generator_loss, gradient_penalty, r1_penalty
from distgan.models import ModelConfig, build_discriminator, build_generator


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


def test_unknown_kind_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="bce, hinge, wgan-gp, lsgan"):
        discriminator_loss("wgan", t(0.0), t(0.0))
    with pytest.raises(ValueError, match="bce, hinge, wgan-gp, lsgan"):
        generator_loss("softplus", t(0.0))


def test_bce_values() -> None:
    # A perfect, confident D has (almost) no loss; a D that knows nothing pays log 2 per term.
    assert discriminator_loss("bce", t(20.0, 30.0), t(-20.0, -30.0)).item() == pytest.approx(0.0, abs=1e-8)
    assert discriminator_loss("bce", t(0.0, 0.0), t(0.0, 0.0)).item() == pytest.approx(2 * math.log(2))
    assert generator_loss("bce", t(0.0)).item() == pytest.approx(math.log(2))
    # Non-saturating: when D confidently rejects the fakes, G's loss and gradient stay large.
    fake = t(-10.0).requires_grad_(True)
    loss = generator_loss("bce", fake)
    loss.backward()
    assert loss.item() == pytest.approx(10.0, abs=1e-4) and fake.grad.item() == pytest.approx(-1.0, abs=1e-4)


def test_hinge_values() -> None:
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5; fake: relu(1 - 2) = 0, relu(1 + 0) = 1.
    assert discriminator_loss("hinge", t(2.0, 0.5), t(-2.0, 0.0)).item() == pytest.approx(0.25 + 0.5)
    # Beyond the margins nothing is left to learn.
    assert discriminator_loss("hinge", t(1.0, 5.0), t(-1.0, -5.0)).item() == 0.0
    assert generator_loss("hinge", t(-1.0, 3.0)).item() == pytest.approx(-1.0)


def test_wgan_values() -> None:
    assert discriminator_loss("wgan-gp", t(3.0, 1.0), t(-1.0, 0.0)).item() == pytest.approx(-0.5 - 2.0)
    assert generator_loss("wgan-gp", t(-1.0, 0.0)).item() == pytest.approx(0.5)


def test_lsgan_values() -> None:
    assert discriminator_loss("lsgan", t(1.0, 1.0), t(0.0, 0.0)).item() == 0.0
    # real: ((0 - 1)^2 + (3 - 1)^2) / 2 / 2 = 1.25; fake: (1 + 1) / 2 / 2 = 0.5
    assert discriminator_loss("lsgan", t(0.0, 3.0), t(1.0, -1.0)).item() == pytest.approx(1.75)
    assert generator_loss("lsgan", t(1.0, 3.0)).item() == pytest.approx(1.0)
    # The real target follows real_label.
    assert discriminator_loss("lsgan", t(0.9), t(0.0), real_label=0.9).item() == pytest.approx(0.0, abs=1e-7)


def test_label_smoothing_penalises_overconfidence_on_reals() -> None:
    fake = t(-5.0)
    sharp, smooth = t(8.0), t(8.0)
    assert discriminator_loss("bce", smooth, fake, real_label=0.9) > discriminator_loss("bce", sharp, fake)
    # With target 0.9 the real term is minimal at logit(0.9) = log 9: beyond it D is pushed back down.
    for logit, grad_sign in ((math.log(9.0), 0.0), (5.0, 1.0), (1.0, -1.0)):
        real = t(logit).requires_grad_(True)
        discriminator_loss("bce", real, fake, real_label=0.9).backward()
        if grad_sign == 0.0:
            assert real.grad.item() == pytest.approx(0.0, abs=1e-6)
        else:
            assert math.copysign(1.0, real.grad.item()) == grad_sign
    # Only the real side is smoothed: the fake term is the same.
    assert discriminator_loss("bce", t(100.0), t(0.0), real_label=0.9) - discriminator_loss(
        "bce", t(100.0), t(-100.0), real_label=0.9
    ) == pytest.approx(math.log(2))


def test_real_label_errors() -> None:
    with pytest.raises(ValueError, match="no effect on 'hinge'"):
        discriminator_loss("hinge", t(0.0), t(0.0), real_label=0.9)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        discriminator_loss("bce", t(0.0), t(0.0), real_label=1.5)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(weight.numel(), 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight.flatten()[None])
        self.input_dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.input_dtypes.append(x.dtype)
        logits = self.linear(x.flatten(1)).flatten()
        return logits if labels is None else logits + labels.float()


def unit_direction(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return w / w.norm()


def test_gradient_penalty_of_linear_critics() -> None:
    real, fake = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    w = unit_direction((3, 4, 4))
    assert gradient_penalty(LinearCritic(w), real, fake).item() == pytest.approx(0.0, abs=1e-6)
    critic = LinearCritic(2 * w)
    penalty = gradient_penalty(critic, real, fake, labels=torch.arange(6))
    assert penalty.item() == pytest.approx(1.0, abs=1e-5)
    # create_graph=True: the penalty trains D. d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = w here.
    penalty.backward()
    torch.testing.assert_close(critic.linear.weight.grad.flatten(), (2 * w).flatten(), atol=1e-5, rtol=1e-5)


def test_gradient_penalty_runs_in_float32_under_autocast() -> None:
    critic = LinearCritic(2 * unit_direction((1, 8, 8)))
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = gradient_penalty(critic, real.bfloat16(), fake.bfloat16())
    assert critic.input_dtypes == [torch.float32]
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(1.0, abs=1e-5)  # bf16 would be off in the third digit


def test_gradient_penalty_on_a_real_discriminator() -> None:
    cfg = ModelConfig(arch="dcgan28", ndf=8, conditional=True, d_batchnorm=False)
    D = build_discriminator(cfg, 1, 28, 28, 10)
    real = torch.rand(4, 1, 28, 28).mul(2).sub(1).contiguous(memory_format=torch.channels_last)
    penalty = gradient_penalty(D, real, torch.randn(4, 1, 28, 28).tanh(), labels=torch.arange(4))
    penalty.backward()
    assert penalty.ndim == 0 and torch.isfinite(penalty)
    # Biases do not move grad_x D (LeakyReLU is piecewise linear), so only the weights are trained.
    weights = [p for name, p in D.named_parameters() if not name.endswith("bias")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in weights)


class SmoothD(nn.Module):
    """A tiny conv D with smooth activations (tanh, softplus), so central differences converge."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(2, 3, 3, 2, 1), nn.Tanh(), nn.Conv2d(3, 4, 3, 2, 1), nn.Softplus(),
                                 nn.Flatten(), nn.Linear(4 * 2 * 2, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).flatten()


def test_r1_matches_finite_differences_of_d() -> None:
    D = SmoothD().double()
    real = torch.rand(3, 2, 5, 5, dtype=torch.float64) * 2 - 1
    gamma, h = 4.0, 1e-6
    penalty = r1_penalty(D, real, gamma=gamma)
    # grad_x D per image, one pixel at a time: (D(x + h e) - D(x - h e)) / 2h.
    grads = torch.zeros_like(real)
    with torch.no_grad():
        for index in range(real[0].numel()):
            step = torch.zeros_like(real).view(3, -1)
            step[:, index] = h
            step = step.view_as(real)
            grads.view(3, -1)[:, index] = (D(real + step) - D(real - step)) / (2 * h)
    expected = gamma / 2 * grads.flatten(1).square().sum(1).mean()
    assert penalty.dtype == torch.float64
    torch.testing.assert_close(penalty, expected, rtol=1e-7, atol=0)


def test_r1_trains_d_with_the_gradient_of_the_penalty() -> None:
    """The penalty keeps its graph: its gradient in D's weights matches finite differences of its value."""
    D = SmoothD().double()
    real = torch.rand(3, 2, 5, 5, dtype=torch.float64) * 2 - 1
    r1_penalty(D, real, gamma=10.0).backward()
    h = 1e-6
    for name, param in D.named_parameters():
        numeric = torch.zeros_like(param)
        for i in range(param.numel()):
            with torch.no_grad():
                param.view(-1)[i] += h
            up = r1_penalty(D, real, gamma=10.0).item()
            with torch.no_grad():
                param.view(-1)[i] -= 2 * h
            down = r1_penalty(D, real, gamma=10.0).item()
            with torch.no_grad():
                param.view(-1)[i] += h
            numeric.view(-1)[i] = (up - down) / (2 * h)
        # The last bias shifts D but not its slope: no gradient, and none numerically either.
        grad = torch.zeros_like(param) if param.grad is None else param.grad
        torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7, msg=name)
    assert D.net[5].bias.grad is None and D.net[0].weight.grad.abs().sum() > 0


def test_r1_of_a_linear_critic_and_under_autocast() -> None:
    w = 3 * unit_direction((1, 8, 8))
    critic = LinearCritic(w)
    real = torch.rand(4, 1, 8, 8) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = r1_penalty(critic, real.bfloat16(), labels=torch.arange(4), gamma=10.0)
    assert critic.input_dtypes == [torch.float32] and penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(10.0 / 2 * 9.0, rel=1e-5)  # ||grad|| = ||w|| = 3 for every image


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_losses_backward_under_bf16_autocast(kind: str) -> None:
    cfg = ModelConfig(arch="dcgan28", nz=16, ngf=8, ndf=8)
    G, D = build_generator(cfg, 1, 28, 28, 0), build_discriminator(cfg, 1, 28, 28, 0)
    real = torch.rand(4, 1, 28, 28).mul(2).sub(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(torch.randn(4, cfg.nz))
        d_loss = discriminator_loss(kind, D(real), D(fake.detach()), real_label=0.9 if kind == "bce" else 1.0)
        g_loss = generator_loss(kind, D(fake))
    assert d_loss.dtype == g_loss.dtype == torch.float32
    d_loss.backward()
    g_loss.backward()
    for p in list(G.parameters()) + list(D.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_dcgan28_training_smoke() -> None:
    """30 alternating steps on one fixed batch: nothing blows up and D learns something."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dcgan28", nz=16, ngf=8, ndf=8)
    G, D = build_generator(cfg, 1, 28, 28, 0), build_discriminator(cfg, 1, 28, 28, 0)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(16, 1, 28, 28).mul(2).sub(1)
    d_losses, g_losses = [], []
    for _ in range(30):
        fake = G(torch.randn(16, cfg.nz))
        d_loss = discriminator_loss("bce", D(real), D(fake.detach()), real_label=0.9)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = generator_loss("bce", D(fake))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_losses.append(d_loss.item())
        g_losses.append(g_loss.item())
    assert all(math.isfinite(v) for v in d_losses + g_losses)
    assert abs(d_losses[-1] - d_losses[0]) > 0.1
