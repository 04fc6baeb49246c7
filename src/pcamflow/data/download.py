"""Download PCam from its Zenodo record: resumable, verified, parallel, idempotent.

:func:`download_pcam` fetches the files of the chosen splits (``..._{x,y}.h5.gz`` and, where
asked, ``..._meta.csv``) from PCam's canonical source, the Zenodo record 2546921, or from a
mirror named by a URL template (``https://mirror.example/pcam/{name}``):

- each file streams into ``.<name>.partial`` beside its final name; a dropped connection is
  resumed at once with an HTTP ``Range`` request (a few times), and a run that stopped for
  good (killed, disk full, server gone) leaves the partial file for the next run to resume;
- a complete file is checked against the published size and SHA-256 (the ``.h5.gz`` files,
  :data:`~pcamflow.data.pcam.PUBLISHED_CHECKSUMS`) or MD5 (the meta tables,
  :data:`PUBLISHED_META_MD5`) before it is renamed into place; a corrupt download is deleted
  and fetched once more, and a second failure is an error;
- a file already in place and verified is skipped; the verification is recorded beside it
  (``.<name>.verified.json``), so a re-run downloads and hashes nothing;
- files download in parallel threads, with one progress bar for all bytes;
- ``decompress=True`` also turns each ``.h5.gz`` into its ``.h5``
  (:func:`pcamflow.data.pcam.decompress`).

A file in the destination that does not match its checksum, and was not written by a
download, is never replaced: the error names it. HTTP(S) proxies are taken from the usual
``https_proxy``/``no_proxy`` environment variables. Nothing here needs a package beyond the
standard library.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
from tqdm.auto import tqdm

from pcamflow import __version__
from pcamflow._io import atomic_path, locked, partial_path
from pcamflow._validation import url_template_problem
from pcamflow.config import ZENODO_URL
from pcamflow.data._files import SPLITS, pcam_name, writable_folder
from pcamflow.data.pcam import PUBLISHED_CHECKSUMS, decompress
from pcamflow.errors import ChecksumError, DataError, DownloadError

__all__ = [
    "PUBLISHED_META_MD5",
    "ZENODO_URL",
    "RemoteFile",
    "download_pcam",
    "pcam_files",
]

log = logging.getLogger("pcamflow")

PUBLISHED_META_MD5 = {
    pcam_name("train", "meta"): "5a3dd671e465cfd74b5b822125e65b0a",
    pcam_name("valid", "meta"): "67589e00a4a37ec317f2d1932c7502ca",
    pcam_name("test", "meta"): "3455fd69135b66734e1008f3af684566",
}
"""Meta table name -> MD5. PCam's README swaps the valid and test values, as it does for the
``x`` and ``y`` files; these are the sums of the files themselves."""

_BLOCK = 1 << 20
_RECORD = ".{name}.verified.json"


@attrs.frozen
class RemoteFile:
    """One file to fetch, and what it must be.

    Attributes:
        name: the file name (in the URL template and in the destination).
        size: its size in bytes (None: unknown).
        sha256: its SHA-256 (hex), if published.
        md5: its MD5 (hex), if published.
    """

    name: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None

    def check(self, size: int, sha256: str, md5: str) -> str | None:
        """Why a file of this size and these digests is not this one, or None if it is."""
        problems = []
        if self.size is not None and size != self.size:
            problems.append(f"size {size}, expected {self.size}")
        if self.sha256 is not None and sha256 != self.sha256:
            problems.append(f"SHA-256 {sha256}, expected {self.sha256}")
        if self.md5 is not None and md5 != self.md5:
            problems.append(f"MD5 {md5}, expected {self.md5}")
        return "; ".join(problems) or None


def pcam_files(splits: Iterable[str] = SPLITS, *, meta: bool = True) -> list[RemoteFile]:
    """PCam's published files of ``splits``, with their sizes and checksums.

    Raises:
        DataError: a split is not one of PCam's.
    """
    files = []
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        for key in ("x", "y"):
            name = pcam_name(split, key, gz=True)
            size, sha256 = PUBLISHED_CHECKSUMS[name]
            files.append(RemoteFile(name, size=size, sha256=sha256))
        if meta:
            name = pcam_name(split, "meta")
            files.append(RemoteFile(name, md5=PUBLISHED_META_MD5[name]))
    return files


def download_pcam(
    dest: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    meta: bool = True,
    url: str = ZENODO_URL,
    workers: int = 3,
    timeout: float = 60.0,
    retries: int = 3,
    decompress_files: bool = False,
    progress: bool = True,
    files: Sequence[RemoteFile] | None = None,
    opener: Callable[[Path], contextlib.AbstractContextManager[IO[bytes]]] = locked,
) -> dict[str, Path]:
    """Download PCam into ``dest``; return file name -> path of every file in place.

    Args:
        dest: the folder to fill (made if missing); ``data.source`` of a run.
        splits: the splits to fetch.
        meta: also fetch the meta tables (slide and coordinates of each patch).
        url: where a file is, as a template of its ``{name}`` (Zenodo, or a mirror).
        workers: files downloaded at once.
        timeout: seconds without data before a connection counts as dropped.
        retries: how often a dropped connection or a server error (5xx) is retried, resuming
            where it stopped, before the download gives up.
        decompress_files: also decompress each ``.h5.gz`` beside it.
        progress: show a progress bar.
        files: the files to fetch (None: :func:`pcam_files` of ``splits``).
        opener: opens a partial file for appending under a lock (by default
            :func:`pcamflow._io.locked`); another opener can stand for another disk.

    Raises:
        DownloadError: a file could not be fetched (HTTP error, connection, timeout, full
            disk, or corrupt twice); the message names each URL, and every byte fetched is
            kept for the next run.
        ChecksumError: a file already in ``dest`` does not match its checksum.
        DataError: ``dest`` is not writable, or the URL template is malformed.
    """
    problem = url_template_problem(url)
    if problem is not None:
        raise DataError(f"download URL: {problem}")
    folder = writable_folder(dest, "download folder")
    wanted = list(files) if files is not None else pcam_files(splits, meta=meta)
    fetcher = _Fetcher(url, timeout, retries, opener)
    total = sum(f.size or 0 for f in wanted)
    done: dict[str, Path] = {}
    failures: list[Exception] = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="downloading PCam",
              disable=None if progress else True) as bar:
        fetcher.bar = bar
        pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
        futures = {pool.submit(fetcher.fetch, f, folder, decompress_files): f for f in wanted}
        try:
            pending = set(futures)
            while pending:  # wake up now and then, so that Ctrl-C gets through
                finished, pending = concurrent.futures.wait(pending, timeout=0.5)
                for future in finished:
                    try:
                        done[futures[future].name] = future.result()
                    except (DownloadError, ChecksumError) as error:
                        failures.append(error)
        except BaseException:
            fetcher.stop.set()  # the threads stop at their next block; partial files stay
            raise
        finally:
            pool.shutdown(wait=True)
    if failures:
        every = all(isinstance(f, ChecksumError) for f in failures)
        raise (ChecksumError if every else DownloadError)("\n".join(sorted(map(str, failures))))
    return done


class _Fetcher:
    """Fetches single files; shared by the download threads."""

    def __init__(self, url: str, timeout: float, retries: int,
                 opener: Callable[[Path], contextlib.AbstractContextManager[IO[bytes]]]):
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.opener = opener
        self.stop = threading.Event()
        self.bar: Any = None
        self._lock = threading.Lock()

    def _advance(self, count: int) -> None:
        with self._lock:
            self.bar.update(count)

    def _grow(self, count: int) -> None:
        """A file of unknown size turned out to hold ``count`` bytes."""
        with self._lock:
            self.bar.total = (self.bar.total or 0) + count
            self.bar.refresh()

    def fetch(self, remote: RemoteFile, folder: Path, unpack: bool) -> Path:
        target = folder / remote.name
        if target.exists():
            self._check_present(remote, target)
            self._advance(remote.size or 0)
        else:
            self._download(remote, target)
        if unpack and target.name.endswith(".h5.gz"):
            decompress(target, progress=False)
        return target

    def _check_present(self, remote: RemoteFile, target: Path) -> None:
        """A file already in place: verified once, then trusted while it is unchanged."""
        record = target.with_name(_RECORD.format(name=target.name))
        stat = target.stat()
        identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "sha256": remote.sha256, "md5": remote.md5}
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()) == identity:
                return
        sha256, md5 = _hash_file(target)
        problem = remote.check(stat.st_size, sha256, md5)
        if problem is not None:
            raise ChecksumError(
                f"{target}: already there but does not match the published checksum "
                f"({problem}); move it away or delete it, and run again"
            )
        _write_record(record, identity)

    def _download(self, remote: RemoteFile, target: Path) -> None:
        url = self.url.format(name=remote.name)
        partial = partial_path(target)
        corrupt = False
        with self.opener(partial) as out:
            if target.exists():  # another process finished it while we waited for the lock
                return
            while True:
                self._stream(remote, url, out, partial)
                out.seek(0)
                sha256, md5 = _hash_handle(out)
                size = out.seek(0, os.SEEK_END)
                problem = remote.check(size, sha256, md5)
                if problem is None:
                    break
                out.truncate(0)  # the corrupt bytes go; the file is fetched again, once
                self._advance(-size)
                if corrupt:
                    partial.unlink(missing_ok=True)
                    raise DownloadError(
                        f"{url}: the download does not match the published checksum twice "
                        f"({problem}); the file on the server, or the mirror, is not PCam's"
                    )
                log.warning("%s: corrupt download (%s); fetching it again", remote.name,
                            problem)
                corrupt = True
            out.flush()
            os.fsync(out.fileno())
            os.replace(partial, target)
        stat = target.stat()
        _write_record(target.with_name(_RECORD.format(name=target.name)), {
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": remote.sha256, "md5": remote.md5,
        })

    def _stream(self, remote: RemoteFile, url: str, out: IO[bytes], partial: Path) -> None:
        """Append the rest of the file to ``out``, resuming after dropped connections."""
        failures = 0
        offset = out.seek(0, os.SEEK_END)
        self._advance(offset)
        while remote.size is None or offset < remote.size:  # beyond: the checksum decides
            try:
                self._request(remote, url, out, offset)
                return
            except _Retry as why:
                failures += 1
                offset = out.seek(0, os.SEEK_END)
                if failures > self.retries:
                    raise DownloadError(
                        f"{url}: {why} ({failures} tries); {offset} bytes are kept in "
                        f"{partial}: run again to resume"
                    ) from None
                log.warning("%s: %s; resuming at byte %d", remote.name, why, offset)
                time.sleep(min(0.5 * failures, 5.0))
            except _WriteFailed as error:
                offset = out.seek(0, os.SEEK_END)
                raise DownloadError(
                    f"{partial}: cannot write ({error}); the {offset} bytes fetched from {url} "
                    "are kept: free some space and run again to resume"
                ) from None

    def _request(self, remote: RemoteFile, url: str, out: IO[bytes], offset: int) -> None:
        """One HTTP request for the bytes from ``offset`` on, appended to ``out``."""
        headers = {"User-Agent": f"pcamflow/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:  # nothing after offset: the check decides
                return
            why = f"HTTP {error.code} {error.reason}"
            if error.code >= 500 or error.code == 429:
                raise _Retry(why) from None
            raise DownloadError(f"{url}: {why}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                raise _Retry(f"no answer for {self.timeout:g} s") from None
            raise _Retry(f"cannot connect ({reason})") from None
        with response:
            if offset and response.status == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != offset:
                    raise _Retry(f"the server resumed at byte {start}, not {offset}")
            elif offset:  # 200: the server sent the whole file again
                log.info("%s: the server does not resume; starting over", remote.name)
                out.truncate(0)
                self._advance(-offset)
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if remote.size is None and expected is not None and response.status == 200:
                self._grow(expected)
            received = 0
            while block := self._read(response):
                if self.stop.is_set():
                    raise DownloadError(f"{url}: stopped; run again to resume")
                _append(out, block)
                received += len(block)
                self._advance(len(block))
            _append(out, b"")
        if expected is not None and received < expected:
            raise _Retry(f"connection closed after {received} of {expected} bytes")

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read(_BLOCK)
        except TimeoutError:
            raise _Retry(f"no data for {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as error:
            raise _Retry(f"connection dropped ({type(error).__name__})") from None


def _append(out: IO[bytes], block: bytes) -> None:
    """Write ``block`` and flush, so that what is fetched is on disk when a run stops."""
    try:
        if block:
            out.write(block)
        out.flush()
    except OSError as error:
        raise _WriteFailed(error.strerror or str(error)) from None


class _WriteFailed(Exception):
    """The destination refused bytes: a full disk, a lost mount, a read-only file system."""


class _Retry(Exception):
    """A failure worth another request: a dropped connection, a timeout, a 5xx answer."""


def _range_start(content_range: str) -> int | None:
    """The first byte of ``bytes 100-199/200``, or None."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _hash_handle(handle: IO[bytes]) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    while block := handle.read(_BLOCK):
        sha256.update(block)
        md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def _hash_file(path: Path) -> tuple[str, str]:
    with open(path, "rb") as handle:
        return _hash_handle(handle)


def _write_record(path: Path, identity: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(identity))
