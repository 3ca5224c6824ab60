"""What the ResNet family costs as the resolution grows: parameters, GFLOPs per image and activation memory per
image, for G and D (forward + backward of one training step), and the largest per-GPU batch that fits a GPU.

    python bench/resnet_cost.py                      # configs/resnet128.yaml's widths at 32..256 px
    python bench/resnet_cost.py --gpu-gb 80 --batch 8

Counted, not timed: the networks are built on the meta device (no memory, no arithmetic), torch's
FlopCounterMode counts the multiply-adds of G forward, D forward on real + fake and both backwards
(one G and one D update: 2 FLOPs per multiply-add), and a saved-tensors hook adds up the bytes every
forward keeps for its backward (fp32; the peak of a step, as G's and D's graphs are alive together in
the G update). The largest batch: (GPU memory - weights, gradients and Adam's two moments of G, D and
the EMA, in fp32) / activation bytes per image, at 90% of the GPU (allocator slack). Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distgan.config import load_config  # noqa: E402
from distgan.models import build_discriminator, build_generator  # noqa: E402
from distgan.models.resnet import CHANNEL_MULT, attention_resolutions  # noqa: E402

SIZES = (32, 64, 128, 256)


def step_cost(size: int, batch: int, overrides: list[str]) -> dict[str, float]:
    """One G + D training step's counts, per image."""
    cfg = load_config(REPO / "configs/resnet128.yaml",
                      ["data.path=unused", f"model.channel_mult={list(CHANNEL_MULT[size])}",
                       f"model.attention_res={max(attention_resolutions(size))}", *overrides])
    with torch.device("meta"):
        G, D = build_generator(cfg.model, 3, size, size, 0), build_discriminator(cfg.model, 3, size, size, 0)
        z, real = torch.randn(batch, cfg.model.nz), torch.randn(batch, 3, size, size)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    flops = FlopCounterMode(display=False)
    with flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fake = G(z)
        loss_d = torch.relu(1 - D(real)).mean() + torch.relu(1 + D(fake.detach())).mean()
        loss_d.backward()
        (-D(fake).mean()).backward()
    params = {"G": sum(p.numel() for p in G.parameters()), "D": sum(p.numel() for p in D.parameters())}
    return {"g_params_m": params["G"] / 1e6, "d_params_m": params["D"] / 1e6,
            "gflops_per_image": flops.get_total_flops() / batch / 1e9,
            "activation_mb_per_image": saved[0] / batch / 2**20,
            # fp32 weights + gradients + Adam's 2 moments (G, D), and the EMA's copy of G's weights
            "state_gb": (4 * (params["G"] + params["D"]) + params["G"]) * 4 / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    parser.add_argument("--batch", type=int, default=4, help="batch the counts are taken at (per image after)")
    parser.add_argument("override", nargs="*", help="config overrides, e.g. model.ngf=96")
    args = parser.parse_args()
    print(f"{date.today()}  resnet (configs/resnet128.yaml widths, BigGAN channel_mult per size, attention at "
          f"size/2)  counted on the meta device\n")
    print(f"{'px':>4} {'G Mparams':>10} {'D Mparams':>10} {'GFLOPs/img':>11} {'act MB/img':>11} "
          f"{'max batch/' + str(int(args.gpu_gb)) + 'GB':>16}")
    results: dict[str, object] = {"date": str(date.today()), "gpu_gb": args.gpu_gb}
    for size in SIZES:
        cost = step_cost(size, args.batch, args.override)
        usable = 0.9 * args.gpu_gb - cost["state_gb"]
        max_batch = int(usable * 1024 / cost["activation_mb_per_image"])
        print(f"{size:4d} {cost['g_params_m']:10.2f} {cost['d_params_m']:10.2f} {cost['gflops_per_image']:11.1f} "
              f"{cost['activation_mb_per_image']:11.1f} {max_batch:16d}")
        results.update({f"resnet{size}_{k}": round(v, 3) for k, v in cost.items()})
        results[f"resnet{size}_max_batch"] = max_batch
    print(json.dumps(results))


if __name__ == "__main__":
    main()
