"""`distgan-data`: prepare shards from raw datasets, verify them, look at them."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import ImageColor

from distgan.data.loader import read_manifest
from distgan.data.manifest import MANIFEST_NAME, DataError
from distgan.data.shards import iter_shard_chunks, verify, write_shards
from distgan.data.cifar import CIFAR, read_cifar_dataset
from distgan.data.folders import WORK_NAME, FolderOptions, read_celeba_dataset, read_folder_dataset
from distgan.data.report import REPORT_NAME
from distgan.data.sources import RawDataset, limit_split, read_idx_dataset
from distgan.data.transforms import TRANSFORMS
from distgan.runtime import grid, to_pil


def read_raw(args: argparse.Namespace) -> RawDataset:
    """The raw dataset `prepare` was asked for."""
    if args.dataset in ("fashion-mnist", "mnist"):
        return read_idx_dataset(args.dataset, args.src, download=args.download)
    if args.dataset in CIFAR:
        return read_cifar_dataset(args.dataset, args.src, download=args.download)
    if args.dataset == "celeba":
        if args.src is None:
            raise DataError(
                "celeba needs --src: the aligned images (img_align_celeba.zip or its folder) from "
                "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, with list_eval_partition.txt"
            )
        return read_celeba_dataset(args.src, args.partition, args.size, args.crop, args.attr, args.attr_file)
    if args.src is None:
        raise DataError("folder needs --src DIR")
    for flag, value in (("--size", args.size), ("--workers", args.workers), ("--bad-limit", args.bad_limit)):
        if value is not None and value < 1:
            raise DataError(f"{flag} {value}: must be at least 1")
    options = FolderOptions(
        transform=args.transform or ("center-crop" if args.resize else None), background=args.background,
        alpha=args.alpha, skip_bad=args.skip_bad, dedup=args.dedup, metadata=args.metadata,
        label_column=args.label_column, workers=args.workers, bad_limit=args.bad_limit,
    )
    return read_folder_dataset(args.src, args.size, args.channels, False, args.test_fraction, args.seed,
                               options, out=args.out)


def _clear_interrupted_writes(out: Path) -> None:
    """Shard staging folders a killed prepare left (`.partial-PID`): their shards are written afresh."""
    for stale in sorted(out.glob(".partial-*")):
        print(f"removing {stale}: shards of an interrupted prepare are written afresh")
        shutil.rmtree(stale, ignore_errors=True)


def cmd_prepare(args: argparse.Namespace) -> int:
    if (args.out / MANIFEST_NAME).exists() and not args.overwrite:
        raise DataError(f"{args.out / MANIFEST_NAME} exists; pass --overwrite to replace the dataset")
    _clear_interrupted_writes(args.out)
    raw = read_raw(args)
    if args.limit is not None:
        raw = limit_split(raw, args.limit, args.seed)
    if raw.report is not None:
        raw.report.write(args.out)
    manifest = write_shards(raw, args.out, args.samples_per_shard, args.chunk_size, args.seed,
                            args.overwrite)
    shutil.rmtree(args.out / WORK_NAME, ignore_errors=True)
    limit = manifest.source.get("limit")
    for name, split in manifest.splits.items():
        limited = limit is not None and limit["split"] == name
        subset = f" (a seeded subset of {limit['of']}, seed {limit['seed']})" if limited else ""
        print(f"{name}: {split.num_samples} images{subset} in {len(split.shards)} shards")
    if raw.report is not None:
        summary = raw.report.summary()
        converted = ", ".join(f"{n} {kind}" for kind, n in summary["converted"].items()) or "none"
        print(f"skipped {summary.get('files_skipped', 0)} file(s), converted: {converted} "
              f"(see {args.out / REPORT_NAME})")
    print(f"wrote {args.out / MANIFEST_NAME}")
    return 0


def background_colour(text: str) -> tuple[int, int, int]:
    """--background: a CSS colour name, #rrggbb, or R,G,B."""
    try:
        if "," in text:
            rgb = tuple(int(v) for v in text.split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
            return rgb
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a colour name, #rrggbb or R,G,B (0..255)") from None


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
    prep.add_argument("dataset", choices=["fashion-mnist", "mnist", "cifar10", "cifar100", "celeba", "folder"])
    prep.add_argument("--out", type=Path, required=True, help="output directory for shards + dataset.json")
    prep.add_argument("--src", type=Path,
                      help="raw files (IDX dir, cifar-10-binary.tar.gz, CelebA zip/dir, image tree)")
    prep.add_argument("--download", action="store_true",
                      help="(mnist, fashion-mnist, cifar10, cifar100) fetch from the official site if not "
                           "found locally, digest checked")
    prep.add_argument("--partition", type=Path, help="(celeba) list_eval_partition.txt")
    prep.add_argument("--size", type=int, default=64, help="(celeba, folder) output side in pixels")
    prep.add_argument("--crop", type=int, default=140,
                      help="(celeba) center-crop side before resizing (default 140)")
    prep.add_argument("--attr", metavar="NAME", help="(celeba) label 0/1 by this attribute, e.g. Smiling")
    prep.add_argument("--attr-file", type=Path, help="(celeba) list_attr_celeba.txt (default: beside --src)")
    prep.add_argument("--channels", type=int, choices=[1, 3], default=3, help="(folder) 1=gray, 3=RGB")
    prep.add_argument("--transform", choices=TRANSFORMS,
                      help="(folder) how images that are not SIZExSIZE become so (default: refuse them)")
    prep.add_argument("--resize", action="store_true", help="(folder) the same as --transform center-crop")
    prep.add_argument("--background", type=background_colour, default=(255, 255, 255),
                      help="(folder) colour under transparent pixels and around --transform pad (default white)")
    prep.add_argument("--alpha", choices=["composite", "error"], default="composite",
                      help="(folder) transparent pixels: composite on --background, or refuse the image")
    prep.add_argument("--skip-bad", action="store_true",
                      help=f"(folder) write the good images and list the bad in OUT/{REPORT_NAME} "
                           "(default: stop, naming every bad file)")
    prep.add_argument("--dedup", action="store_true", help="(folder) drop exact duplicates (same bytes)")
    prep.add_argument("--metadata", type=Path,
                      help="(folder) labels from metadata.csv / metadata.jsonl (file_name + --label-column)")
    prep.add_argument("--label-column", default="label", help="(folder) --metadata's label column")
    prep.add_argument("--workers", type=int, help="(folder) decoding processes (default: every core)")
    prep.add_argument("--bad-limit", type=int, default=50, help="(folder) bad files named in the error")
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
