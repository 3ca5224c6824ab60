"""Run under `accelerate launch` (2 gloo ranks): the adaptive p with each rank's sums all-reduced before adjust.

Each rank scores its own logits (rank r, round k: the ones `ada_logits` makes) and writes its p and r_t
after every round, plus the p it would have had from its own sums alone, as JSON.
"""

import argparse
import json

import torch
from accelerate import Accelerator

from distgan.ada import AdaptiveP

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()


def ada_logits(rank: int, round_: int) -> torch.Tensor:
    """Rank 0 sees mostly positive logits, rank 1 mostly negative: their local r_t disagree."""
    g = torch.Generator().manual_seed(100 * rank + round_)
    return torch.randn(24, 1, generator=g) + (1.5 if rank == 0 else -0.5)


accelerator = Accelerator()
rank = accelerator.process_index
shared = AdaptiveP(target=0.6, speed_images=1000, initial_p=0.5).to(accelerator.device)
alone = AdaptiveP(target=0.6, speed_images=1000, initial_p=0.5).to(accelerator.device)
report = {"rank": rank, "p": [], "r_t": [], "p_alone": []}
for round_ in range(args.rounds):
    for d_step in range(2):
        logits = ada_logits(rank, 2 * round_ + d_step).to(accelerator.device)
        shared.accumulate(logits)
        alone.accumulate(logits)
    stats = accelerator.reduce(shared.stats(), reduction="sum")
    shared.adjust(stats)
    alone.adjust()
    report["p"].append(shared.p.item())
    report["r_t"].append(shared.r_t.item())
    report["p_alone"].append(alone.p.item())
with open(f"{args.out}/rank{rank}.json", "w") as f:
    json.dump(report, f)
accelerator.end_training()  # destroys the process group: gloo's threads abort a process that exits with it alive
