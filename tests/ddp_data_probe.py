"""Run under `accelerate launch` (2 gloo ranks): each rank streams its share and reports it as JSON."""

import argparse
import json
import sys
import time

from accelerate import Accelerator

from distgan.data import DataError, ShardLoader

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=16)
args = parser.parse_args()

state = Accelerator()  # reads ACCELERATE_USE_CPU, unlike a bare PartialState
report = {"rank": state.process_index, "world_size": state.num_processes, "epochs": []}
status = 0
try:
    loader = ShardLoader(args.data, "train", args.batch_size, rank=state.process_index,
                         world_size=state.num_processes, num_workers=2, seed=5)
    for epoch in range(args.epochs):
        ids = []
        for batch in loader.epoch(epoch):
            im = batch.images.numpy()
            ids.append((im[:, 0, 0, 0].astype(int) + 256 * im[:, 0, 1, 0].astype(int)).tolist())
        report["epochs"].append(ids)
except DataError as exc:
    report["error"] = str(exc)
    status = 3
report["finished_at"] = time.time()
with open(f"{args.out}/rank{state.process_index}.json", "w") as f:
    json.dump(report, f)
sys.exit(status)
