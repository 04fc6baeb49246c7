"""HDF5 -> JPEG conversion: output, resumption, bad input, and a real SIGKILL mid-way."""

from __future__ import annotations

import os
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
from pcamflow.data.convert import convert_pcam
from pcamflow.data.synth import write_synthetic_pcam
from pcamflow.errors import DataError


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
