"""Train a GAN: `accelerate launch distgan/train.py --config configs/fashion_dcgan.yaml [key=value ...]`.

Also runs as `python -m distgan.train` or `distgan-train` (one process).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a file (accelerate launch distgan/train.py), Python puts distgan/ itself on
# sys.path, where config.py or models.py could shadow other packages' imports.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

from distgan.config import ConfigError, load_config  # noqa: E402
from distgan.data import DataError  # noqa: E402
from distgan.training import TrainingError, train  # noqa: E402
from distgan.models import get_family  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distgan-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=2000 name=test")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        (get_family(cfg.model.arch).own_trainer() or train)(cfg)  # LAPGAN: one GAN per level, its own trainer
    except (ConfigError, DataError, TrainingError) as exc:
        print(f"distgan-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
