"""The generator EMA: the exponential average, buffers included, with no step counter to read."""

from __future__ import annotations

import torch
from torch import nn

from distgan.ema import EMA


def test_ema_is_the_exponential_average_of_parameters_and_float_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    ema = EMA(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(16, 4))  # train mode: BatchNorm's running stats and batch counter move
        ema.update(model)
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = 0.9 * expected[key] + 0.1 * value
            else:
                expected[key] = value.clone()
    averaged = ema.module.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(averaged[key], value, rtol=1e-6, atol=1e-6, msg=key)
    assert averaged["1.num_batches_tracked"].item() == 3
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trips_through_its_state_dict():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    restored = EMA(nn.Linear(3, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert set(ema.state_dict()) == {"module.weight", "module.bias"}
    assert torch.equal(restored.module.weight, ema.module.weight)


def test_ema_decay_warms_up_with_the_step():
    """With the step given, early updates follow the model: decay min(0.9999, (1 + t) / (10 + t))."""
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.9999)
    average = ema.module.weight.detach().clone()
    for step in range(50):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, step)
        decay = min(0.9999, (1 + step) / (10 + step))
        average = decay * average + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(ema.module.weight, average)
    assert (model.weight - ema.module.weight).abs().max() < 10  # a 0.9999 EMA without warm-up lags by ~50


def test_ema_with_a_device_tensor_step_matches_the_host_step():
    """The CUDA-graph path passes the step as a tensor; it must average like the host path."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    host, device = EMA(model, decay=0.999), EMA(model, decay=0.999)
    for step in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(16, 4))
        host.update(model, step)
        device.update(model, torch.tensor(float(step)))
    for (key, a), b in zip(host.module.state_dict().items(), device.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
