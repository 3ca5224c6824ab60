"""Weak-scaling model of distgan's DDP training step: predicted images/s and efficiency on 1 to 64 GPUs.

    python bench/scaling.py [--measured LAST_JSON_LINE_OF_bench/train.py_ON_A_GPU]

Weak scaling: every GPU keeps its batch (128 per rank), so a step on n GPUs does the work of one GPU's
step, T, plus the collectives that DDP adds, C(n):

    images/s(n) = n x batch / (T + C(n)),    efficiency(n) = T / (T + C(n))    (1.0 at n = 1)

Inputs, each printed with its source:

1. T, the step time on one GPU. It should be the graphed DDP step measured in one process (issue 16):
   bench/train.py's key `<arch>_trainer_<fp32|bf16>_ddp_graph_img_s` (what `--variant
   fp32_ddp_graph:...` prints) in the file given to `--measured`, with its `batch`. Until that exists, the
   single-process CUDA-graph figures of BENCHMARKS.md (one H100, GPU session 4) stand in, and every line
   that uses one says "stand-in: single-process graph, not DDP".
2. What DDP communicates per step, counted on the CPU by bench/ddp_traffic.py: the real G and D of each
   config under torch's DistributedDataParallel with the trainer's settings, in the order of
   distgan/training/step.py. Per step: D's gradients once per D update (x loss.d_steps), G's once (the G
   update calls D unwrapped, so no D gradient is all-reduced there), the BatchNorm buffers broadcast
   before each DDP forward; all gradients in fp32, bf16 autocast included (no compression hook).
   Not counted: the host-side gloo flags every train.sync_every (20) steps and the few small reduces
   per log interval, both far from every step.
3. The cost of one collective. nccl-tests defines, for an all-reduce of S bytes on n ranks taking t,
   algbw = S / t and busbw = algbw x 2(n-1)/n (a ring sends and receives 2(n-1)/n x S per rank), so
   busbw is the figure that does not depend on n. With alpha(n) the fixed cost of a collective:

       t_allreduce(S, n) = alpha(n) + 2(n-1)/n x S / busbw
       t_broadcast(S, n) = alpha(n) + S / busbw           (nccl-tests: busbw = algbw for broadcast)

   busbw: NVLink within a node (n <= 8), InfiniBand across nodes (8 GPUs and 8 NDR HCAs per node);
   alpha(n): NCCL's own cost model for small all-reduces (Tree, LL protocol). Sources in NVLINK,
   INFINIBAND and NCCL_TREE_LL_LATENCY. This alpha-beta model is optimistic for mid-size messages (a few MB), where
   published curves sit below both asymptotes, so the script also prints the latency a collective may
   cost before each goal fails.

Overlap: DDP all-reduces a bucket as soon as its gradients are ready, while the backward goes on (a CUDA
graph replays the streams and events it captured, so a graphed DDP step keeps the eager step's overlap).
The bounds: no overlap (C = every collective) and full overlap (only the last bucket of each backward,
and the broadcasts, which block the forward that follows them). The prediction is the no-overlap bound:
these backwards last a fraction of a millisecond, NCCL's kernels take SMs from the backward they
overlap, and the last bucket holds most of the bytes where a first layer is large (DCGAN-28's G).

Sensitivity: the goals are also given with alpha doubled, with the latency per collective at which each
goal would fail, and with the GPU count at which each case falls below 80%. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from ddp_traffic import Collective, count_collectives  # noqa: E402

GPU_COUNTS = (1, 2, 8, 16, 64)
GPUS_PER_NODE = 8
STAND_IN = "stand-in: single-process graph, not DDP"
STAND_IN_SOURCE = "BENCHMARKS.md, bench/train.py on one H100 80GB HBM3, GPU session 4 (2026-11-22), batch 128"
STAND_IN_BATCH = 128


@dataclass(frozen=True)
class Case:
    """One row of the model: a config, its precision, and the single-process graph figure that stands in."""

    name: str
    config: str
    arch: str
    precision: str  # fp32 | bf16
    stand_in_img_s: float  # BENCHMARKS.md GPU session 4, `<arch>_trainer_<precision>_graph_img_s`

    @property
    def measured_key(self) -> str:
        return f"{self.arch}_trainer_{self.precision}_ddp_graph_img_s"


# DCGAN-28 and DCGAN-64 are bench/train.py's (its CONFIGS); CelebA-64 is celeba64_dcgan.yaml as shipped (bf16).
CASES = (
    Case("DCGAN-28 fp32", "configs/mnist_dcgan.yaml", "dcgan28", "fp32", 82281.4),
    Case("DCGAN-28 bf16", "configs/mnist_dcgan.yaml", "dcgan28", "bf16", 97677.0),
    Case("DCGAN-64 fp32", "configs/celeba64_dcgan.yaml", "dcgan64", "fp32", 28429.5),
    Case("CelebA-64 bf16", "configs/celeba64_dcgan.yaml", "dcgan64", "bf16", 40950.8),
)


@dataclass(frozen=True)
class Fabric:
    name: str
    busbw: float  # bytes/s, nccl-tests' bus bandwidth of a large all-reduce
    source: str


NVLINK = Fabric(
    "NVLink, 8x H100 in one node (n <= 8)", 370e9,
    "370 GB/s: 'NCCL can get an effective NVLink bandwidth of 370GB/s, which you can observe as BusBw [...] "
    "when running with NCCL_ALGO=RING' (sjeaugey, NVIDIA's NCCL lead, "
    "https://github.com/NVIDIA/nccl-tests/issues/212); measured ring busbw 365-370 GB/s on 2 to 8 H100 SXM "
    "(https://github.com/NVIDIA/nccl/issues/1455). NVLink SHARP's ~480 GB/s needs messages over 256 MB "
    "(same comment; 479.41 GB/s at 8 GiB in https://github.com/NVIDIA/nccl-tests/issues/347), so not used")
INFINIBAND = Fabric(
    "InfiniBand NDR 400 Gb/s, 8 HCAs per node (n > 8)", 8 * 46e9,
    "8 x 46 GB/s: 'For NDR @ 400Gbps you should see 46-48GB/s per NIC' (AddyLaddy, NVIDIA NCCL maintainer, "
    "https://github.com/NVIDIA/nccl-tests/issues/290), the low end, times 8 NICs: an inter-node ring's "
    "busbw is the per-NIC figure times the NICs per node (95 GB/s busbw on 4 NICs read as '~24GB/s per "
    "NIC', https://github.com/NVIDIA/nccl-tests/issues/252)")

NCCL_TREE_LL_LATENCY = (
    "alpha(n) = 6.8 + 2 x ((g - 1) x 0.6 + log2(N) x 5.0) us, g GPUs per node, N nodes: NCCL's own cost "
    "model for a small all-reduce by Tree with the LL protocol (base 6.8 us, 0.6 us per NVLink hop, 5.0 us "
    "per network hop; src/graph/tuning.cc, NCCL 2.30.7, https://github.com/NVIDIA/nccl; within a node its "
    "Ring/LL figure is 0.2 us lower). Checks against published small all-reduces: ~6 us on 2 H100 over "
    "NVLink, NVLSTree in a CUDA graph (https://github.com/NVIDIA/nccl/issues/1259; model 8.0 us); 46-48 us "
    "on 2 nodes x 8 H20 over NDR, NVLSTree forced (https://github.com/NVIDIA/nccl/issues/1244; model "
    "25.2 us). No published figure for 8 H100 nodes was found: across nodes alpha may be ~2x the model, so "
    "the goals are also given with alpha doubled")


def latency_s(n: int) -> float:
    """alpha(n), the fixed cost of one collective on n GPUs (NCCL_TREE_LL_LATENCY)."""
    per_node, nodes = min(n, GPUS_PER_NODE), math.ceil(n / GPUS_PER_NODE)
    return (6.8 + 2 * ((per_node - 1) * 0.6 + math.log2(nodes) * 5.0)) * 1e-6


def fabric(n: int) -> Fabric:
    return NVLINK if n <= GPUS_PER_NODE else INFINIBAND


def collective_s(c: Collective, n: int, latency: float | None = None) -> float:
    """Seconds one collective takes on n GPUs (0 on one GPU: there is nothing to exchange)."""
    if n == 1:
        return 0.0
    alpha = latency_s(n) if latency is None else latency
    share = 2 * (n - 1) / n if c.kind == "all_reduce" else 1.0
    return alpha + share * c.nbytes / fabric(n).busbw


def comm_s(collectives: list[Collective], n: int, overlap: bool = False, latency: float | None = None) -> float:
    """C(n): every collective (no overlap), or the broadcasts plus the last bucket of each backward."""
    exposed = list(collectives)
    if overlap:
        last = {c.phase: c for c in collectives if c.kind == "all_reduce"}  # dicts keep the last of each phase
        exposed = [c for c in collectives if c.kind == "broadcast"] + list(last.values())
    return sum(collective_s(c, n, latency) for c in exposed)


def efficiency(step_s: float, collectives: list[Collective], n: int, overlap: bool = False,
               latency_scale: float = 1.0) -> float:
    """T / (T + C(n)); `latency_scale` multiplies alpha(n) (a sensitivity check)."""
    return step_s / (step_s + comm_s(collectives, n, overlap, latency_s(n) * latency_scale))


def break_even_latency_s(step_s: float, collectives: list[Collective], n: int, goal: float) -> float:
    """The per-collective latency at which efficiency(n) falls to `goal` (no overlap)."""
    bandwidth_only = comm_s(collectives, n, latency=0.0)
    return (step_s * (1 / goal - 1) - bandwidth_only) / len(collectives)


# --- the step time of one GPU ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    seconds: float
    batch: int
    stand_in: bool
    source: str


def read_measured(path: Path) -> dict:
    """The last JSON line of a bench/train.py run (its figures); errors name the file."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise SystemExit(f"--measured {path}: cannot read it ({exc.strerror})") from None
    if not lines:
        raise SystemExit(f"--measured {path}: the file is empty; expected the last JSON line of bench/train.py")
    try:
        record = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--measured {path}: the last line is not JSON ({exc.msg}); expected the last line "
                         "bench/train.py prints") from None
    if not isinstance(record, dict):
        raise SystemExit(f"--measured {path}: the last line is JSON but not an object of figures")
    return record


def step_time(case: Case, measured: dict, path: Path | None) -> StepTime:
    """The measured graphed DDP step of this case if the file has it, else the labelled stand-in."""
    key, value = case.measured_key, measured.get(case.measured_key)
    if value is None:
        return StepTime(STAND_IN_BATCH / case.stand_in_img_s, STAND_IN_BATCH, True,
                        f"{STAND_IN} ({case.stand_in_img_s:,.0f} img/s, {STAND_IN_SOURCE}; no {key})")
    batch = measured.get("batch")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SystemExit(f"--measured {path}: key {key!r} must be a positive number of images/s, got {value!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise SystemExit(f"--measured {path}: key 'batch' must be a positive integer (bench/train.py writes "
                         f"it), got {batch!r}")
    return StepTime(batch / value, batch, False, f"measured: graphed DDP step in one process, {value:,.0f} img/s "
                    f"at batch {batch}, {measured.get('hardware', 'hardware not recorded')} ({path}, {key})")


# --- report ----------------------------------------------------------------------------------------------


def slug(case: Case) -> str:
    return case.name.lower().replace("-", "").replace(" ", "_")


def megabytes(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def describe(collectives: list[Collective]) -> str:
    """One line: what each network all-reduces and broadcasts per step."""
    parts = []
    for owner in ("G", "D"):
        buckets = [c for c in collectives if c.owner == owner and c.kind == "all_reduce"]
        updates = len({c.phase for c in buckets})
        sizes = ", ".join(megabytes(c.nbytes) for c in buckets[: len(buckets) // max(updates, 1)])
        parts.append(f"{owner} {megabytes(sum(c.nbytes for c in buckets) / max(updates, 1))} in "
                     f"{len(buckets) // max(updates, 1)} bucket(s) [{sizes}] x {updates} update(s)")
        casts = [c for c in collectives if c.owner == owner and c.kind == "broadcast"]
        if casts:
            parts.append(f"{owner} buffers {sum(c.nbytes for c in casts):,} B in {len(casts)} broadcast(s) "
                         f"({', '.join(c.dtype.removeprefix('torch.') for c in casts)})")
    dtypes = sorted({c.dtype.removeprefix("torch.") for c in collectives if c.kind == "all_reduce"})
    total = sum(c.nbytes for c in collectives if c.kind == "all_reduce")
    return (f"{'; '.join(parts)}. Per step: {len(collectives)} collectives, {megabytes(total)} all-reduced "
            f"in {'/'.join(dtypes)}")


def print_inputs(rows: list[tuple[Case, StepTime, list[Collective]]]) -> None:
    print(f"{date.today()}  weak-scaling model of the DDP step (torch {torch.__version__}; no GPU needed)\n")
    print("Step time T of one GPU:")
    for case, step, _ in rows:
        print(f"  {case.name:15s} {step.seconds * 1e3:6.3f} ms  {step.source}")
    print("\nPer step, counted under real DDP on the CPU (25 MiB buckets, 1 MiB first bucket, broadcast_buffers):")
    for case, _, collectives in rows:
        print(f"  {case.name:15s} {case.config}: {describe(collectives)}")
    print("\nCollective cost: t = alpha(n) + 2(n-1)/n x S / busbw (all-reduce), alpha(n) + S / busbw (broadcast)")
    for fab in (NVLINK, INFINIBAND):
        print(f"  busbw {fab.busbw / 1e9:5.0f} GB/s  {fab.name}: {fab.source}")
    print(f"  {NCCL_TREE_LL_LATENCY}")
    print("  alpha(n): " + ", ".join(f"{n} GPUs {latency_s(n) * 1e6:.1f} us" for n in GPU_COUNTS if n > 1))


def print_predictions(rows: list[tuple[Case, StepTime, list[Collective]]]) -> None:
    """Two tables: images/s, then efficiency with its full-overlap bound in brackets."""
    header = f"  {'case':15s}" + "".join(f"{f'{n} GPU' + ('s' if n > 1 else ''):>17s}" for n in GPU_COUNTS)
    for title, cell in (
        ("Predicted images/s (no overlap: the prediction)",
         lambda step, col, n: f"{n * step.batch * efficiency(step.seconds, col, n) / step.seconds:,.0f}"),
        ("Predicted efficiency, no overlap [full-overlap bound]",
         lambda step, col, n: f"{efficiency(step.seconds, col, n):.1%} "
                              f"[{efficiency(step.seconds, col, n, overlap=True):.1%}]"),
    ):
        print(f"\n{title}:\n{header}")
        for case, step, collectives in rows:
            label = f"  [{STAND_IN}]" if step.stand_in else "  [measured step]"
            print(f"  {case.name:15s}" + "".join(f"{cell(step, collectives, n):>17s}" for n in GPU_COUNTS) + label)

def first_below(step: StepTime, collectives: list[Collective], goal: float, latency_scale: float = 1.0,
                limit: int = 4096) -> int | None:
    """The smallest power-of-two GPU count (up to `limit`) whose predicted efficiency is below `goal`."""
    n = 2
    while n <= limit:
        if efficiency(step.seconds, collectives, n, latency_scale=latency_scale) < goal:
            return n
        n *= 2
    return None


def print_goals(rows: list[tuple[Case, StepTime, list[Collective]]], results: dict) -> None:
    """Issue 16's goals for DCGAN-64 (both precisions), and where each case stops scaling and why."""
    print("\nGoals for DCGAN-64 (>= 90% at 8 GPUs, >= 80% at 64 GPUs), no-overlap prediction [alpha doubled]:")
    for case, step, collectives in rows:
        label = f"  [{STAND_IN}]" if step.stand_in else ""
        for n, goal in ((8, 0.9), (64, 0.8)) if case.arch == "dcgan64" else ():
            eff, doubled = (efficiency(step.seconds, collectives, n, latency_scale=k) for k in (1, 2))
            alpha = break_even_latency_s(step.seconds, collectives, n, goal)
            results[f"{slug(case)}_goal_{n}gpu_met"] = eff >= goal
            results[f"{slug(case)}_goal_{n}gpu_met_alpha_x2"] = doubled >= goal
            print(f"  {case.name:15s} {n:2d} GPUs: {eff:6.1%} [{doubled:6.1%}]  goal >= {goal:.0%}: "
                  f"{'met' if eff >= goal else 'NOT met'} [{'met' if doubled >= goal else 'NOT met'}]; holds "
                  f"while a collective costs <= {alpha * 1e6:.0f} us (model {latency_s(n) * 1e6:.1f} us){label}")
    print("\nWhere each case falls below 80% (alpha extrapolated past 64 GPUs) [alpha doubled], and why:")
    for case, step, collectives in rows:
        label = f"  [{STAND_IN}]" if step.stand_in else ""
        where = [first_below(step, collectives, 0.8, latency_scale=k) for k in (1, 2)]
        results[f"{slug(case)}_below_80pct_at_gpus"], results[f"{slug(case)}_below_80pct_at_gpus_alpha_x2"] = where
        latency_part, total = len(collectives) * latency_s(64), comm_s(collectives, 64)
        alpha = break_even_latency_s(step.seconds, collectives, 64, 0.8)
        print(f"  {case.name:15s} from {where[0] or '> 4096'} [{where[1] or '> 4096'}] GPUs. At 64 GPUs T = "
              f"{step.seconds * 1e3:.2f} ms against C = {total * 1e6:.0f} us, {latency_part / total:.0%} of it "
              f"latency ({len(collectives)} collectives x {latency_s(64) * 1e6:.1f} us); 80% holds while a "
              f"collective costs <= {alpha * 1e6:.0f} us{label}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, help="a file whose last line is bench/train.py's JSON from a GPU "
                        "run with the graphed DDP variants (keys <arch>_trainer_<fp32|bf16>_ddp_graph_img_s)")
    args = parser.parse_args()
    measured = read_measured(args.measured) if args.measured else {}
    counted: dict[tuple[str, str], list[Collective]] = {}
    rows = []
    for case in CASES:
        key = (case.config, case.precision)
        if key not in counted:
            counted[key] = count_collectives(REPO / case.config, case.precision)
        rows.append((case, step_time(case, measured, args.measured), counted[key]))
    print_inputs(rows)
    print_predictions(rows)
    results: dict[str, object] = {"date": str(date.today()), "torch": torch.__version__,
                                  "model": "alpha-beta, no overlap", "gpus_per_node": GPUS_PER_NODE,
                                  "busbw_nvlink_gbs": NVLINK.busbw / 1e9, "busbw_ib_gbs": INFINIBAND.busbw / 1e9}
    for case, step, collectives in rows:
        name = slug(case)
        results[f"{name}_step_ms"] = round(step.seconds * 1e3, 4)
        results[f"{name}_step_source"] = "stand-in" if step.stand_in else "measured"
        results[f"{name}_allreduce_bytes_per_step"] = sum(c.nbytes for c in collectives if c.kind == "all_reduce")
        results[f"{name}_collectives_per_step"] = len(collectives)
        for n in GPU_COUNTS:
            eff = efficiency(step.seconds, collectives, n)
            results[f"{name}_{n}gpu_img_s"] = round(n * step.batch * eff / step.seconds, 1)
            results[f"{name}_{n}gpu_eff"] = round(eff, 4)
            results[f"{name}_{n}gpu_eff_overlap"] = round(efficiency(step.seconds, collectives, n, True), 4)
    print_goals(rows, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
