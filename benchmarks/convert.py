"""HDF5 -> JPEG conversion: speed and memory, against the limit and a naive baseline.

One run, on the same synthetic patches, measures:

1. the limit: Pillow JPEG encode + file write of patches already in memory, spread over all
   cores (no HDF5 reading, no atomic rename, no bookkeeping);
2. the converter: ``pcamflow convert`` as a real process, its images/s and the peak resident
   memory of the whole process tree (the command and its workers, sampled every 20 ms);
3. a naive baseline: one process reads one patch, saves it with PIL, and goes on;
4. peak memory again on a split of ``--rss-patches`` patches (default 100,000), to show that it
   does not grow with the split;

and prints the ratios (targets: converter >= 0.8x the limit, peak RSS <= 0.5 GB) and the time
projected for the whole of PCam (327,680 patches). The converter's fixed cost (interpreter
start, imports, checks, worker start-up) is measured on a 64-patch split and shown apart, so
the per-image rate can be compared with the limit, which has no such cost. Use ``--dir`` to
put the scratch files on another file system (e.g. ``/dev/shm``: file creation on a busy disk
can cost more than the JPEG encode)::

    python benchmarks/convert.py                        # 20,000 patches, then 100,000 for RSS
    python benchmarks/convert.py --patches 5000 --rss-patches 0
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pcamflow.data._files import pcam_name
from pcamflow.data.synth import write_synthetic_pcam

PCAM_TOTAL = 327_680


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(children.get(current, []))
    return total


def run_converter(source: Path, out: Path, workers: int, quality: int) -> tuple[float, int]:
    """Seconds and peak tree RSS of one ``pcamflow convert`` process."""
    command = [sys.executable, "-m", "pcamflow.cli", "-q", "convert", str(source), str(out),
               "--splits", "train", "--no-verify", "--workers", str(workers),
               "--quality", str(quality)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"pcamflow convert failed with status {process.returncode}")
    return elapsed, peak


def _limit_worker(args: tuple[int, int, str, int]) -> int:
    start, stop, out, quality = args
    patches = _SHARED["x"]
    for i in range(start, stop):
        buffer = io.BytesIO()
        Image.fromarray(patches[i], "RGB").save(buffer, "JPEG", quality=quality)
        with open(f"{out}/{i}.jpg", "wb") as f:
            f.write(buffer.getvalue())
    return stop - start


_SHARED: dict[str, np.ndarray] = {}  # filled before forking; read by the forked workers


def run_limit(patches: np.ndarray, out: Path, workers: int, quality: int) -> float:
    """Seconds to encode and write ``patches`` from memory over ``workers`` processes."""
    _SHARED["x"] = patches
    out.mkdir(parents=True)
    n = len(patches)
    step = -(-n // (workers * 8))
    tasks = [(s, min(s + step, n), str(out), quality) for s in range(0, n, step)]
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        pool.map(_limit_worker, [(0, 0, str(out), quality)] * workers)  # workers up
        start = time.perf_counter()
        done = sum(pool.imap_unordered(_limit_worker, tasks))
        elapsed = time.perf_counter() - start
    assert done == n
    return elapsed


def run_naive(source: Path, out: Path, count: int, quality: int) -> float:
    """Seconds for one process to read, encode and save ``count`` patches one by one."""
    out.mkdir(parents=True)
    start = time.perf_counter()
    with h5py.File(source / pcam_name("train", "x"), "r") as f:
        x = f["x"]
        for i in range(count):
            Image.fromarray(x[i], "RGB").save(out / f"{i}.jpg", quality=quality)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=20_000, help="patches for the speed runs")
    parser.add_argument("--naive", type=int, default=3_000, help="patches for the naive run")
    parser.add_argument("--rss-patches", type=int, default=100_000,
                        help="patches for the memory run (0: skip)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--dir", help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="pcamflow-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        print(f"cores: {os.cpu_count()}, workers: {args.workers}, quality {args.quality}")
        source = scratch / "pcam"
        t = time.perf_counter()
        write_synthetic_pcam(source, train=args.patches, valid=0, test=0, seed=1, progress=False)
        print(f"synthetic source: {args.patches} patches in {time.perf_counter() - t:.1f} s")
        with h5py.File(source / pcam_name("train", "x"), "r") as f:
            patches = f["x"][...]

        limit_s = run_limit(patches, scratch / "limit", args.workers, args.quality)
        del patches
        _SHARED.clear()
        convert_s, convert_rss = run_converter(source, scratch / "converted", args.workers,
                                               args.quality)
        # the command's fixed cost (interpreter start, imports, checks, worker start-up),
        # measured on a 64-patch split, so that the per-image rate can be told apart
        tiny = scratch / "tiny"
        write_synthetic_pcam(tiny, train=64, valid=0, test=0, seed=3, progress=False)
        fixed_s, _ = run_converter(tiny, scratch / "tiny-converted", args.workers, args.quality)
        naive_n = min(args.naive, args.patches)
        naive_s = run_naive(source, scratch / "naive", naive_n, args.quality)

        limit_rate = args.patches / limit_s
        convert_rate = args.patches / convert_s
        steady_rate = args.patches / max(convert_s - fixed_s, 1e-9)
        naive_rate = naive_n / naive_s
        print(f"limit (in-memory encode + write, {args.workers} procs): {limit_rate:8.0f} img/s")
        print(f"converter (pcamflow convert, whole command):  {convert_rate:8.0f} img/s, "
              f"peak RSS {convert_rss / 2**20:.0f} MiB")
        print(f"  fixed cost of the command: {fixed_s:.2f} s; per-image rate without it: "
              f"{steady_rate:.0f} img/s")
        print(f"naive baseline (read one, save one, 1 proc):  {naive_rate:8.0f} img/s")
        print(f"converter / limit: {convert_rate / limit_rate:.2f}x whole command, "
              f"{steady_rate / limit_rate:.2f}x per image (target >= 0.8x)")
        print(f"converter / naive: {convert_rate / naive_rate:.2f}x whole command, "
              f"{steady_rate / naive_rate:.2f}x per image")
        projected = fixed_s + PCAM_TOTAL / steady_rate
        print(f"projected full PCam ({PCAM_TOTAL} patches): {projected:.0f} s "
              "(target <= 90 s; .h5 input, decompression of .gz not included)")

        if args.rss_patches:
            shutil.rmtree(source)
            shutil.rmtree(scratch / "converted")
            big = scratch / "big"
            t = time.perf_counter()
            write_synthetic_pcam(big, train=args.rss_patches, valid=0, test=0, seed=2,
                                 progress=False)
            print(f"synthetic source: {args.rss_patches} patches in "
                  f"{time.perf_counter() - t:.1f} s")
            big_s, big_rss = run_converter(big, scratch / "big-converted", args.workers,
                                           args.quality)
            print(f"converter on {args.rss_patches} patches: {args.rss_patches / big_s:.0f} "
                  f"img/s, peak RSS {big_rss / 2**20:.0f} MiB (target <= 512 MiB)")
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
