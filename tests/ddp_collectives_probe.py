"""Run under `accelerate launch`: the real trainer, counting the host collectives each rank makes.

Every torch.distributed call made from Python counts (the trainer's control channel, accelerate's
barriers and reductions); DDP's gradient all-reduce runs inside its C++ reducer and does not.
Writes `rank<r>.json`: {"status", "host_collectives"}.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate import PartialState

from distgan.config import load_config

try:
    from distgan.training import train
except ImportError:  # the trainer before the training core was split up: to measure it the same way
    from distgan.trainer import train

out = Path(sys.argv[1])
cfg = load_config(sys.argv[2], sys.argv[3:])
count = 0


def counted(function):
    def call(*args, **kwargs):
        global count
        count += 1
        return function(*args, **kwargs)
    return call


for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier",
             "monitored_barrier", "reduce", "gather", "scatter", "all_to_all"):
    setattr(dist, name, counted(getattr(dist, name)))
status = train(cfg)
(out / f"rank{PartialState().process_index}.json").write_text(json.dumps({"status": status,
                                                                          "host_collectives": count}))
