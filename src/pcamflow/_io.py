"""The I/O every layer shares: atomic writes, digests of settings, and the run record.

- :func:`atomic_path`, :func:`atomic_write` and :func:`write_bytes_atomic` write through a
  temporary file beside the target and rename it onto the target, so a file is either its old
  self or complete, never half written. Temporary names end in :data:`PARTIAL_SUFFIX`, so a
  folder's leftovers of a killed run are easy to find and remove.
- :func:`partial_path` names the one temporary file of a long write that a re-run resumes or
  replaces (a download, a decompression), and :func:`locked` opens it under an exclusive
  lock, so two processes never write it at once.
- :func:`digest` is the one fingerprint: a short SHA-256 of a JSON rendering of any value the
  shared converter can unstructure (attrs classes, dicts, lists, numbers, strings).
- ``run.json`` is read and written here (:class:`StageRecord`, :func:`read_run_record`,
  :func:`write_run_record`, :func:`recorded_artifacts`, :func:`run_id`), so the commands and
  the plan read it without importing the runner.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, one process at a time
    fcntl = None  # type: ignore[assignment]

from pcamflow._structure import converter
from pcamflow.artifacts import Artifact
from pcamflow.errors import PcamflowError

__all__ = [
    "PARTIAL_SUFFIX",
    "RUN_FILE",
    "StageRecord",
    "atomic_path",
    "atomic_write",
    "digest",
    "locked",
    "new_run_id",
    "partial_path",
    "read_run_record",
    "recorded_artifacts",
    "run_id",
    "utc_now",
    "write_bytes_atomic",
    "write_run_record",
]

PARTIAL_SUFFIX = ".partial"
"""The ending of every temporary file pcamflow writes before renaming it into place."""
RUN_FILE = "run.json"

_A = TypeVar("_A", bound=Artifact)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a new temporary path beside ``target``; rename it onto ``target`` on success.

    The caller writes the temporary file in any way it likes (``h5py``, ``tarfile``, ...). On
    an error the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                suffix=PARTIAL_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, fsync: bool = True, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and rename it onto ``path`` once written.

    A crash or an error inside the block leaves ``path`` as it was and no temporary file.

    Args:
        path: the file to write.
        mode: ``open``'s mode (``"w"`` or ``"wb"``).
        fsync: flush the data to disk before the rename (durable across power loss).
        **kwargs: passed to ``open`` (``encoding``, ``newline``).
    """
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The fast path for many small files (the converter's JPEGs): one ``open``, one ``write``
    and one rename, no fsync. The rename makes a killed process leave either the whole file or
    none, which is what a re-run relies on; durability across power loss is the file system's
    business. The temporary name holds the process id, so processes never share one.
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def partial_path(target: str | Path) -> Path:
    """The fixed temporary name of ``target`` while it is being written: ``.<name>.partial``.

    Unlike :func:`atomic_path`'s names it is the same in every process, so a run killed
    mid-write leaves a file the next run finds: to resume it, or to replace it.
    """
    target = Path(target)
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading and writing (made if missing) under an exclusive lock.

    The lock (``flock``, where the platform has it) waits for another process that holds
    it, and ends when the block does or the process dies. The handle starts at the start of
    the file, and writes append (``truncate(0)`` first to start over).
    """
    handle = open(path, "a+b")  # noqa: SIM115 - closed below, after the lock
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.seek(0)
        yield handle
    finally:
        handle.close()  # closing releases the lock


def digest(payload: Any, length: int = 16) -> str:
    """A short SHA-256 of ``payload`` (unstructured by the shared converter, as sorted JSON).

    >>> digest({"b": 1, "a": [1, 2]}) == digest({"a": (1, 2), "b": 1})
    True
    """
    text = json.dumps(converter.unstructure(payload), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- run.json -------------------------------------------------------------------------------


@attrs.frozen
class StageRecord:
    """What ``run.json`` says of one stage.

    ``kind`` is the stage's kind (``trainer``, ...). ``settings`` holds the settings tables the
    stage's fingerprint covers as they were when it ran, shaped as in the TOML file
    (``{"train": {...}}``), and its own options under ``"options"`` when it has any. Records
    written before pcamflow kept these two have None.
    """

    name: str
    stage: str
    status: str
    fingerprint: str | None = None
    started: str | None = None
    ended: str | None = None
    duration_s: float | None = None
    artifact: dict[str, Any] | None = None
    error: str | None = None
    kind: str | None = None
    settings: dict[str, Any] | None = None

    def load_artifact(self) -> Artifact | None:
        """The recorded artifact, rebuilt."""
        return Artifact.from_dict(self.artifact) if self.artifact else None


def _read_run_file(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise PcamflowError(f"{path}: not a pcamflow run record ({error})") from None
    if not isinstance(data, dict):
        raise PcamflowError(f"{path}: not a pcamflow run record (not a JSON object)")
    return data


def read_run_record(run_dir: str | Path) -> dict[str, StageRecord]:
    """The stage records of ``run_dir/run.json`` (empty if there is none yet)."""
    data = _read_run_file(run_dir)
    try:
        return {name: StageRecord(**rec) for name, rec in data.get("stages", {}).items()}
    except (ValueError, TypeError, AttributeError) as error:
        path = Path(run_dir) / RUN_FILE
        raise PcamflowError(f"{path}: not a pcamflow run record ({error})") from None


def new_run_id() -> str:
    """A fresh run id: 8 random hex digits."""
    return uuid.uuid4().hex[:8]


def run_id(run_dir: str | Path, *, create: bool = False) -> str | None:
    """The id of the run in ``run_dir``: a short random hex string kept in ``run.json``.

    It tells apart runs whose folders share a name (two ``runs/demo`` on two machines), so
    that what a run keeps elsewhere (its S3 prefix) is its own. It is made once and kept for
    every re-run of the folder.

    Args:
        run_dir: the run folder.
        create: make and record one if the run has none yet.

    Returns:
        The id, or None when there is none yet and ``create`` is false.
    """
    found = _read_run_file(run_dir).get("run_id")
    if isinstance(found, str) and found:
        return found
    if not create:
        return None
    made = new_run_id()
    write_run_record(run_dir, read_run_record(run_dir), run_id=made)
    return made


def write_run_record(
    run_dir: str | Path,
    records: Mapping[str, StageRecord],
    order: Sequence[str] = (),
    *,
    run_id: str | None = None,
) -> None:
    """Write ``run.json`` atomically, stages in ``order`` first.

    Args:
        run_dir: the run folder.
        records: stage name -> record.
        order: stage names in pipeline order.
        run_id: the run's id (None: keep the one already recorded, if any).
    """
    names = [n for n in order if n in records] + [n for n in records if n not in order]
    if run_id is None:
        run_id = _read_run_file(run_dir).get("run_id")
    payload: dict[str, Any] = {"format": 1, "updated": utc_now()}
    if run_id:
        payload["run_id"] = run_id
    payload["stages"] = {n: attrs.asdict(records[n]) for n in names}
    with atomic_write(Path(run_dir) / RUN_FILE, encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)


def recorded_artifacts(run_dir: str | Path, kind: type[_A]) -> list[tuple[str, _A]]:
    """``(stage name, artifact)`` of every completed stage of a run that made a ``kind``."""
    found = []
    for name, record in read_run_record(run_dir).items():
        artifact = record.load_artifact() if record.status == "completed" else None
        if isinstance(artifact, kind):
            found.append((name, artifact))
    return found
