"""`python -m distgan.metrics train-domain`: train and save the domain classifier of a shard directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distgan.data.loader import read_manifest
from distgan.metrics.domain import default_domain_dir, save_domain_classifier, train_domain_classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distgan.metrics")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train-domain", help="train the domain-FID classifier and save it")
    train.add_argument("--data", required=True, help="shard directory made by distgan-data prepare")
    train.add_argument("--out", type=Path, help="directory for model.safetensors + classifier.json "
                       "(default: ~/.cache/distgan/domain/DATASET, where eval and training look for it)")
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    limit = read_manifest(args.data).source.get("limit")
    if limit and args.out is None:  # a subset keeps the dataset's name, so it would replace the full set's classifier
        parser.error(f"{args.data} is a {limit.get('images')}-image subset (distgan-data prepare --limit); the "
                     f"default place holds the classifier every evaluation of this dataset uses: train it on the "
                     f"full set, or give --out")
    model = train_domain_classifier(args.data, epochs=args.epochs, batch_size=args.batch_size,
                                    seed=args.seed, log=True)
    save_domain_classifier(model, args.out or default_domain_dir(model.spec.dataset))
    print(json.dumps(model.spec.record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
