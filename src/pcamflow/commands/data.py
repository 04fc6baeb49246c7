"""`pcamflow` sub-commands of the data part: synth, convert, explore."""

from __future__ import annotations

import argparse


def cmd_synth(args: argparse.Namespace) -> int:
    from pcamflow.data.synth import write_synthetic_pcam

    paths = write_synthetic_pcam(
        args.out, train=args.train, valid=args.valid, test=args.test, seed=args.seed,
        gzip=args.gzip, progress=not args.quiet,
    )
    print(f"synthetic PCam: {len(paths)} files in {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pcamflow.data.convert import convert_pcam

    dataset = convert_pcam(
        args.src, args.dst, splits=args.splits, quality=args.quality, workers=args.workers,
        cache_dir=args.cache_dir, verify_checksums=not args.no_verify, progress=not args.quiet,
    )
    for split, counts in dataset.counts.items():
        shown = ", ".join(f"class {label}: {n}" for label, n in sorted(counts.items()))
        print(f"{split:<6} {sum(counts.values()):>7} images ({shown})")
    print(f"images in {dataset.root}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from pcamflow.data.explore import explore

    index = explore(
        args.src, args.out, splits=args.splits, cache_dir=args.cache_dir,
        verify_checksums=not args.no_verify, per_class=args.per_class, seed=args.seed,
        progress=not args.quiet,
    )
    print(f"report: {index}")
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _splits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", nargs="+", choices=("train", "valid", "test"),
                        default=["train", "valid", "test"], help="splits to use (default: all)")
    parser.add_argument("--cache-dir", help="where .h5.gz files are decompressed "
                        "(default: beside them)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check files named like real PCam against its checksums")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
    p = sub.add_parser("synth", help="write synthetic PCam-format HDF5 files")
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=_count, default=2048, help="train patches (default 2048)")
    p.add_argument("--valid", type=_count, default=512, help="valid patches (default 512)")
    p.add_argument("--test", type=_count, default=512, help="test patches (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--gzip", action="store_true", help="write .h5.gz files, as PCam ships")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert PCam HDF5 files to a JPEG image tree")
    p.add_argument("src", help="folder with the PCam .h5 or .h5.gz files")
    p.add_argument("dst", help="image tree root: DST/<split>/<label>/<split>_<index>.jpg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    _splits(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("explore", help="write an exploration report of PCam HDF5 files")
    p.add_argument("src", help="folder with the PCam .h5 or .h5.gz files")
    p.add_argument("out", help="report folder (index.html, PNGs, stats.json)")
    p.add_argument("--per-class", type=int, default=32,
                   help="patches per class in each montage (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the montage sample")
    _splits(p)
    p.set_defaults(func=cmd_explore)
