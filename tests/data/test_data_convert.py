"""HDF5 -> JPEG conversion: output, resumption, bad input, and a real SIGKILL mid-way."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _pcam_cases as bad
import h5py
import numpy as np
import pytest
from PIL import Image

from pcamflow.data._files import pcam_name
from pcamflow.data.convert import RECORD, convert_pcam
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.errors import ChecksumError, DataError


def _labels(source: Path, split: str) -> np.ndarray:
    with h5py.File(source / pcam_name(split, "y"), "r") as f:
        return f["y"][...].reshape(-1)


def _jpegs(root: Path) -> dict[str, int]:
    """Relative path -> size of every complete JPEG under ``root``; each must decode."""
    found = {}
    for path in sorted(root.rglob("*.jpg")):
        with Image.open(path) as image:
            image.load()
            assert image.size == (96, 96) and image.mode == "RGB"
        found[str(path.relative_to(root))] = path.stat().st_size
    return found


def test_converts_every_patch_into_its_label_folder(pcam_dir: Path, tmp_path: Path) -> None:
    dataset = convert_pcam(pcam_dir, tmp_path / "images", workers=2, progress=False)
    root = Path(dataset.root)
    for split, n in (("train", 64), ("valid", 32), ("test", 32)):
        labels = _labels(pcam_dir, split)
        ones = int(labels.sum())
        assert dataset.counts[split] == {"0": n - ones, "1": ones}
        for index in (0, n // 2, n - 1):
            path = root / split / str(labels[index]) / f"{split}_{index:06d}.jpg"
            with Image.open(path) as image:
                assert image.format == "JPEG"
    assert len(_jpegs(root)) == 128 and dataset.total() == 128
    assert not list(root.rglob("*.partial"))


def test_rerun_skips_complete_files_and_fills_gaps(pcam_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    removed = sorted(before)[:5]
    for path in removed:
        path.unlink()
    leftover = removed[0].with_name(f".{removed[0].name}.999.partial")
    leftover.write_bytes(b"\xff\xd8 half a jpeg")
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert set(after) == set(before)
    assert all(after[p] == before[p] for p in before if p not in removed)  # untouched
    assert not leftover.exists()


def test_quality_setting_changes_the_jpeg(pcam_dir: Path, tmp_path: Path) -> None:
    low = convert_pcam(pcam_dir, tmp_path / "q20", splits=["test"], quality=20, workers=1,
                       progress=False)
    high = convert_pcam(pcam_dir, tmp_path / "q95", splits=["test"], workers=1, progress=False)
    assert sum(_jpegs(Path(low.root)).values()) < sum(_jpegs(Path(high.root)).values())
    with pytest.raises(DataError, match="quality: 0"):
        convert_pcam(pcam_dir, tmp_path / "q0", quality=0, progress=False)


@pytest.mark.parametrize("case", sorted(bad.CASES))
def test_bad_input_names_the_fault_and_loses_nothing(case: str, pcam_dir: Path,
                                                     tmp_path: Path) -> None:
    source = bad.copy_pcam(pcam_dir, tmp_path / "pcam")
    out = tmp_path / "images"
    convert_pcam(source, out, splits=["train"], workers=1, progress=False)
    before = _jpegs(out)
    expected = bad.CASES[case](source)  # the valid split is damaged
    with pytest.raises(DataError) as error:
        convert_pcam(source, out, workers=1, progress=False)
    for part in expected:
        assert part in str(error.value), (case, str(error.value))
    assert _jpegs(out) == before


def test_unwritable_output_folder(pcam_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["test"], workers=1, progress=False)
    before = _jpegs(out)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"a-file.*not writable"):
        convert_pcam(pcam_dir, blocker / "images", progress=False)
    if os.geteuid() != 0:  # permissions do not bind root
        (out / "valid").mkdir()
        (out / "valid").chmod(0o500)
        try:
            with pytest.raises(DataError, match=r"valid.*not writable"):
                convert_pcam(pcam_dir, out, progress=False)
        finally:
            (out / "valid").chmod(0o700)
    assert _jpegs(out) == before


_STALLING_CONVERT = """
import os, sys, time
from pathlib import Path

import pcamflow.data.convert as convert

stalled_in, source, out = map(Path, sys.argv[1:4])
write, written = convert.write_bytes_atomic, []

def stall_after_ten(path, data):
    # patches 0-255 (the first task) are written; a worker on any later task writes ten
    # images, half of an eleventh, and waits to be killed
    if int(path[-10:-4]) >= 256 and len(written) == 10:
        folder, name = os.path.split(path)
        Path(folder, f".{name}.{os.getpid()}.partial").write_bytes(data[: len(data) // 2])
        (stalled_in / f"stalled-{os.getpid()}").touch()
        time.sleep(600)
    if int(path[-10:-4]) >= 256:
        written.append(path)
    write(path, data)

convert.write_bytes_atomic = stall_after_ten  # the workers are forked: they inherit it
convert.convert_pcam(source, out, splits=["train"], workers=2, task_size=256,
                     verify_checksums=False, progress=False)
"""


def test_sigkill_mid_conversion_then_rerun_completes(tmp_path: Path) -> None:
    source = tmp_path / "pcam"
    write_synthetic_pcam(source, train=1200, valid=0, test=0, seed=5, progress=False)
    out, stalled = tmp_path / "images", tmp_path / "stalled"
    stalled.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", _STALLING_CONVERT, str(stalled), str(source), str(out)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Killed once both workers wait in a task: one finished the first task (256 images) and
    # went on to another, so the kill finds 256 + 10 + 10 images and two half-written ones.
    deadline = time.monotonic() + 120
    while len(list(stalled.iterdir())) < 2:
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the workers never reached their stall"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes
    process.wait()
    partial = _jpegs(out)  # every complete-named file decodes: no half-written JPEG
    assert len(partial) == 276
    assert len(list(out.rglob("*.partial"))) == 2
    command = [sys.executable, "-m", "pcamflow.cli", "-q", "convert", str(source), str(out),
               "--splits", "train", "--workers", "2", "--no-verify"]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    final = _jpegs(out)
    labels = _labels(source, "train")
    assert len(final) == 1200
    assert all(final[name] == size for name, size in partial.items())  # kept, not redone
    for label in ("0", "1"):
        names = {Path(p).name for p in final if p.startswith(f"train/{label}/")}
        expected = {f"train_{i:06d}.jpg" for i in np.flatnonzero(labels == int(label))}
        assert names == expected
    assert not list(out.rglob("*.partial"))


def test_a_jpeg_in_the_wrong_label_folder_is_replaced_on_resume(pcam_dir: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    whole = _jpegs(out)
    labels = _labels(pcam_dir, "valid")
    index = int(np.flatnonzero(labels == 1)[0])
    right = out / "valid" / "1" / f"valid_{index:06d}.jpg"
    wrong = out / "valid" / "0" / right.name
    right.rename(wrong)  # as if written under the other label
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    assert not wrong.exists() and right.exists()
    assert _jpegs(out) == whole


# --- what the images were made from ---------------------------------------------------------


def _decoded(root: Path, split: str, index: int, label: int) -> np.ndarray:
    with Image.open(root / split / str(label) / f"{split}_{index:06d}.jpg") as image:
        return np.asarray(image, dtype=np.int16)


def _patch(source: Path, split: str, index: int) -> np.ndarray:
    with h5py.File(source / pcam_name(split, "x"), "r") as f:
        return f["x"][index].astype(np.int16)


def test_images_of_another_dataset_are_never_mixed_in(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_synthetic_pcam(first, train=0, valid=20, test=0, seed=1, progress=False)
    write_synthetic_pcam(second, train=0, valid=20, test=0, seed=2, progress=False)
    out = tmp_path / "images"
    convert_pcam(first, out, splits=["valid"], workers=1, progress=False)
    before = _jpegs(out)
    with pytest.raises(DataError) as error:
        convert_pcam(second, out, splits=["valid"], workers=1, progress=False)
    message = str(error.value)
    assert str(out / "valid") in message and "made from other data" in message
    assert "convert.reconvert" in message
    assert _jpegs(out) == before  # nothing lost, nothing mixed in

    convert_pcam(second, out, splits=["valid"], workers=1, reconvert=True, progress=False)
    labels = _labels(second, "valid")
    for index in range(20):
        image = _decoded(out, "valid", index, int(labels[index]))
        assert np.abs(image - _patch(second, "valid", index)).mean() < 4  # JPEG's loss only
    assert len(_jpegs(out)) == 20


def test_a_change_of_quality_is_an_error_or_a_reconversion(pcam_dir: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["test"], quality=95, workers=1, progress=False)
    high = _jpegs(out)
    with pytest.raises(DataError, match=r"made at JPEG quality 95, not 30"):
        convert_pcam(pcam_dir, out, splits=["test"], quality=30, workers=1, progress=False)
    assert _jpegs(out) == high
    convert_pcam(pcam_dir, out, splits=["test"], quality=30, workers=1, reconvert=True,
                 progress=False)
    low = _jpegs(out)
    assert set(low) == set(high) and sum(low.values()) < sum(high.values())
    convert_pcam(pcam_dir, out, splits=["test"], quality=30, workers=1, progress=False)
    assert _jpegs(out) == low  # the same settings again: nothing to do


def test_the_pipeline_stage_stops_on_a_quality_change(pcam_dir: Path, tmp_path: Path) -> None:
    from pcamflow.config import Settings
    from pcamflow.pipeline import Pipeline
    from pcamflow.registry import Registry

    def run(**convert: object) -> None:
        settings = Settings.from_dict({
            "pipeline": {"run_dir": str(tmp_path / "run"), "manifest_builder": "none",
                         "trainer": "none", "evaluator": "none"},
            "data": {"source": str(pcam_dir), "splits": ["valid"]},
            "convert": {"workers": 1, **convert},
        })
        Pipeline.from_settings(settings, Registry.from_entry_points()).run(settings)

    run(quality=90)
    with pytest.raises(DataError, match="quality 90, not 70"):
        run(quality=70)  # the record in run.json never says 70 for images made at 90
    run(quality=70, reconvert=True)


def test_images_with_no_record_are_not_trusted(pcam_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "images"
    stranger = out / "valid" / "1" / "valid_000003.jpg"
    stranger.parent.mkdir(parents=True)
    Image.new("RGB", (96, 96), "blue").save(stranger)
    notes = out / "valid" / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(DataError, match=r"holds 1 images with no record"):
        convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    assert stranger.exists()
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, reconvert=True, progress=False)
    assert notes.read_text() == "mine"  # only images by our names are replaced
    assert len(_jpegs(out)) == 32


def test_a_truncated_jpeg_is_made_again(pcam_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["test"], workers=1, progress=False)
    whole = _jpegs(out)
    victim = out / sorted(whole)[3]
    victim.write_bytes(victim.read_bytes()[: whole[sorted(whole)[3]] // 2])
    empty = out / sorted(whole)[5]
    empty.write_bytes(b"")
    convert_pcam(pcam_dir, out, splits=["test"], workers=2, progress=False)
    assert _jpegs(out) == whole  # decodes, and the same size as made the first time


def test_quality_is_one_to_a_hundred_and_95_by_default(pcam_dir: Path, tmp_path: Path) -> None:
    for quality in (-1, 0, 101):
        with pytest.raises(DataError, match=rf"convert\.quality: {quality} is outside 1\.\.100"):
            convert_pcam(pcam_dir, tmp_path / f"q{quality}", splits=["test"], quality=quality,
                         progress=False)
        assert not (tmp_path / f"q{quality}").exists()  # refused before anything is written
    for quality in (1, 100):
        dataset = convert_pcam(pcam_dir, tmp_path / f"q{quality}", splits=["test"],
                               quality=quality, workers=1, progress=False)
        assert dataset.total() == 32
        record = json.loads((tmp_path / f"q{quality}" / "test" / RECORD).read_text())
        assert record["quality"] == quality
    convert_pcam(pcam_dir, tmp_path / "default", splits=["test"], workers=1, progress=False)
    record = json.loads((tmp_path / "default" / "test" / RECORD).read_text())
    assert record["quality"] == 95
    assert record["format"] == 1
    assert record["from"] == str(pcam_dir / pcam_name("test", "x"))
    assert record["patches"] == 32


def test_the_counts_follow_the_labels_when_the_classes_are_unequal(pcam_dir: Path,
                                                                   tmp_path: Path) -> None:
    source = tmp_path / "pcam"  # a dataset of one's own, named like PCam's valid split
    source.mkdir()
    with h5py.File(pcam_dir / pcam_name("valid", "x"), "r") as f:
        x = f["x"][...]
    y = np.zeros((32, 1, 1, 1), dtype=np.uint8)
    y[:5] = 1  # 5 tumour patches, 27 normal
    for key, data in (("x", x), ("y", y)):
        with h5py.File(source / pcam_name("valid", key), "w") as f:  # no synthetic marker
            f.create_dataset(key, data=data)
    with pytest.raises(ChecksumError, match="holds 32 patches, not 32768"):
        convert_pcam(source, tmp_path / "images", splits=["valid"], workers=1, progress=False)
    assert not (tmp_path / "images").exists()  # checked by default, before anything is made
    dataset = convert_pcam(source, tmp_path / "images", splits=["valid"], workers=1,
                           verify_checksums=False, progress=False)
    assert dataset.counts == {"valid": {"0": 27, "1": 5}}
    assert len(list((tmp_path / "images" / "valid" / "1").glob("*.jpg"))) == 5


def test_other_files_in_a_new_output_folder_are_neither_counted_nor_touched(
    pcam_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "images"
    (out / "valid" / "0").mkdir(parents=True)  # no record: a folder of the user's
    others = [out / "valid" / "0" / name
              for name in ("notes_0001.txt", "valid_notes.jpg", "valid_0001.png",
                           "valid_0001a.jpg", "README")]
    for path in others:
        path.write_text("mine")
    dataset = convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    assert dataset.total() == 32
    assert all(path.read_text() == "mine" for path in others)


def test_images_past_the_end_of_the_split_are_removed_on_resume(pcam_dir: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    whole = _jpegs(out)
    some = out / sorted(whole)[0]
    stale = [some.with_name(f"valid_{index:06d}.jpg") for index in (32, 47, 120)]
    for path in stale:  # as left by a larger dataset of the same record (32 patches here)
        shutil.copy(some, path)
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    assert not any(path.exists() for path in stale)
    assert _jpegs(out) == whole


def test_a_refusal_says_what_the_images_were_made_from_and_what_from_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_synthetic_pcam(first, train=0, valid=20, test=0, seed=1, progress=False)
    write_synthetic_pcam(second, train=0, valid=24, test=0, seed=2, progress=False)
    out = tmp_path / "images"
    convert_pcam(first, out, splits=["valid"], workers=1, progress=False)
    old = json.loads((out / "valid" / RECORD).read_text())
    with pytest.raises(DataError) as error:
        convert_pcam(second, out, splits=["valid"], workers=1, progress=False)
    message = str(error.value)
    assert f"other data than {second / pcam_name('valid', 'x')} " in message
    assert f"(20 patches, fingerprint {old['source']}; now 24 patches, fingerprint " in message
    assert "set convert.reconvert = true (pcamflow convert --reconvert)" in message
    with caplog.at_level(logging.WARNING, logger="pcamflow"):
        convert_pcam(second, out, splits=["valid"], workers=1, reconvert=True, progress=False)
    warning = next(r.getMessage() for r in caplog.records if "making them again" in r.message)
    assert warning.startswith(f"{out / 'valid'}: its images were made from other data than ")
    assert json.loads((out / "valid" / RECORD).read_text())["patches"] == 24


@pytest.mark.parametrize(("record", "expected"), [
    ("{not json", r"record \.pcamflow-images\.json cannot be read"),
    ("[1, 2]", r"record \.pcamflow-images\.json is not a JSON object"),
    (None, r"record \.pcamflow-images\.json is of format 2; this version of pcamflow writes "
           r"and reads format 1"),
])
def test_a_record_it_cannot_read_stops_the_conversion(pcam_dir: Path, tmp_path: Path,
                                                      record: str | None, expected: str) -> None:
    out = tmp_path / "images"
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    whole = _jpegs(out)
    path = out / "valid" / RECORD
    if record is None:  # a record of a later format
        record = json.dumps({**json.loads(path.read_text()), "format": 2})
    path.write_text(record)
    with pytest.raises(DataError, match=expected):
        convert_pcam(pcam_dir, out, splits=["valid"], workers=1, progress=False)
    assert _jpegs(out) == whole and path.read_text() == record
    convert_pcam(pcam_dir, out, splits=["valid"], workers=1, reconvert=True, progress=False)
    assert json.loads(path.read_text())["format"] == 1


def _signal_handlers() -> tuple[object, object]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_pool_workers_leave_ctrl_c_to_the_parent_and_end_on_sigterm() -> None:
    from pcamflow.data.convert import _worker_signals

    def applications_own(signum: int, frame: object) -> None:
        """A SIGTERM handler of the calling application's, which forked workers inherit."""

    previous = signal.signal(signal.SIGTERM, applications_own)
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(1, initializer=_worker_signals) as pool:
            assert pool.apply(_signal_handlers) == (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_gzipped_files_are_decompressed_into_the_cache_folder(tmp_path: Path) -> None:
    source, cache = tmp_path / "pcam", tmp_path / "cache"
    write_synthetic_pcam(source, train=0, valid=20, test=0, gzip=True, progress=False)
    before = sorted(p.name for p in source.iterdir())
    dataset = convert_pcam(source, tmp_path / "images", splits=["valid"], workers=1,
                           cache_dir=cache, progress=False)
    assert dataset.total() == 20
    assert sorted(p.name for p in source.iterdir()) == before  # nothing written beside them
    assert (cache / pcam_name("valid", "x")).is_file()
    assert (cache / pcam_name("valid", "y")).is_file()
