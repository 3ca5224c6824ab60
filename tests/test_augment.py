"""Differentiable augmentation: what each op does, shape/dtype/range/layout kept, p = 0 exact, gradients to G."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from distgan import augment as aug
from distgan.augment import POLICIES, augment, parse_policy

OPS = {"brightness": aug.brightness, "saturation": aug.saturation, "contrast": aug.contrast,
       "translation": aug.translation, "cutout": aug.cutout}
EVERY_POLICY = ["color", "translation", "cutout", "color,translation,cutout"]


def images(n: int = 8, c: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1] that reach both ends, as G's tanh and real data do."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, side, side, generator=g) * 2 - 1
    x[:, :, 0, 0], x[:, :, 0, 1] = 1.0, -1.0
    return x


def p(value: float) -> torch.Tensor:
    return torch.tensor(value)


def test_policy_names_are_checked_and_put_in_order():
    assert parse_policy("cutout, color") == ("color", "cutout")
    assert parse_policy("") == () and parse_policy(" ") == ()
    with pytest.raises(ValueError, match="'colour'.*did you mean 'color'"):
        parse_policy("colour,cutout")
    with pytest.raises(ValueError, match="twice"):
        parse_policy("cutout,cutout")


def test_p_must_be_a_device_tensor():
    with pytest.raises(ValueError, match="0-dim tensor"):
        augment(images(), "color", 0.5)  # a float would be baked into a captured graph
    with pytest.raises(ValueError, match="0-dim tensor"):
        augment(images(), "color", torch.tensor([0.5]))


@pytest.mark.parametrize("policy", EVERY_POLICY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [1, 3])
def test_p0_is_the_identity_bit_for_bit(policy, dtype, channels):
    x = images(c=channels).to(dtype)
    x[0, 0, 1, 1] = 1.5  # even values a clamp would change come back untouched
    torch.manual_seed(1)
    assert torch.equal(augment(x, policy, p(0.0)), x)
    assert torch.equal(augment(x.contiguous(memory_format=torch.channels_last), policy, p(0.0)), x)


def test_empty_policy_returns_the_input():
    x = images()
    assert augment(x, "", p(1.0)) is x


@pytest.mark.parametrize("policy", EVERY_POLICY)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_layout_are_kept(policy, channels):
    for x in (images(c=channels), torch.full((4, channels, 16, 16), 1.0), torch.full((4, channels, 16, 16), -1.0)):
        for layout in (torch.contiguous_format, torch.channels_last):
            x_in = x.contiguous(memory_format=layout)
            y = augment(x_in, policy, p(1.0))
            assert y.shape == x.shape and y.dtype == torch.float32
            assert y.min() >= -1.0 and y.max() <= 1.0
            if layout == torch.channels_last and channels > 1:
                assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_bf16_under_autocast_stays_bf16_in_range(policy):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.tanh(nn.Linear(4, 3 * 16 * 16)(torch.randn(8, 4))).view(8, 3, 16, 16)  # G's bf16 output
        assert x.dtype == torch.bfloat16
        y = augment(x, policy, p(1.0))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert y.min() >= -1.0 and y.max() <= 1.0


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_channels_last_gives_the_nchw_result(policy):
    x = images()
    torch.manual_seed(3)
    nchw = augment(x, policy, p(1.0))
    torch.manual_seed(3)
    nhwc = augment(x.contiguous(memory_format=torch.channels_last), policy, p(1.0))
    # Only the colour means are summed in another order.
    torch.testing.assert_close(nhwc, nchw, rtol=0, atol=1e-6)


def test_brightness_shifts_each_image_by_one_amount_in_half_a_unit():
    x = torch.rand(64, 3, 8, 8) * 0.8 - 0.4  # far enough from +-1 that no pixel is clipped
    shift = aug.brightness(x) - x
    per_image = shift.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image), rtol=0, atol=1e-6)
    assert per_image.min() >= -0.5 and per_image.max() < 0.5 and per_image[:, 0].std() > 0.2


def test_saturation_scales_the_deviation_from_the_pixel_mean():
    x = torch.rand(64, 3, 8, 8) * 0.2 - 0.1
    y = aug.saturation(x)
    mean = x.mean(1, keepdim=True)
    torch.testing.assert_close(y.mean(1, keepdim=True), mean, rtol=0, atol=1e-6)  # the grey level stays
    factor = ((y - mean).flatten(1) * (x - mean).flatten(1)).sum(1) / (x - mean).flatten(1).square().sum(1)
    assert factor.min() >= 0 and factor.max() < 2 and factor.std() > 0.3
    gray = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.equal(aug.saturation(gray), gray)


def test_contrast_scales_the_deviation_from_the_image_mean():
    x = torch.rand(64, 3, 8, 8) * 0.4 - 0.2
    y = aug.contrast(x)
    torch.testing.assert_close(y.mean((1, 2, 3)), x.mean((1, 2, 3)), rtol=0, atol=1e-6)
    factor = y.flatten(1).std(1) / x.flatten(1).std(1)
    assert factor.min() >= 0.5 - 1e-5 and factor.max() < 1.5 + 1e-5


def test_translation_is_a_whole_pixel_shift_with_zero_fill():
    x = torch.rand(32, 2, 16, 16) + 0.5  # no zeros of its own
    y = aug.translation(x)
    reach = 16 // 8
    shifts = set()
    for xi, yi in zip(x, y):
        matches = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
                   if torch.equal(yi, shifted(xi, dy, dx))]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 5  # per-sample shifts, not one for the batch


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], 0 outside: the reference the op must equal."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i, j] = x[:, i + dy, j + dx]
    return out


def test_cutout_zeroes_one_half_side_square_per_image():
    x = torch.rand(64, 3, 16, 16) + 0.5
    y = aug.cutout(x)
    hole = y == 0
    assert torch.equal(hole[:, 0], hole[:, 1]) and torch.equal(y[~hole], x[~hole])  # same hole in every channel
    rows, cols = hole[:, 0].any(2), hole[:, 0].any(1)
    for image_hole, r, c in zip(hole[:, 0], rows, cols):
        assert torch.equal(image_hole, r[:, None] & c[None, :])  # a rectangle...
        assert 1 <= r.sum() <= 8 and 1 <= c.sum() <= 8  # ... of half the side, clipped at the border
    assert (rows.sum(1) == 8).float().mean() > 0.3 and (rows.sum(1) < 8).any()


@pytest.mark.parametrize("name", list(OPS))
def test_p_is_the_share_of_samples_changed(name):
    x = images(n=4000, side=8)
    torch.manual_seed(0)
    changed = (augment_one(name, x, 0.3) != x).flatten(1).any(1).float().mean().item()
    # translation leaves a sample as it is when both of its shifts are 0 (1 in 9 for 8 pixels: reach 1).
    expected = 0.3 * (8 / 9 if name == "translation" else 1.0)
    assert abs(changed - expected) < 0.04


def augment_one(name: str, x: torch.Tensor, probability: float) -> torch.Tensor:
    return aug._with_probability(OPS[name], x, p(probability))


@pytest.mark.parametrize("name", list(OPS))
def test_each_op_is_differentiable_gradcheck(name):
    x = (torch.rand(2, 3, 8, 8, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)

    def fixed_draws(inputs: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(5)
        return augment_one(name, inputs, 1.0)

    assert torch.autograd.gradcheck(fixed_draws, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_gradients_reach_g_through_the_augmentation(policy):
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(8, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16)))
    D = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1))
    fake = G(torch.randn(16, 8))
    loss = nn.functional.softplus(-D(augment(fake, policy, p(1.0)))).mean()
    loss.backward()
    for name, param in G.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_policies_are_the_documented_ones():
    assert set(aug._OPS) == set(POLICIES)


def test_no_value_is_read_on_the_host():
    """On the meta device tensors have no values: any .item(), bool(tensor) or value-dependent branch raises."""
    x = torch.empty(4, 3, 16, 16, device="meta").contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = augment(x, "color,translation,cutout", torch.empty((), device="meta"))
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_runs_in_a_cuda_graph_without_host_syncs():
    x = (torch.rand(8, 3, 32, 32, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    prob = torch.zeros((), device="cuda")
    policy = "color,translation,cutout"
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside augment raises
    try:
        augment(x, policy, prob)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            augment(x, policy, prob)  # warm-up off the default stream, as graphs need
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = augment(x, policy, prob)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph.replay()
    assert torch.equal(out, x)  # p = 0 read from the device at replay time
    prob.fill_(1.0)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, x) and not torch.equal(out, first)  # new draws at every replay
    assert out.min() >= -1 and out.max() <= 1
