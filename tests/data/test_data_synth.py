"""Synthetic PCam: layout, determinism, balance, and that it is a real learning task."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pcamflow.cli import main
from pcamflow.data.pcam import decompress, open_split
from pcamflow.data.synth import DEFAULT_DIFFICULTY, is_synthetic, write_synthetic_pcam
from pcamflow.errors import DataError

PREFIX = "camelyonpatch_level_2_split"


def _load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(folder / f"{PREFIX}_{split}_x.h5", "r") as fx, \
            h5py.File(folder / f"{PREFIX}_{split}_y.h5", "r") as fy:
        return fx["x"][...], fy["y"][...]


def test_files_are_laid_out_like_pcam(pcam_dir: Path) -> None:
    names = sorted(p.name for p in pcam_dir.iterdir())
    assert names == sorted(
        f"{PREFIX}_{split}_{key}" for split in ("train", "valid", "test")
        for key in ("x.h5", "y.h5", "meta.csv")
    )
    for split, n in (("train", 64), ("valid", 32), ("test", 32)):
        with h5py.File(pcam_dir / f"{PREFIX}_{split}_x.h5", "r") as fx, \
                h5py.File(pcam_dir / f"{PREFIX}_{split}_y.h5", "r") as fy:
            assert list(fx.keys()) == ["x"] and list(fy.keys()) == ["y"]
            assert fx["x"].shape == (n, 96, 96, 3) and fx["x"].dtype == np.uint8
            assert fy["y"].shape == (n, 1, 1, 1) and fy["y"].dtype == np.uint8
            y = fy["y"][...].reshape(-1)
        assert set(np.unique(y)) == {0, 1} and int(y.sum()) == n // 2  # balanced
        with open(pcam_dir / f"{PREFIX}_{split}_meta.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch",
                                 "wsi"]
        assert [r["center_tumor_patch"] == "True" for r in rows] == [bool(v) for v in y]


def test_same_seed_same_bytes_other_seed_other_patches(tmp_path: Path) -> None:
    a = write_synthetic_pcam(tmp_path / "a", train=300, valid=0, test=0, seed=7, progress=False)
    b = write_synthetic_pcam(tmp_path / "b", train=300, valid=0, test=0, seed=7, progress=False)
    c = write_synthetic_pcam(tmp_path / "c", train=300, valid=0, test=0, seed=8, progress=False)
    assert set(a) == {"train_x", "train_y", "train_meta"}  # empty splits are not written
    xa, ya = _load(tmp_path / "a", "train")
    xb, yb = _load(tmp_path / "b", "train")
    xc, _ = _load(tmp_path / "c", "train")
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert a["train_meta"].read_bytes() == b["train_meta"].read_bytes()
    assert not np.array_equal(xa, xc) and c["train_x"].exists()
    assert len({p.tobytes() for p in xa}) == 300  # no duplicate patches


def test_gzip_writes_what_pcam_ships(tmp_path: Path) -> None:
    plain = write_synthetic_pcam(tmp_path / "p", train=0, valid=10, test=0, progress=False)
    zipped = write_synthetic_pcam(tmp_path / "z", train=0, valid=10, test=0, gzip=True,
                                  progress=False)
    assert zipped["valid_x"].name == f"{PREFIX}_valid_x.h5.gz"
    assert not (tmp_path / "z" / f"{PREFIX}_valid_x.h5").exists()
    assert gzip.decompress(zipped["valid_x"].read_bytes()) == plain["valid_x"].read_bytes()


def test_negative_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="valid: -1"):
        write_synthetic_pcam(tmp_path, train=1, valid=-1, test=1, progress=False)


DIFFICULTIES = (0.0, DEFAULT_DIFFICULTY, 1.0)


def _task(out: Path, difficulty: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    write_synthetic_pcam(out, train=600, valid=0, test=400, seed=11, difficulty=difficulty,
                         progress=False)
    return {split: _load(out, split) for split in ("train", "test")}


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty={d}")
def task(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _task(tmp_path_factory.mktemp("task"), request.param)


@pytest.fixture(scope="module")
def easy_task(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _task(tmp_path_factory.mktemp("easy"), 0.0)


def _centre_darkness_auc(task: dict) -> float:
    x, y = task["test"]
    centre = x[:, 32:64, 32:64].astype(np.float32).mean(axis=(1, 2, 3))
    return float(roc_auc_score(y.reshape(-1), -centre))


def test_whole_patch_colour_statistics_do_not_give_the_label_away(task: dict) -> None:
    def features(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)

    (x_train, y_train), (x_test, y_test) = task["train"], task["test"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(features(x_train), y_train.reshape(-1))
    auc = roc_auc_score(y_test.reshape(-1), model.predict_proba(features(x_test))[:, 1])
    assert auc <= 0.75


def test_the_label_is_about_the_centre(easy_task: dict) -> None:
    x, y = easy_task["test"]
    y = y.reshape(-1).astype(bool)
    # tumour-like nuclei are dark: the centre square is darker in positives...
    assert _centre_darkness_auc(easy_task) >= 0.95
    # ...and tumour-like cells lie outside the centre in every negative and in most positives
    dark = x.astype(np.int16).sum(axis=-1) < 3 * 110
    assert dark[~y, 32:64, 32:64].sum(axis=(1, 2)).max() < 10
    outside = dark.copy()
    outside[:, 28:68, 28:68] = False  # leave out the fringe of a centre cluster
    clusters_outside = outside.sum(axis=(1, 2)) > 40
    assert clusters_outside[~y].all() and clusters_outside[y].mean() >= 0.5


def test_difficulty_hides_the_label_from_simple_cues(tmp_path: Path, easy_task: dict) -> None:
    # the centre's darkness, a cue that gives the easy task away, tells less and less
    aucs = [_centre_darkness_auc(easy_task)] + [
        _centre_darkness_auc(_task(tmp_path / str(d), d)) for d in DIFFICULTIES[1:]
    ]
    assert aucs[0] > aucs[1] > aucs[2], aucs
    assert aucs[1] <= 0.92, aucs  # the default is no longer a darkness test
    with h5py.File(tmp_path / str(DEFAULT_DIFFICULTY) / f"{PREFIX}_test_x.h5", "r") as f:
        assert f.attrs["difficulty"] == DEFAULT_DIFFICULTY and f.attrs["pcamflow_synthetic"]


@pytest.mark.parametrize("difficulty", [-0.1, 1.5, float("nan")])
def test_a_difficulty_outside_0_1_is_refused(tmp_path: Path, difficulty: float) -> None:
    with pytest.raises(DataError, match="difficulty"):
        write_synthetic_pcam(tmp_path, train=2, valid=0, test=0, difficulty=difficulty,
                             progress=False)
    assert not list(tmp_path.iterdir())


# --- never destroying data ------------------------------------------------------------------


def _real_like(folder: Path) -> dict[Path, bytes]:
    """PCam-named files that pcamflow did not write: an HDF5 file, a gzip, a meta table."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{PREFIX}_valid_x.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((4, 96, 96, 3), np.uint8))
    (folder / f"{PREFIX}_test_x.h5.gz").write_bytes(gzip.compress(b"a real download"))
    (folder / f"{PREFIX}_train_meta.csv").write_text(
        ",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n0,1,2,False,False,"
        "camelyon16_train_normal_001\n")
    return {p: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("gzip_output", [False, True], ids=["h5", "gzip"])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_a_file_pcamflow_did_not_write_is_never_replaced(tmp_path: Path, split: str,
                                                          gzip_output: bool) -> None:
    before = _real_like(tmp_path)
    counts = {"train": 0, "valid": 0, "test": 0, split: 4}
    with pytest.raises(DataError) as error:
        write_synthetic_pcam(tmp_path, **counts, gzip=gzip_output, progress=False)
    assert f"{PREFIX}_{split}_" in str(error.value)
    assert "is not synthetic PCam written by pcamflow" in str(error.value)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written or lost


def test_synth_command_refuses_with_one_line_and_exit_2(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    before = _real_like(tmp_path)
    assert main(["-q", "synth", str(tmp_path), "--gzip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{PREFIX}_train_meta.csv: exists and is not synthetic" in err[0]
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_synthetic_files_are_replaced_and_the_other_format_removed(tmp_path: Path) -> None:
    write_synthetic_pcam(tmp_path, train=0, valid=6, test=0, seed=1, progress=False)
    zipped = write_synthetic_pcam(tmp_path, train=0, valid=8, test=0, seed=2, gzip=True,
                                  progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in zipped.values())
    plain = write_synthetic_pcam(tmp_path, train=0, valid=10, test=0, seed=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in plain.values())
    assert _load(tmp_path, "valid")[0].shape[0] == 10
    assert all(is_synthetic(p) for p in plain.values())


def test_a_decompressed_copy_of_synthetic_pcam_is_replaced_with_its_record(
        tmp_path: Path) -> None:
    zipped = write_synthetic_pcam(tmp_path, train=0, valid=6, test=0, gzip=True, progress=False)
    decompress(zipped["valid_x"], progress=False)
    decompress(zipped["valid_y"], progress=False)
    write_synthetic_pcam(tmp_path, train=0, valid=8, test=0, gzip=True, progress=False)
    assert not list(tmp_path.glob(".*.source.json"))
    assert not (tmp_path / f"{PREFIX}_valid_x.h5").exists()
    assert open_split(tmp_path, "valid", progress=False).length == 8


def test_is_synthetic_reads_only_the_start_of_a_gzip(tmp_path: Path) -> None:
    zipped = write_synthetic_pcam(tmp_path, train=0, valid=300, test=0, gzip=True,
                                  progress=False)
    raw = zipped["valid_x"].read_bytes()
    cut = tmp_path / "cut" / zipped["valid_x"].name
    cut.parent.mkdir()
    cut.write_bytes(raw[: len(raw) // 3])  # truncated: decompressing it all would fail
    assert is_synthetic(cut)
    assert not is_synthetic(tmp_path / "missing.h5") and not is_synthetic(
        tmp_path / "cut")


def test_at_full_difficulty_tumour_outside_the_centre_stays_outside() -> None:
    from pcamflow.data import _tissue

    bank = _tissue._bank()
    patches, stamps, corners, _ = _tissue._extras(np.random.default_rng(3), 1.0, bank, 2000)
    centre = np.zeros((96, 96), bool)
    centre[32:64, 32:64] = True
    near_misses = 0
    for stamp, (top, left) in zip(stamps, corners.tolist(), strict=True):
        canvas = np.zeros((96, 96), np.float32)
        canvas[top:top + stamp.shape[0], left:left + stamp.shape[1]] = stamp  # inside the patch
        if np.shares_memory(stamp, bank.foci):  # a focus, not a look-alike aggregate
            near_misses += 1
            assert not (canvas[centre] > 0).any()  # tumour, but not in the centre square
    assert near_misses > 500 and len(patches) == len(stamps)
