"""Run under `accelerate launch` (2 gloo ranks): each rank streams its share of each dataset given and
reports it as JSON: per dataset, the image ids of every batch of every epoch, the samples skipped, or
the DataError that stopped it (the ranks stay up and go on to the next dataset together)."""

import argparse
import json
import sys
import time

from accelerate import Accelerator

from distgan.data import DataError, ShardLoader

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True, nargs="+")
parser.add_argument("--out", required=True)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--on-corrupt", default="raise")
parser.add_argument("--group", type=int, default=0, help="batches per worker message (0: the loader's ~4 MB)")
args = parser.parse_args()

state = Accelerator()  # reads ACCELERATE_USE_CPU, unlike a bare PartialState
report = {"rank": state.process_index, "world_size": state.num_processes, "runs": []}
status = 0
for data in args.data:
    run = {"data": data, "epochs": [], "skipped": 0}
    try:
        loader = ShardLoader(data, "train", args.batch_size, rank=state.process_index,
                             world_size=state.num_processes, num_workers=2, seed=5, on_corrupt=args.on_corrupt)
        if args.group:  # several messages per epoch: both workers of the rank read
            loader.stream.group = args.group
        for epoch in range(args.epochs):
            ids = []
            for batch in loader.epoch(epoch):
                im = batch.images.numpy()
                ids.append((im[:, 0, 0, 0].astype(int) + 256 * im[:, 0, 1, 0].astype(int)).tolist())
            run["epochs"].append(ids)
        run["skipped"] = loader.skipped
    except DataError as exc:
        run["error"] = str(exc)
        status = 3
    report["runs"].append(run)
report["finished_at"] = time.time()
with open(f"{args.out}/rank{state.process_index}.json", "w") as f:
    json.dump(report, f)
state.end_training()  # destroys the process group: gloo's threads abort a process that exits with it alive
sys.exit(status)
