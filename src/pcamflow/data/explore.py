"""An exploration report of PCam's HDF5 files, streamed in bounded memory.

:func:`explore` writes into a folder:

- ``montage_0.png`` and ``montage_1.png``: sample patches of each class, with the centre 32x32
  square (the part PCam's label is about) outlined;
- ``class_balance.png``: patches per class and split (bar chart);
- ``stats.json``: per split, the class counts, the per-channel mean and standard deviation
  (0..255 scale) and the count of exact duplicate patches, within each split and across
  each pair of splits (PCam is known to contain duplicates);
- ``index.html``: all of the above on one page.

Patches are read in chunks; what is kept per patch is its label and an 8-byte digest, so the
memory used stays small whatever the split size.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pcamflow._io import atomic_path
from pcamflow.data._files import SPLITS, writable_folder
from pcamflow.data.pcam import PcamReader, open_split

__all__ = ["explore", "outline_centre"]

_OUTLINE = np.array([0, 200, 0], dtype=np.uint8)


def outline_centre(patch: np.ndarray) -> np.ndarray:
    """A copy of a (96, 96, 3) patch with the centre 32x32 square outlined in green."""
    out = patch.copy()
    lo, hi = 31, 64  # one pixel outside the square [32, 64), so no centre pixel is covered
    out[lo, lo:hi + 1] = out[hi, lo:hi + 1] = _OUTLINE
    out[lo:hi + 1, lo] = out[lo:hi + 1, hi] = _OUTLINE
    return out


def _montage(patches: list[np.ndarray], columns: int = 8) -> Image.Image:
    rows = max(1, -(-len(patches) // columns))
    gap = 2
    canvas = np.full((rows * (96 + gap) + gap, columns * (96 + gap) + gap, 3), 255, np.uint8)
    for i, patch in enumerate(patches):
        r, c = divmod(i, columns)
        y, x = gap + r * (96 + gap), gap + c * (96 + gap)
        canvas[y:y + 96, x:x + 96] = outline_centre(patch)
    return Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2),
                                          Image.NEAREST)


def _digests(patches: np.ndarray) -> np.ndarray:
    """An 8-byte BLAKE2b digest per patch, as uint64 (exact duplicates share one)."""
    flat = np.ascontiguousarray(patches).reshape(len(patches), -1)
    joined = b"".join(hashlib.blake2b(row, digest_size=8).digest() for row in flat)
    return np.frombuffer(joined, dtype=np.uint64)


def _scan_split(reader: PcamReader, bar: tqdm) -> dict[str, Any]:
    total = np.zeros(3, dtype=np.float64)
    squares = np.zeros(3, dtype=np.float64)
    digests = []
    for _, patches, _ in reader.chunks():
        pixels = patches.reshape(-1, 3).astype(np.float64)
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
        digests.append(_digests(patches))
        bar.update(len(patches))
    count = len(reader) * 96 * 96
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {"mean": mean.round(3).tolist(), "std": std.round(3).tolist(),
            "digests": np.concatenate(digests)}


def _bar_chart(counts: dict[str, dict[str, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(counts)
    x = np.arange(len(splits))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for offset, label, colour in ((-0.2, "0", "#d98cb3"), (0.2, "1", "#4b2a7b")):
        values = [counts[s][label] for s in splits]
        bars = ax.bar(x + offset, values, width=0.4, label=f"class {label}", color=colour)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, splits)
    ax.set_ylabel("patches")
    ax.set_title("Class balance per split")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def explore(
    source: str | Path,
    out_dir: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    cache_dir: str | Path | None = None,
    verify_checksums: bool = True,
    per_class: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the exploration report of the PCam files in ``source``; return ``index.html``.

    Raises:
        DataError: as :func:`pcamflow.data.pcam.open_split` does, or ``out_dir`` is not
            writable.
    """
    out = writable_folder(out_dir)
    opened = [open_split(source, s, cache_dir=cache_dir, verify_checksums=verify_checksums,
                         progress=progress) for s in splits]
    stats: dict[str, Any] = {"splits": {}, "duplicates_across": {}}
    digests: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {"0": [], "1": []}
    rng = np.random.default_rng(seed)
    with tqdm(total=sum(s.length for s in opened), unit="patch", desc="exploring",
              disable=None if progress else True) as bar:
        for split in opened:
            with PcamReader(split) as reader:
                labels = reader.labels()
                scanned = _scan_split(reader, bar)
                for label in ("0", "1"):
                    wanted = per_class - len(samples[label])
                    pool = np.flatnonzero(labels == int(label))
                    if wanted > 0 and len(pool):
                        picks = np.sort(rng.choice(pool, min(wanted, len(pool)), replace=False))
                        samples[label].extend(reader.read(int(i), int(i) + 1)[0] for i in picks)
            digests[split.split] = scanned.pop("digests")
            unique = len(np.unique(digests[split.split]))
            stats["splits"][split.split] = {
                "patches": split.length,
                "counts": {"0": int((labels == 0).sum()), "1": int((labels == 1).sum())},
                "channel_mean": scanned["mean"],
                "channel_std": scanned["std"],
                "duplicates": split.length - unique,
                "files": [str(split.x_path), str(split.y_path)],
                "synthetic": split.synthetic,
            }
    for a, b in itertools.combinations(digests, 2):
        shared = np.intersect1d(digests[a], digests[b])
        stats["duplicates_across"][f"{a}/{b}"] = len(shared)
    for label, patches in samples.items():
        with atomic_path(out / f"montage_{label}.png") as tmp:
            _montage(patches).save(tmp, format="PNG")
    counts = {s: v["counts"] for s, v in stats["splits"].items()}
    _bar_chart(counts, out / "class_balance.png")
    with atomic_path(out / "stats.json") as tmp:
        tmp.write_text(json.dumps(stats, indent=2))
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(_html(stats, source), encoding="utf-8")
    return index


def _html(stats: dict[str, Any], source: str | Path) -> str:
    rows = []
    for split, s in stats["splits"].items():
        mean = ", ".join(f"{v:.1f}" for v in s["channel_mean"])
        std = ", ".join(f"{v:.1f}" for v in s["channel_std"])
        rows.append(
            f"<tr><td>{html.escape(split)}</td><td>{s['patches']}</td>"
            f"<td>{s['counts']['0']}</td><td>{s['counts']['1']}</td>"
            f"<td>{mean}</td><td>{std}</td><td>{s['duplicates']}</td></tr>"
        )
    across = "".join(
        f"<tr><td>{html.escape(pair)}</td><td>{n}</td></tr>"
        for pair, n in stats["duplicates_across"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PCam exploration</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}
img{{max-width:100%}}</style></head><body>
<h1>PCam exploration</h1>
<p>Source: <code>{html.escape(str(source))}</code></p>
<h2>Splits</h2>
<table><tr><th>split</th><th>patches</th><th>class 0</th><th>class 1</th>
<th>channel mean (R, G, B)</th><th>channel std (R, G, B)</th><th>exact duplicates</th></tr>
{"".join(rows)}</table>
<h2>Exact duplicates across splits</h2>
<table><tr><th>splits</th><th>distinct patches in both</th></tr>{across}</table>
<h2>Class balance</h2><img src="class_balance.png" alt="class balance per split">
<h2>Class 0 (no tumour in the centre)</h2>
<p>The green square marks the centre 32x32 pixels, which the label is about.</p>
<img src="montage_0.png" alt="class 0 patches">
<h2>Class 1 (tumour in the centre)</h2><img src="montage_1.png" alt="class 1 patches">
</body></html>
"""
