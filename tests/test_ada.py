"""The adaptive augmentation probability: the update rule, its state, DDP sums, and a real overfitting D."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import REPO, run_env
from distgan.ada import AdaptiveP
from distgan.augment import augment


def test_p_moves_by_images_over_speed_towards_the_target():
    ada = AdaptiveP(target=0.6, speed_images=1000, initial_p=0.5)
    ada.accumulate(torch.tensor([[2.0], [1.0], [0.5], [-1.0]]))  # r_t = (1 + 1 + 1 - 1) / 4 = 0.5 < 0.6
    ada.accumulate(torch.tensor([[3.0], [-2.0], [-0.1], [-4.0]]))  # now 0 over 8 images
    ada.adjust()
    assert ada.r_t.item() == 0.0 and ada.p.item() == pytest.approx(0.5 - 8 / 1000)
    ada.accumulate(torch.full((100, 1), 7.0))  # memorised: r_t = 1
    ada.adjust()
    assert ada.r_t.item() == 1.0 and ada.p.item() == pytest.approx(0.5 - 8 / 1000 + 100 / 1000)
    assert ada.sums.tolist() == [0.0, 0.0]  # every adjustment starts a new interval


def test_p_stays_in_0_1_and_still_without_data():
    ada = AdaptiveP(speed_images=10, initial_p=0.95)
    ada.accumulate(torch.ones(50))
    ada.adjust()
    assert ada.p.item() == 1.0
    ada.r_t.fill_(0.25)
    ada.adjust()  # nothing scored since: p and the logged r_t stay
    assert ada.p.item() == 1.0 and ada.r_t.item() == 0.25
    ada.accumulate(-torch.ones(50))
    ada.adjust()
    assert ada.p.item() == 0.0


def test_the_threshold_is_where_d_is_undecided():
    lsgan = AdaptiveP(speed_images=100, initial_p=0.5, threshold=0.5)  # lsgan's real target is 1, fake 0
    lsgan.accumulate(torch.tensor([0.4, 0.45, 0.9, 0.2]))
    lsgan.adjust()
    assert lsgan.r_t.item() == -0.5


def test_state_dict_restores_p_and_the_running_sums_bitwise():
    logits = [torch.randn(16, 1, generator=torch.Generator().manual_seed(i)) + 0.3 for i in range(12)]

    def run(ada: AdaptiveP, rounds: range) -> None:
        for i in rounds:
            ada.accumulate(logits[i])
            if i % 4 == 3:
                ada.adjust()

    straight = AdaptiveP(speed_images=300, initial_p=0.2)
    run(straight, range(12))
    first = AdaptiveP(speed_images=300, initial_p=0.2)
    run(first, range(6))  # stopped between two adjustments: the sums matter
    resumed = AdaptiveP(speed_images=300, initial_p=0.9)
    resumed.load_state_dict(first.state_dict())
    run(resumed, range(6, 12))
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert set(straight.state_dict()) == {"p", "r_t", "sums"}


def test_summed_stats_from_two_ranks_equal_one_process_on_all_logits():
    a, b = torch.randn(32) + 1.0, torch.randn(32) - 1.0
    rank0, rank1, single = (AdaptiveP(speed_images=100, initial_p=0.5) for _ in range(3))
    rank0.accumulate(a)
    rank1.accumulate(b)
    single.accumulate(torch.cat([a, b]))
    summed = rank0.stats() + rank1.stats()  # what all_reduce(SUM) leaves on every rank
    rank0.adjust(summed)
    single.adjust()
    assert torch.equal(rank0.p, single.p) and torch.equal(rank0.r_t, single.r_t)


def test_no_value_is_read_on_the_host():
    """On the meta device tensors have no values: any .item() or value-dependent branch would raise."""
    ada = AdaptiveP().to("meta")
    ada.accumulate(torch.empty(16, 1, device="meta"))
    ada.adjust(ada.stats())
    assert ada.p.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accumulate_and_adjust_replay_in_a_cuda_graph():
    ada = AdaptiveP(speed_images=100, initial_p=0.5).cuda()
    logits = torch.zeros(10, 1, device="cuda")
    eager = AdaptiveP(speed_images=100, initial_p=0.5).cuda()

    def step() -> None:
        ada.accumulate(logits)
        ada.adjust()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up off the default stream, as graphs need
    torch.cuda.current_stream().wait_stream(side)
    ada.load_state_dict(eager.state_dict())  # back to the start after the warm-up
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ada.load_state_dict(eager.state_dict())  # capture does not run the kernels, but be explicit
    for value in (1.0, 1.0, -1.0, 1.0):
        logits.fill_(value)
        graph.replay()
        eager.accumulate(logits)
        eager.adjust()
        assert torch.equal(ada.p, eager.p) and torch.equal(ada.r_t, eager.r_t)
    assert ada.p.item() == pytest.approx(0.5 + 0.2)


@pytest.mark.slow
def test_two_ddp_ranks_keep_one_p_when_the_sums_are_all_reduced(tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", str(REPO / "tests" / "ddp_ada_probe.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=run_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["p"] == rank1["p"] and rank0["r_t"] == rank1["r_t"]
    # Alone, rank 0 (mostly positive logits) would raise p and rank 1 lower it: the ranks would drift apart.
    assert rank0["p_alone"][-1] > 0.5 > rank1["p_alone"][-1]
    # The shared p is the one a single process computes from both ranks' logits.
    single = AdaptiveP(target=0.6, speed_images=1000, initial_p=0.5)
    for round_ in range(3):
        for d_step in range(2):
            single.accumulate(torch.cat([probe_logits(rank, 2 * round_ + d_step) for rank in (0, 1)]))
        single.adjust()
        assert rank0["p"][round_] == single.p.item() and rank0["r_t"][round_] == single.r_t.item()


def probe_logits(rank: int, round_: int) -> torch.Tensor:
    """The logits ddp_ada_probe.py gives rank `rank` in round `round_` (the same generator seeds)."""
    g = torch.Generator().manual_seed(100 * rank + round_)
    return torch.randn(24, 1, generator=g) + (1.5 if rank == 0 else -0.5)


def train_d_with_adaptive_p(real_images, initial_p: float, steps: int = 200) -> list[tuple[float, float]]:
    """A small conv D trained (bce) on augmented reals vs fresh random images, p adapted every 4 steps.

    Returns (p, r_t) after every adjustment. Speed 5000 images: a fast controller for a short run.
    """
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(16, 32, 4, 2, 1),
                      nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(32 * 4 * 4, 1))
    opt = torch.optim.Adam(D.parameters(), 2e-3, betas=(0.5, 0.999))
    ada = AdaptiveP(target=0.6, speed_images=5000, initial_p=initial_p)
    policy = "color,translation,cutout"
    trace = []
    for step in range(steps):
        real = real_images()
        fake = torch.rand(32, 1, 16, 16) * 2 - 1
        real_logits = D(augment(real, policy, ada.p))
        loss = F.softplus(-real_logits).mean() + F.softplus(D(augment(fake, policy, ada.p))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ada.accumulate(real_logits)
        if step % 4 == 3:
            ada.adjust()
            trace.append((ada.p.item(), ada.r_t.item()))
    return trace


def test_p_rises_when_d_memorises_a_few_repeated_images():
    eight = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    trace = train_d_with_adaptive_p(lambda: eight.repeat(4, 1, 1, 1), initial_p=0.0)
    assert trace[0][1] > 0.6  # D tells its 8 images from fresh ones within 4 steps
    assert trace[-1][0] > 0.15  # p went up and stays up ...
    assert abs(sum(r for _, r in trace[-10:]) / 10 - 0.6) < 0.15  # ... holding r_t near the target


def test_p_falls_when_d_sees_fresh_data():
    trace = train_d_with_adaptive_p(lambda: torch.rand(32, 1, 16, 16) * 2 - 1, initial_p=0.5)
    assert sum(r for _, r in trace) / len(trace) < 0.3  # D cannot tell fresh reals from fresh fakes
    assert trace[-1][0] < 0.05
