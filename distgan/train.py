"""Train a GAN: `accelerate launch distgan/train.py --config configs/fashion_dcgan.yaml [key=value ...]`.

Also runs as `python -m distgan.train` or `distgan-train` (one process).
"""

from __future__ import annotations

import argparse
import os
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
from distgan.training.signals import StopNow  # noqa: E402


# One exit status per outcome (README, "Exit status"); the markers in runs/NAME/ say the same.
EXIT_DONE = 0  # completed (COMPLETED), or stopped with its checkpoint written (STOPPED)
EXIT_FAILED = 2  # a setup or run error, reported in one line by rank 0 (an unforeseen crash: 1, with its traceback)
EXIT_STOPPED_AT_ONCE = 130  # a second Ctrl-C: stopped without a checkpoint (128 + SIGINT, as shells report it)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distgan-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.steps=2000 name=test")
    args = parser.parse_args(argv)
    reports = os.environ.get("RANK", "0") == "0"  # rank 0 reports what every rank learns alike
    try:
        cfg = load_config(args.config, args.overrides)
        (get_family(cfg.model.arch).own_trainer() or train)(cfg)  # LAPGAN: one GAN per level, its own trainer
    except (ConfigError, DataError, TrainingError) as exc:
        if reports or not getattr(exc, "every_rank", True):
            print(f"distgan-train: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StopNow as exc:
        if reports:
            print(f"distgan-train: {exc}; resume from the last checkpoint with train.resume=auto", file=sys.stderr)
        return EXIT_STOPPED_AT_ONCE
    except KeyboardInterrupt:  # before the run took stop signals as its own (setting up): nothing to save yet
        if reports:
            print("distgan-train: interrupted while setting up, before the first step; nothing written to keep",
                  file=sys.stderr)
        return EXIT_STOPPED_AT_ONCE
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
