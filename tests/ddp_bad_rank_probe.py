"""Run under `accelerate launch`: the real trainer, with rank 1's G loss made infinite at its G steps listed
in the second argument (comma-separated, from 1): a non-finite loss on one rank only. Each rank writes
`rank<r>.txt` into the directory of the first argument: the run's status, or its TrainingError."""

import sys
from pathlib import Path

from accelerate import PartialState

import distgan.training
import distgan.training.step
from distgan.config import load_config

out, bad_calls = Path(sys.argv[1]), {int(n) for n in sys.argv[2].split(",")}
cfg = load_config(sys.argv[3], sys.argv[4:])
real_loss = distgan.training.step.generator_loss
calls = 0


def inf_on_rank1(kind, logits):
    global calls
    calls += 1
    loss = real_loss(kind, logits)
    return loss * float("inf") if PartialState().process_index == 1 and calls in bad_calls else loss


distgan.training.step.generator_loss = inf_on_rank1
try:
    result = distgan.training.train(cfg)
except distgan.training.TrainingError as exc:
    result = f"TrainingError: {exc}"
(out / f"rank{PartialState().process_index}.txt").write_text(result)  # after train: its state
