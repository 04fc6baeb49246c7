"""Vectorised rendering of H&E-like 96x96 patches for synthetic PCam.

Colours follow the Beer-Lambert model of stained tissue: each pixel carries an eosin density
(pink stroma) and a haematoxylin density (purple nuclei); its RGB value is
``255 * exp(-(e * E + h * H))`` for per-patch stain vectors ``E`` and ``H``. Nuclei come from a
fixed bank built once per process: periodic fields of small, round, lighter normal nuclei
(copied in at a random offset and view) and stamps of whole tumour-like clusters (large, dark,
irregular, crowded nuclei, added with one slice per cluster). A chunk of patches costs a few
dozen numpy calls, a short loop over its clusters, and no per-pixel Python.

The label design keeps whole-patch colour statistics uninformative: every patch holds the
same random number of tumour-like clusters; a positive has one of them inside the centre
32x32 square, a negative has all of them outside it. Only *where* the tumour cells lie tells
the classes apart, which is what PCam's label means.

``difficulty`` (0..1) makes the task as hard as real PCam, where a good model's AUC is well
below 1. Each of its effects touches both classes alike, so colour statistics stay
uninformative and the label still means "tumour cells in the centre square". With
``h = 1.5 * difficulty``:

- a tumour cluster is, with probability ``min(1, h)``, a small focus of 2-6 nuclei instead of
  a crowd of 18-30;
- tumour clusters are fainter, by a factor drawn from ``[max(0.1, 1 - 0.7 * h), 1]``;
- the centre cluster wanders further from the middle, by up to ``4 + 10 * h`` px (its middle
  stays inside the centre square, so some of its cells are in it);
- a patch holds, with probability ``min(1, h)``, an aggregate of dark, round nuclei a little
  smaller than tumour cells (like lymphocytes), anywhere, the centre included: dark, but not
  tumour;
- a patch holds, with probability ``min(1, h / 2)``, one more small focus just outside the
  centre square (its nearest cell 3-6 px from the edge): tumour, but not in the centre.

At ``difficulty = 0`` none of this happens and the patches are those of the easy task, byte
for byte. The draws that difficulty needs come from a generator spawned from the chunk's
one, so the easy task's draws are untouched.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["SIZE", "render_chunk"]

SIZE = 96
_NUCLEUS = 7  # side of a normal nucleus stamp (radius <= 2.8 px plus a soft edge)
_CLUSTER = 31  # side of a tumour-cluster stamp: nuclei (side 11) within 10 px of its centre
_HALF = _CLUSTER // 2
_GRID = 7  # control points per side of the low-frequency fields
# Cluster centres outside the centre square: 16 px from the patch edges, so that a cluster
# (within 15 px of its centre) stays inside the patch and out of the centre square [32, 64).
_RING = np.array(
    [(16, 16), (16, 48), (16, 80), (48, 16), (48, 80), (80, 16), (80, 48), (80, 80)],
    dtype=np.int64,
)
_CENTRE = 48
_CENTRE_JITTER = 4
_H_STAIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)  # Ruifrok & Johnston's vectors
_E_STAIN = np.array([0.07, 0.99, 0.11], dtype=np.float32)


def _nucleus(rng: np.random.Generator, side: int, radius: tuple[float, float],
             elongation: tuple[float, float], roughness: float, chromatin: float) -> np.ndarray:
    """One nucleus stamp (side, side) with values in 0..1."""
    half = side // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    r = rng.uniform(*radius)
    ratio = rng.uniform(*elongation)
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * xx + s * yy) / r
    v = (-s * xx + c * yy) / (r * ratio)
    dist = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    edge = 1.0 + roughness * sum(
        rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    body = np.clip((edge - dist) * r / 1.2 + 0.5, 0.0, 1.0)  # ~1 px soft edge
    texture = 1.0 - chromatin * rng.random((side, side), dtype=np.float32)
    return (body * texture).astype(np.float32)


def _cluster(rng: np.random.Generator, small: bool = False) -> np.ndarray:
    """One tumour-like cluster stamp: 18-30 large, dark, irregular, crowded nuclei.

    ``small``: a focus of 2-6 such nuclei within 4 px of the middle instead (so within 10 px
    of it, edges included).
    """
    canvas = np.zeros((_CLUSTER, _CLUSTER), dtype=np.float32)
    side = 11
    count, spread = (rng.integers(2, 7), 4.0) if small else (rng.integers(18, 30), 10.0)
    for _ in range(int(count)):
        radius = spread * np.sqrt(rng.random())
        angle = rng.uniform(0, 2 * np.pi)
        y = round(_HALF + radius * np.sin(angle)) - side // 2
        x = round(_HALF + radius * np.cos(angle)) - side // 2
        stamp = _nucleus(rng, side, (3.2, 4.9), (0.55, 1.0), 0.18, 0.45)
        canvas[y:y + side, x:x + side] += stamp * rng.uniform(0.9, 1.4)
    return canvas


def _aggregate(rng: np.random.Generator) -> np.ndarray:
    """A look-alike aggregate stamp: 15-35 dark, round, uniform nuclei a little smaller than
    tumour cells, as lymphocytes crowd in a lymph node."""
    canvas = np.zeros((_CLUSTER, _CLUSTER), dtype=np.float32)
    spread = rng.uniform(5.0, 10.0)
    side = 9
    for _ in range(int(rng.integers(15, 36))):
        radius = spread * np.sqrt(rng.random())
        angle = rng.uniform(0, 2 * np.pi)
        y = round(_HALF + radius * np.sin(angle)) - side // 2
        x = round(_HALF + radius * np.cos(angle)) - side // 2
        stamp = _nucleus(rng, side, (2.2, 3.3), (0.8, 1.0), 0.06, 0.2)
        canvas[y:y + side, x:x + side] += stamp * rng.uniform(1.0, 1.4)
    return canvas


def _nuclei_field(rng: np.random.Generator, stamps: np.ndarray, count: int) -> np.ndarray:
    """A periodic (SIZE, SIZE) field of ``count`` scattered normal nuclei."""
    ys = rng.integers(0, SIZE, count)
    xs = rng.integers(0, SIZE, count)
    dy, dx = np.mgrid[0:_NUCLEUS, 0:_NUCLEUS]
    rows = (ys[:, None] + dy.ravel()[None, :]) % SIZE  # wrap around: the field tiles
    cols = (xs[:, None] + dx.ravel()[None, :]) % SIZE
    weights = stamps[rng.integers(0, len(stamps), count)] * rng.uniform(0.45, 0.8, (count, 1))
    flat = np.bincount((rows * SIZE + cols).ravel(), weights.ravel(), SIZE * SIZE)
    return flat.reshape(SIZE, SIZE).astype(np.float32)


def _views(image: np.ndarray) -> list[np.ndarray]:
    """The eight dihedral views (rotations and mirror images) of a square image."""
    return [np.rot90(image, k)[:, ::flip] for k in range(4) for flip in (1, -1)]


def _upsample_matrix(points: int, size: int) -> np.ndarray:
    """Linear interpolation from ``points`` control points to ``size`` pixels (size, points)."""
    pos = np.linspace(0, points - 1, size, dtype=np.float32)
    low = np.clip(np.floor(pos).astype(int), 0, points - 2)
    frac = pos - low
    frac = (1 - np.cos(np.pi * frac)) / 2  # smooth steps: rounded gaps, not polygons
    mat = np.zeros((size, points), dtype=np.float32)
    mat[np.arange(size), low] = 1 - frac
    mat[np.arange(size), low + 1] = frac
    return mat


class _Bank:
    """The fixed stamps and fields every chunk uses (the same for every seed).

    Scattered normal nuclei come as 16 periodic fields of 12 to 70 nuclei in their eight
    dihedral views (128 fields, tiled 2x2); each chunk takes 96x96 windows at a random
    offset, so patches get varied backgrounds for the cost of a copy.
    """

    def __init__(self) -> None:
        rng = np.random.default_rng(20260101)
        normal = np.stack(
            [_nucleus(rng, _NUCLEUS, (1.6, 2.8), (0.75, 1.0), 0.06, 0.25) for _ in range(64)]
        ).reshape(64, -1)
        fields = [_nuclei_field(rng, normal, int(c)) for c in np.linspace(12, 70, 16)]
        # tiled 2x2, so that a 96x96 window at any offset is a rolled field
        self.fields = np.stack([np.tile(v, (2, 2)) for f in fields for v in _views(f)])
        self.clusters = np.stack([v for _ in range(64) for v in _views(_cluster(rng))])
        self.up = _upsample_matrix(_GRID, SIZE)
        # fine stroma grain, drawn once: a fresh random field per patch costs more than the rest
        self.grain = 0.25 * rng.random((64, SIZE, SIZE), dtype=np.float32)
        # drawn last, so that the stamps above are those of the easy task
        self.foci = np.stack([v for _ in range(64) for v in _views(_cluster(rng, small=True))])
        self.aggregates = np.stack([v for _ in range(64) for v in _views(_aggregate(rng))])


@functools.cache
def _bank() -> _Bank:
    """The bank, built once per process on first use."""
    return _Bank()


def _field(rng: np.random.Generator, n: int, up: np.ndarray) -> np.ndarray:
    """``n`` smooth random fields (n, SIZE, SIZE) in roughly 0..1."""
    grid = rng.random((n, _GRID, _GRID), dtype=np.float32)
    return up @ grid @ up.T


def _harshness(difficulty: float) -> float:
    """``h`` of the module's docstring: how strongly each effect of difficulty applies."""
    return 1.5 * difficulty


def _fainter(rng: np.random.Generator, h: float, count: int) -> np.ndarray:
    """Per cluster, a factor its stain is multiplied by."""
    return rng.uniform(max(0.1, 1.0 - 0.7 * h), 1.0, count)


def _harder(rng: np.random.Generator, difficulty: float, bank: _Bank, corners: np.ndarray,
            ring: int, stamps: list[np.ndarray], strength: np.ndarray
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """Small foci, fainter clusters, and centre clusters further from the middle.

    ``corners[ring:]`` are the centre clusters' stamp corners; they move in place.
    """
    h = _harshness(difficulty)
    count = len(stamps)
    small = np.flatnonzero(rng.random(count) < h)
    for i, f in zip(small.tolist(), rng.integers(0, len(bank.foci), len(small)).tolist(),
                    strict=True):
        stamps[i] = bank.foci[f]
    strength = strength * _fainter(rng, h, count)
    reach = round(10 * h)
    if reach and count > ring:
        moved = corners[ring:] + rng.integers(-reach, reach + 1, (count - ring, 2))
        # the cluster's middle stays inside the centre square [32, 64), 1 px from its edge
        corners[ring:] = np.clip(moved, 33 - _HALF, 62 - _HALF)
    return stamps, strength


def _extras(rng: np.random.Generator, difficulty: float, bank: _Bank, n: int
            ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Look-alike aggregates anywhere, and tumour foci just outside the centre square.

    Returns ``(patch, stamp, corner, strength)`` per added stamp.
    """
    h = _harshness(difficulty)
    aggregated = np.flatnonzero(rng.random(n) < h)
    anywhere = rng.integers(_HALF, SIZE - _HALF, (len(aggregated), 2))  # inside the patch
    near = np.flatnonzero(rng.random(n) < h / 2)
    # a focus reaches at most 9 px from its middle: 12-15 px outside the square keeps it out
    side = rng.integers(0, 4, len(near))
    gap = rng.integers(12, 16, len(near))
    along = rng.integers(36, 61, len(near))
    across = np.where(side % 2 == 0, 32 - gap, 63 + gap)
    middles = np.where((side < 2)[:, None], np.stack([across, along], 1),
                       np.stack([along, across], 1))
    stamps = [bank.aggregates[a] for a in rng.integers(0, len(bank.aggregates),
                                                       len(aggregated)).tolist()]
    stamps += [bank.foci[f] for f in rng.integers(0, len(bank.foci), len(near)).tolist()]
    strength = np.concatenate([rng.uniform(0.8, 1.2, len(aggregated)),
                               rng.uniform(0.85, 1.15, len(near)) * _fainter(rng, h, len(near))])
    corners = np.concatenate([anywhere, middles]).astype(np.int64) - _HALF
    return np.concatenate([aggregated, near]), stamps, corners, strength


def render_chunk(rng: np.random.Generator, labels: np.ndarray, difficulty: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Render one patch per label.

    Args:
        rng: the chunk's random generator.
        labels: 0/1 per patch.
        difficulty: 0 (every tumour cluster large and dark: an easy task) to 1 (small,
            faint foci, near misses and dark look-alikes); see the module's docstring.

    Returns:
        ``(x, clusters)``: the patches (n, 96, 96, 3) uint8 and the number of tumour-like
        clusters in each patch.
    """
    bank = _bank()
    n = len(labels)
    positive = labels.astype(bool)
    hard = rng.spawn(1)[0] if difficulty > 0 else None  # leaves rng's own draws as they were

    # Tissue: a smooth field thresholded into white gaps, covering 0..~35% of the patch.
    tissue = _field(rng, n, bank.up)
    tissue -= rng.uniform(0.0, 0.35, (n, 1, 1)).astype(np.float32)
    tissue *= 12.0
    tissue += 0.5
    np.clip(tissue, 0.0, 1.0, out=tissue)

    # Normal nuclei: scattered, small, lighter, fading in the gaps; density varies a lot.
    dy, dx = rng.integers(0, SIZE, 2)
    haem = bank.fields[rng.integers(0, len(bank.fields), n), dy:dy + SIZE, dx:dx + SIZE]
    haem *= tissue

    # Tumour clusters: the same count distribution for both classes; only placement differs.
    clusters = rng.integers(1, 4, n)  # 1..3 per patch
    outside = clusters - positive  # clusters put on ring slots
    slots = np.argsort(rng.random((n, len(_RING))), axis=1)  # random slot order per patch
    rows, cols = np.nonzero(np.arange(3)[None, :] < outside[:, None])
    centres = _RING[slots[rows, cols]]
    inside = np.flatnonzero(positive)
    jitter = rng.integers(-_CENTRE_JITTER, _CENTRE_JITTER + 1, (len(inside), 2))
    centres = np.concatenate([centres, _CENTRE + jitter]) - _HALF  # stamp corners
    c_patch = np.concatenate([rows, inside])
    chosen = rng.integers(0, len(bank.clusters), len(c_patch))
    strength = rng.uniform(0.85, 1.15, len(c_patch))
    stamps = [bank.clusters[c] for c in chosen.tolist()]
    if hard is not None:
        stamps, strength = _harder(hard, difficulty, bank, centres, len(rows), stamps, strength)
        more = _extras(hard, difficulty, bank, n)
        c_patch = np.concatenate([c_patch, more[0]])
        stamps += more[1]
        centres = np.concatenate([centres, more[2]])
        strength = np.concatenate([strength, more[3]])
    for p, (top, left), stamp, s in zip(c_patch.tolist(), centres.tolist(), stamps,
                                        strength.tolist(), strict=True):
        # about two clusters per patch: a short loop of whole-stamp additions
        haem[p, top:top + _CLUSTER, left:left + _CLUSTER] += stamp * s
    np.minimum(haem, 2.2, out=haem)

    # Stroma: eosin with smooth and fine texture; gaps are almost unstained.
    eosin = _field(rng, n, bank.up)
    eosin *= 0.5
    eosin += 0.55
    eosin += bank.grain[rng.integers(0, len(bank.grain), n)]
    eosin *= rng.uniform(0.35, 0.7, (n, 1, 1)).astype(np.float32)
    tissue *= 0.96
    tissue += 0.04
    eosin *= tissue
    displaced = np.minimum(haem, 1.0)  # nuclei displace stroma
    displaced *= -0.5
    displaced += 1.0
    eosin *= displaced
    haem += 0.03  # faint background haematoxylin

    # Per-patch stain vectors vary a little, as between labs and scanners.
    h_vec = _H_STAIN + rng.uniform(-0.06, 0.06, (n, 3)).astype(np.float32)
    e_vec = _E_STAIN + rng.uniform(-0.04, 0.04, (n, 3)).astype(np.float32)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    density = np.empty_like(eosin)
    for c in range(3):  # three colour channels
        np.multiply(eosin, e_vec[:, c, None, None], out=density)
        density += haem * h_vec[:, c, None, None]
        np.negative(density, out=density)
        np.exp(density, out=density)
        density *= 255.0
        out[..., c] = density
    return out, clusters
