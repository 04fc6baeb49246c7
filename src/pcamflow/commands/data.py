"""`pcamflow` sub-commands of the data part: download, synth, convert, explore."""

from __future__ import annotations

import argparse

from pcamflow.config import DataSettings
from pcamflow.errors import ConfigError

DATA = DataSettings()


def cmd_download(args: argparse.Namespace) -> int:
    import attrs

    from pcamflow.data.download import download_pcam

    try:  # the options are the [data] settings of the same names: checked the same way
        options = attrs.evolve(DATA, download_url=args.url, download_workers=args.workers,
                               download_timeout=args.timeout)
    except ConfigError as error:
        raise ConfigError(f"--{str(error).removeprefix('download_')}") from None
    paths = download_pcam(
        args.dest, splits=args.splits, meta=not args.no_meta, url=options.download_url,
        workers=options.download_workers, timeout=options.download_timeout,
        retries=args.retries, decompress_files=args.decompress, progress=not args.quiet,
    )
    for name in sorted(paths):
        print(f"{paths[name].stat().st_size:>14,} B  {name}")
    print(f"PCam in {args.dest}: {len(paths)} files, verified")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pcamflow.data.synth import DEFAULT_DIFFICULTY, write_synthetic_pcam

    difficulty = DEFAULT_DIFFICULTY if args.difficulty is None else args.difficulty
    paths = write_synthetic_pcam(
        args.out, train=args.train, valid=args.valid, test=args.test, seed=args.seed,
        difficulty=difficulty, gzip=args.gzip, progress=not args.quiet,
    )
    print(f"synthetic PCam: {len(paths)} files in {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pcamflow.data.convert import convert_pcam

    dataset = convert_pcam(
        args.src, args.dst, splits=args.splits, quality=args.quality, workers=args.workers,
        cache_dir=args.cache_dir, verify_checksums=not args.no_verify,
        reconvert=args.reconvert, progress=not args.quiet,
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


def _difficulty(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _split_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splits", nargs="+", choices=("train", "valid", "test"),
                        default=["train", "valid", "test"], help="splits to use (default: all)")


def _splits(parser: argparse.ArgumentParser) -> None:
    _split_choice(parser)
    parser.add_argument("--cache-dir", help="where .h5.gz files are decompressed "
                        "(default: beside them)")
    parser.add_argument("--no-verify", action="store_true",
                        help="do not check files named like real PCam against its checksums")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
    p = sub.add_parser(
        "download",
        help="download PCam from Zenodo (or a mirror): resumable, verified, in parallel",
        description="Fetch PCam's .h5.gz files (and meta tables) into DEST. An interrupted "
        "download resumes; every file is checked against its published checksum; files "
        "already there and verified are skipped.",
    )
    p.add_argument("dest", help="folder to fill (data.source of a run)")
    _split_choice(p)
    p.add_argument("--no-meta", action="store_true", help="skip the meta tables (.csv)")
    p.add_argument("--decompress", action="store_true",
                   help="also decompress each .h5.gz into its .h5 (beside it)")
    p.add_argument("--url", default=DATA.download_url,
                   help="URL template of a file, {name} its name (default: Zenodo record "
                   "2546921); for a mirror, e.g. https://mirror.example/pcam/{name}")
    p.add_argument("--workers", type=int, default=DATA.download_workers,
                   help=f"files at once (default {DATA.download_workers})")
    p.add_argument("--timeout", type=float, default=DATA.download_timeout,
                   help="seconds without data before a connection is resumed "
                   f"(default {DATA.download_timeout:g})")
    p.add_argument("--retries", type=_count, default=3,
                   help="resumptions of a dropped connection before giving up (default 3)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("synth", help="write synthetic PCam-format HDF5 files")
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=_count, default=2048, help="train patches (default 2048)")
    p.add_argument("--valid", type=_count, default=512, help="valid patches (default 512)")
    p.add_argument("--test", type=_count, default=512, help="test patches (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--difficulty", type=_difficulty,
                   help="0 (easy: any model scores AUC 1.000) to 1 (hard); the default puts a "
                   "good model's AUC in the mid 0.90s, as on the real PCam")
    p.add_argument("--gzip", action="store_true", help="write .h5.gz files, as PCam ships")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert PCam HDF5 files to a JPEG image tree")
    p.add_argument("src", help="folder with the PCam .h5 or .h5.gz files")
    p.add_argument("dst", help="image tree root: DST/<split>/<label>/<split>_<index>.jpg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--reconvert", action="store_true",
                   help="replace images in DST made from other data or at another quality "
                   "(default: stop with an error)")
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
