"""bench/ddp_traffic.py and bench/scaling.py: what DDP exchanges per step, against hand counts, and the limits
of the weak-scaling model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import ddp_traffic  # noqa: E402
import scaling  # noqa: E402

TINY_DCGAN28 = """
name: tiny
data: {path: unused}
model: {arch: dcgan28, nz: 8, ngf: 4, ndf: 4, d_batchnorm: false, d_dropout: 0.0}
loss: {d_steps: 2}
"""


def test_tiny_dcgan28_exchanges_its_hand_counted_bytes_in_fp32_under_bf16(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_DCGAN28)
    # G: Linear 8->16*7*7 (no bias) 6272, BN(16) 32, ConvT 16->8 (4x4) 2048, BN(8) 16, ConvT 8->4 512, BN(4) 8,
    # Conv 4->1 (3x3) + bias 37 = 8925 weights. D (no BatchNorm, so biases): 1->4 68, 4->8 520,
    # Linear 392->1 393 = 981.
    g_bytes, d_bytes = 8925 * 4, 981 * 4
    g_buffers = ((16 + 8 + 4) * 2 * 4, 3 * 8)  # running mean and var (float32), num_batches_tracked (int64)
    got = [(c.kind, c.owner, c.phase, c.nbytes, c.dtype)
           for c in ddp_traffic.count_collectives(config, "bf16")]
    assert got == [
        ("broadcast", "G", "forward", g_buffers[0], "torch.float32"),  # before G's no-grad forward (D update 1)
        ("broadcast", "G", "forward", g_buffers[1], "torch.int64"),
        ("all_reduce", "D", "D update 1", d_bytes, "torch.float32"),  # one bucket each: both are under 1 MiB
        ("all_reduce", "D", "D update 2", d_bytes, "torch.float32"),
        ("all_reduce", "G", "G update", g_bytes, "torch.float32"),  # the G update all-reduces no D gradient
    ]


def test_dcgan28_generator_is_split_after_the_first_mib_in_gradient_order():
    collectives = ddp_traffic.count_collectives(REPO / "configs/mnist_dcgan.yaml", "fp32")
    g_buckets = [c.nbytes for c in collectives if c.owner == "G" and c.kind == "all_reduce"]
    # Gradients arrive from the last layer: Conv 64->1 (577), BN(64) 128, ConvT 128->64 131072, BN(128) 256,
    # ConvT 256->128 524288 pass 1 MiB and close the first bucket; BN(256) 512 + Linear 100->12544 1254400 follow.
    assert g_buckets == [(577 + 128 + 131072 + 256 + 524288) * 4, (512 + 1254400) * 4]


def _step(nbytes: int) -> list:
    return [scaling.Collective("all_reduce", "G", "G update", nbytes, "torch.float32")]


def test_efficiency_is_one_on_one_gpu_and_never_rises_with_more():
    collectives = _step(3_000_000) + [scaling.Collective("broadcast", "G", "forward", 4096, "torch.float32")]
    counts = [2**k for k in range(13)]
    effs = [scaling.efficiency(2e-3, collectives, n) for n in counts]
    assert effs[0] == 1.0
    assert all(b <= a for a, b in zip(effs, effs[1:]))
    assert all(scaling.efficiency(2e-3, collectives, n, overlap=True) >= e for n, e in zip(counts, effs))


@pytest.mark.parametrize("n", [2, 8, 16, 64])
def test_large_all_reduce_is_bandwidth_bound_with_the_ring_closed_form(n):
    size = 10**10
    closed_form = 2 * (n - 1) / n * size / scaling.fabric(n).busbw
    assert scaling.collective_s(_step(size)[0], n, latency=0.0) == pytest.approx(closed_form, rel=1e-12)
    assert scaling.collective_s(_step(size)[0], n) == pytest.approx(closed_form, rel=1e-3)
    assert scaling.collective_s(_step(4)[0], n) == pytest.approx(scaling.latency_s(n), rel=1e-5)


def test_latency_model_and_break_even_latency():
    assert scaling.latency_s(8) == pytest.approx(15.2e-6)  # 6.8 + 2 x 7 x 0.6 us
    assert scaling.latency_s(64) == pytest.approx(45.2e-6)  # 6.8 + 2 x (7 x 0.6 + 3 x 5.0) us
    collectives = _step(5_000_000) * 3
    alpha = scaling.break_even_latency_s(1.5e-3, collectives, 64, 0.8)
    comm = scaling.comm_s(collectives, 64, latency=alpha)
    assert 1.5e-3 / (1.5e-3 + comm) == pytest.approx(0.8)


def test_measured_step_replaces_the_stand_in_and_bad_files_are_named(tmp_path):
    case = scaling.CASES[2]  # DCGAN-64 fp32
    stand_in = scaling.step_time(case, {}, None)
    assert stand_in.stand_in and scaling.STAND_IN in stand_in.source
    measured_file = tmp_path / "train.jsonl"
    measured_file.write_text("dcgan64 ...\n" + json.dumps({"batch": 64, case.measured_key: 16000.0}) + "\n")
    step = scaling.step_time(case, scaling.read_measured(measured_file), measured_file)
    assert not step.stand_in and step.batch == 64 and step.seconds == pytest.approx(64 / 16000.0)
    with pytest.raises(SystemExit, match=case.measured_key):
        scaling.step_time(case, {"batch": 64, case.measured_key: -1}, measured_file)
    measured_file.write_text("{not json\n")
    with pytest.raises(SystemExit, match="train.jsonl: the last line is not JSON"):
        scaling.read_measured(measured_file)
