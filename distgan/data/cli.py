"""`distgan-data`: prepare shards from raw datasets, verify them, look at them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from distgan.data.loader import read_manifest
from distgan.data.manifest import MANIFEST_NAME, DataError
from distgan.data.shards import iter_shard_chunks, verify, write_shards
from distgan.data.folders import read_celeba_dataset, read_folder_dataset
from distgan.data.sources import limit_split, read_idx_dataset
from distgan.runtime import grid, to_pil


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.dataset in ("fashion-mnist", "mnist"):
        raw = read_idx_dataset(args.dataset, args.src, download=args.download)
    elif args.dataset == "celeba":
        if args.src is None:
            raise DataError(
                "celeba needs --src: the aligned images (img_align_celeba.zip or its folder) from "
                "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, with list_eval_partition.txt"
            )
        raw = read_celeba_dataset(args.src, args.partition, args.size, args.crop)
    else:
        if args.src is None:
            raise DataError("folder needs --src DIR")
        raw = read_folder_dataset(args.src, args.size, args.channels, args.resize,
                                  args.test_fraction, args.seed)
    if args.limit is not None:
        raw = limit_split(raw, args.limit, args.seed)
    manifest = write_shards(raw, args.out, args.samples_per_shard, args.chunk_size, args.seed,
                            args.overwrite)
    limit = manifest.source.get("limit")
    for name, split in manifest.splits.items():
        limited = limit is not None and limit["split"] == name
        subset = f" (a seeded subset of {limit['of']}, seed {limit['seed']})" if limited else ""
        print(f"{name}: {split.num_samples} images{subset} in {len(split.shards)} shards")
    print(f"wrote {args.out / MANIFEST_NAME}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    problems = verify(args.dir, deep=not args.quick)
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"OK {args.dir}: every shard matches {MANIFEST_NAME}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    manifest = read_manifest(str(args.dir))
    images, labels = [], []
    for shard in manifest.split(args.split).shards:
        for chunk in iter_shard_chunks(str(args.dir / shard.name), manifest):
            images.append(chunk.images)
            labels.append(chunk.labels)
            if sum(map(len, images)) >= args.n:
                break
        if sum(map(len, images)) >= args.n:
            break
    stacked = np.concatenate(images)[: args.n]
    to_pil(grid(stacked, columns=8, min_side=512)).save(args.out)
    shown = np.concatenate(labels)[: args.n]
    if manifest.classes:
        counts = {manifest.classes[c]: int((shown == c).sum()) for c in np.unique(shown) if c >= 0}
        print("classes shown:", ", ".join(f"{k} x{v}" for k, v in counts.items()))
    print(f"wrote {args.out} ({len(stacked)} images of {args.split})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distgan-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="turn a raw dataset into WebDataset shards")
    prep.add_argument("dataset", choices=["fashion-mnist", "mnist", "celeba", "folder"])
    prep.add_argument("--out", type=Path, required=True, help="output directory for shards + dataset.json")
    prep.add_argument("--src", type=Path, help="raw files (IDX dir, CelebA zip/dir, image tree)")
    prep.add_argument("--download", action="store_true",
                      help="(mnist, fashion-mnist) fetch from the official mirrors if not found locally")
    prep.add_argument("--partition", type=Path, help="(celeba) list_eval_partition.txt")
    prep.add_argument("--size", type=int, default=64, help="(celeba, folder) output side in pixels")
    prep.add_argument("--crop", type=int, default=140,
                      help="(celeba) center-crop side before resizing (default 140)")
    prep.add_argument("--channels", type=int, choices=[1, 3], default=3, help="(folder) 1=gray, 3=RGB")
    prep.add_argument("--resize", action="store_true",
                      help="(folder) center-crop and resize images that are not SIZExSIZE")
    prep.add_argument("--test-fraction", type=float, default=0.1, help="(folder) share held out as test")
    prep.add_argument("--samples-per-shard", type=int, default=10_000)
    prep.add_argument("--chunk-size", type=int, default=256, help="images per tar member")
    prep.add_argument("--limit", type=int, metavar="N",
                      help="keep a seeded random N of the train split (the same N for the same --seed; "
                           "other splits stay whole): a small training set")
    prep.add_argument("--seed", type=int, default=0,
                      help="seed of the one-time shuffle into shards (and of --limit's subset)")
    prep.add_argument("--overwrite", action="store_true")
    prep.set_defaults(func=cmd_prepare)

    ver = sub.add_parser("verify", help="re-read every shard against dataset.json")
    ver.add_argument("dir", type=Path)
    ver.add_argument("--quick", action="store_true", help="sizes and sha256 only, no decoding")
    ver.set_defaults(func=cmd_verify)

    show = sub.add_parser("show", help="write a grid of real samples as PNG")
    show.add_argument("dir", type=Path)
    show.add_argument("--n", type=int, default=64)
    show.add_argument("--split", default="train")
    show.add_argument("--out", type=Path, default=Path("grid.png"))
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as exc:
        print(f"distgan-data: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
