"""Learning-rate schedules: their values, and a resumed run continuing exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from distgan.schedule import SCHEDULES, LRSchedule, lr_scheduler


def test_values_of_each_schedule():
    assert [LRSchedule("constant", 10)(s) for s in (0, 5, 9, 20)] == [1.0] * 4
    warm = LRSchedule("warmup", 100, warmup_steps=4)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = LRSchedule("cosine", 110, warmup_steps=10, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0 and cos(10) == 1.0
    assert cos(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert cos(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cos(110) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)  # held at the floor past the end
    assert all(cos(s) >= cos(s + 1) for s in range(10, 120))


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "cosin"}, "unknown lr schedule 'cosin'"),
    ({"kind": "warmup", "total_steps": 10}, "warmup_steps >= 1"),
    ({"kind": "cosine", "total_steps": 10, "warmup_steps": 11}, "warmup_steps <= total_steps"),
    ({"kind": "cosine", "total_steps": 10, "min_lr_ratio": 1.5}, "min_lr_ratio"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRSchedule(**kwargs)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, steps: range) -> list[float]:
    """Adam steps on a fixed regression; the lr each step used."""
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for _ in range(steps.stop)]
    used = []
    for step in steps:
        x, y = data[step]
        loss = (model(x) - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("kind", SCHEDULES)
def test_stepping_to_k_then_rebuilding_from_k_equals_stepping_straight(kind):
    warmup = {"constant": 0, "warmup": 20, "cosine": 6}[kind]  # resumed inside the warm-up, or the decay
    schedule = LRSchedule(kind, total_steps=30, warmup_steps=warmup, min_lr_ratio=0.05)
    base = 1e-2

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        return model, torch.optim.Adam(model.parameters(), lr=base)

    model, optimizer = fresh()
    straight = train(model, optimizer, lr_scheduler(optimizer, schedule, [base]), range(30))

    first, opt_first = fresh()
    before = train(first, opt_first, lr_scheduler(opt_first, schedule, [base]), range(13))
    saved_model, saved_opt = first.state_dict(), opt_first.state_dict()  # a checkpoint at step 13
    resumed, opt_resumed = fresh()
    resumed.load_state_dict(saved_model)
    opt_resumed.load_state_dict(saved_opt)  # its lr is step 12's scaled one; the base is passed
    after = train(resumed, opt_resumed, lr_scheduler(opt_resumed, schedule, [base], start_step=13), range(13, 30))

    assert before + after == straight
    assert straight == [base * schedule(s) for s in range(30)]
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    if kind != "constant":
        assert len(set(straight)) > 10


def test_a_tensor_lr_is_updated_in_place():
    """A CUDA-graphed optimizer step reads its lr from a device tensor: the schedule must fill that tensor."""
    model = nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-2), fused=True)
    lr = optimizer.param_groups[0]["lr"]
    schedule = LRSchedule("cosine", total_steps=10, warmup_steps=2)
    scheduler = lr_scheduler(optimizer, schedule, [1e-2], start_step=4)
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(1e-2 * schedule(4))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(1e-2 * schedule(5))
