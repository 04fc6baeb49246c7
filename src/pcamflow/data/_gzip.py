"""Decompressing a PCam ``.h5.gz`` once, safely, into an ``.h5`` that later runs reuse.

:func:`decompress` streams a ``.gz`` into ``.<name>.partial`` (a fixed name, locked while it is
written, replaced by the next run if a run is killed) and renames it into place when complete.
A record beside the output (``.<name>.source.json``) says which ``.gz`` it came from and that
file's SHA-256, which is computed on the way, so the published checksum is checked without a
second pass over the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from pcamflow._io import atomic_path, locked, partial_path
from pcamflow.errors import DataError

__all__ = ["decompress", "decompressed", "gz_identity", "sidecar"]

_BLOCK = 1 << 20


def sidecar(h5: Path) -> Path:
    """The record beside a decompressed ``h5`` of the ``.gz`` it came from."""
    return h5.with_name(f".{h5.name}.source.json")


def gz_identity(gz: Path) -> dict[str, Any]:
    """What a decompression's record says of its ``.gz``: path, size, modification time."""
    stat = gz.stat()
    return {"source": str(gz.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def decompress(gz: str | Path, cache_dir: str | Path | None = None, *,
               progress: bool = True) -> tuple[Path, str | None]:
    """Decompress ``gz`` once; return the ``.h5`` path and the ``.gz``'s SHA-256.

    The output goes beside ``gz`` (or into ``cache_dir``) through a temporary file of a fixed
    name (``.<name>.partial``), renamed when complete; a run killed mid-way leaves it, and
    the next call replaces it. The file is locked while written, so two processes never
    decompress into it at once. A small record beside the output remembers which ``.gz`` it
    came from, so a later call reuses it (the SHA-256 is then the one recorded, or None).

    Raises:
        DataError: the file is missing, not gzip, truncated, or the folder is not writable.
    """
    gz = Path(gz)
    if not gz.exists():
        raise DataError(f"{gz}: file not found")
    folder = Path(cache_dir) if cache_dir is not None else gz.parent
    target = folder / gz.name[: -len(".gz")]
    identity = gz_identity(gz)
    done = decompressed(target, identity)
    if done is not None:
        return target, done.get("sha256")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with locked(partial_path(target)) as out:
            done = decompressed(target, identity)  # another process may have finished it
            if done is not None:
                return target, done.get("sha256")
            sidecar(target).unlink(missing_ok=True)  # the old record would lie from now on
            try:
                sha = _inflate(gz, out, identity["size"], progress)
            except BaseException:
                partial_path(target).unlink(missing_ok=True)
                raise
            os.replace(partial_path(target), target)
    except zlib.error as error:
        raise DataError(f"{gz}: not a valid gzip file ({error})") from None
    except PermissionError as error:
        raise DataError(
            f"{folder}: cannot write the decompressed {target.name} there ({error.strerror}); "
            "set data.cache_dir to a writable folder"
        ) from None
    with atomic_path(sidecar(target)) as tmp:
        tmp.write_text(json.dumps({**identity, "sha256": sha}))
    return target, sha


def decompressed(target: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The record of ``target`` if it is a complete decompression of that ``.gz``."""
    record_path = sidecar(target)
    if not (target.exists() and record_path.exists()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if all(record.get(k) == v for k, v in identity.items()) else None


def _inflate(gz: Path, out: IO[bytes], size: int, progress: bool) -> str:
    """Decompress ``gz`` into ``out`` (emptied first); return the ``.gz``'s SHA-256."""
    out.truncate(0)
    digest = hashlib.sha256()
    with open(gz, "rb") as raw, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"decompressing {gz.name}",
        disable=None if progress else True,
    ) as bar:
        inflater = zlib.decompressobj(wbits=31)  # wbits=31: gzip framing
        while block := raw.read(_BLOCK):
            digest.update(block)
            bar.update(len(block))
            while block:
                if inflater.eof:  # a multi-member gzip file: the next member starts
                    inflater = zlib.decompressobj(wbits=31)
                out.write(inflater.decompress(block))
                block = inflater.unused_data if inflater.eof else b""
        if not inflater.eof:
            raise DataError(
                f"{gz}: truncated gzip file (it ends before the end-of-stream marker); "
                "download it again"
            )
    out.flush()
    return digest.hexdigest()
