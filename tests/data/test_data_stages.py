"""The local converter and manifest builder as pipeline stages, and the data commands."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from pathlib import Path

import _pcam_cases as bad
import h5py
import pytest

from pcamflow.artifacts import ImageDataset, Manifests
from pcamflow.cli import main
from pcamflow.config import Settings
from pcamflow.data._files import pcam_name
from pcamflow.data.convert import LocalConverter
from pcamflow.data.manifests import LocalManifestBuilder, read_manifest
from pcamflow.errors import DataError
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry
from pcamflow.testing import check_stage


def _settings(pcam_dir: Path, run_dir: Path, **tables: dict) -> Settings:
    return Settings.from_dict({
        "pipeline": {"run_dir": str(run_dir), "seed": 4, "trainer": "none",
                     "evaluator": "none"},
        "data": {"source": str(pcam_dir)},
        **tables,
    })


def test_stages_honour_the_contract() -> None:
    check_stage(LocalConverter)
    check_stage(LocalManifestBuilder)
    registry = Registry.from_entry_points()
    assert registry.get("converter", "local") is LocalConverter
    assert registry.get("manifest_builder", "local") is LocalManifestBuilder


def test_pipeline_converts_then_builds_manifests(pcam_dir: Path, tmp_path: Path) -> None:
    settings = _settings(pcam_dir, tmp_path / "run", convert={"workers": 1},
                         manifests={"max_per_class": 6})
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    result = pipeline.run(settings)
    dataset = result.records["convert"].load_artifact()
    manifests = result.records["manifests"].load_artifact()
    assert isinstance(dataset, ImageDataset) and isinstance(manifests, Manifests)
    assert Path(dataset.root) == (tmp_path / "run" / "convert" / "images").resolve()
    assert dataset.total() == 128
    assert manifests.counts == {"train": 12, "valid": 12, "test": 12}
    assert Path(manifests.manifests["train"]).parent == (tmp_path / "run" / "manifests").resolve()
    assert all(uri.startswith("file://") for uri, _ in read_manifest(manifests.manifests["test"]))
    again = pipeline.run(settings)  # complete: nothing runs again
    assert again.ran == ()
    # the seed picks the capped subset and orders the lines: another seed builds them again
    reseeded = _settings(pcam_dir, tmp_path / "run", convert={"workers": 1},
                         manifests={"max_per_class": 6}, pipeline={
                             "run_dir": str(tmp_path / "run"), "seed": 5, "trainer": "none",
                             "evaluator": "none"})
    first = read_manifest(manifests.manifests["train"])
    third = pipeline.run(reseeded)
    assert third.ran == ("manifests",)
    assert read_manifest(third.records["manifests"].load_artifact().manifests["train"]) != first


def test_converter_validate_names_the_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "nowhere", tmp_path / "run")
    with pytest.raises(DataError, match=r"data.source: .*nowhere is not a folder"):
        Pipeline.from_settings(settings, Registry.from_entry_points()).run(settings)


def test_cli_synth_convert_explore(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, images, report = tmp_path / "pcam", tmp_path / "images", tmp_path / "report"
    assert main(["-q", "synth", str(src), "--train", "20", "--valid", "8", "--test", "8",
                 "--seed", "2", "--gzip"]) == 0
    assert (src / "camelyonpatch_level_2_split_train_x.h5.gz").exists()
    assert main(["-q", "convert", str(src), str(images), "--workers", "2"]) == 0
    assert "train       20 images (class 0: 10, class 1: 10)" in capsys.readouterr().out
    assert main(["-q", "explore", str(src), str(report), "--per-class", "4"]) == 0
    stats = json.loads((report / "stats.json").read_text())
    assert stats["splits"]["valid"]["counts"] == {"0": 4, "1": 4}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "camelyonpatch_level_2_split_train_x.h5" in err[0]


def _read_only_outputs(tmp_path: Path) -> list[Path]:
    """Outputs no data command can write to: below a file, and (unless root) a read-only folder."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    outputs = [blocker / "out"]
    if os.geteuid() != 0:  # permissions do not bind root
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o500)
        outputs.append(locked / "out")
    return outputs


@pytest.mark.parametrize("command", ["synth", "convert", "explore", "download"])
def test_every_data_command_reports_a_read_only_output_alike(
    command: str, pcam_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for out in _read_only_outputs(tmp_path):
        argv = {
            "synth": ["synth", str(out), "--train", "2", "--valid", "2", "--test", "2"],
            "convert": ["convert", str(pcam_dir), str(out)],
            "explore": ["explore", str(pcam_dir), str(out)],
            "download": ["download", str(out), "--url", "http://127.0.0.1:9/{name}"],
        }[command]
        assert main(["-q", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not writable" in err[0], err
        assert str(tmp_path) in err[0]


# --- validate: every stage's own checks, as cheap as opening the files ----------------------


def _validate(tmp_path: Path, source: Path, extra: str = "") -> tuple[int, str]:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'[pipeline]\nrun_dir = "{tmp_path / "run"}"\ntrainer = "none"\nevaluator = "none"\n'
        f'[data]\nsource = "{source}"\n{extra}'
    )
    with _capture() as err:
        status = main(["validate", str(path)])
    return status, err.getvalue()


@contextlib.contextmanager
def _capture():
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def test_validate_catches_a_missing_source(tmp_path: Path) -> None:
    status, err = _validate(tmp_path, tmp_path / "nowhere")
    assert status == 2 and "data.source:" in err and "nowhere is not a folder" in err
    assert not (tmp_path / "run").exists()  # validating makes nothing


CHEAP = sorted(set(bad.CASES) - {"truncated_gz", "label_two"})


@pytest.mark.parametrize("case", CHEAP)
def test_validate_catches_what_opening_the_files_shows(case: str, pcam_dir: Path,
                                                       tmp_path: Path) -> None:
    source = bad.copy_pcam(pcam_dir, tmp_path / "pcam")
    expected = bad.CASES[case](source)
    status, err = _validate(tmp_path, source)
    assert status == 2, err
    for part in expected:
        assert part in err, (case, err)


@pytest.mark.parametrize("case", ["truncated_gz", "label_two"])
def test_validate_leaves_what_needs_reading_the_data_to_the_run(case: str, pcam_dir: Path,
                                                                tmp_path: Path) -> None:
    source = bad.copy_pcam(pcam_dir, tmp_path / "pcam")
    bad.CASES[case](source)
    before = sorted(p.name for p in source.iterdir())
    status, err = _validate(tmp_path, source)
    assert status == 0, err  # a truncated gzip, a bad label: found when the data is read
    assert sorted(p.name for p in source.iterdir()) == before  # nothing decompressed


def test_validate_checks_counts_and_sizes_against_the_published_ones(pcam_dir: Path,
                                                                     tmp_path: Path) -> None:
    source = bad.copy_pcam(pcam_dir, tmp_path / "pcam")
    for key in ("x", "y"):  # real PCam's names, without the synthetic mark
        name = source / pcam_name("test", key)
        with h5py.File(name, "r") as f:
            data = f[key][...]
        name.unlink()
        with h5py.File(name, "w") as f:
            f.create_dataset(key, data=data)
    status, err = _validate(tmp_path, source)
    assert status == 2 and "holds 32 patches, not 32768" in err
    gz = source / pcam_name("test", "x", gz=True)
    gz.write_bytes(gzip.compress((source / pcam_name("test", "x")).read_bytes()))
    (source / pcam_name("test", "x")).unlink()
    status, err = _validate(tmp_path, source)
    assert status == 2 and f"{gz.name}: does not match the published PCam checksum" in err
    assert "expected size 800875929" in err
    status, err = _validate(tmp_path, source, "verify_checksums = false\n")
    assert status == 0, err


def test_validate_runs_the_checks_of_every_stage(pcam_dir: Path, tmp_path: Path) -> None:
    no_ranges = '[pipeline]\ntuner = "local"\ntrainer = "local"\n'
    path = tmp_path / "settings.toml"
    path.write_text(f'{no_ranges}[data]\nsource = "{pcam_dir}"\n')
    with _capture() as err:
        assert main(["validate", str(path)]) == 2
    assert "tune.ranges: no hyperparameter ranges to tune" in err.getvalue()
    path.write_text('[pipeline]\nconverter = "sagemaker"\nmanifest_builder = "sagemaker"\n'
                    f'trainer = "sagemaker"\nevaluator = "none"\n'
                    f'[data]\nsource = "{pcam_dir}"\n[train.extensions]\ndihedral = true\n')
    with _capture() as err:
        assert main(["validate", str(path)]) == 2
    assert "dihedral" in err.getvalue()


def test_validate_tells_stages_not_to_use_the_network(tmp_path: Path) -> None:
    from pcamflow.artifacts import ImageDataset
    from pcamflow.stages import Context, DataConverter

    seen: list[bool] = []

    class Recorder(DataConverter):
        def validate(self, context: Context) -> None:
            seen.append(context.offline)

        def run(self, context: Context) -> ImageDataset:
            root = context.stage_dir / "images"
            root.mkdir(parents=True)
            return ImageDataset(root=str(root), counts={})

    settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")}})
    pipeline = Pipeline([("convert", Recorder())])
    pipeline.validate(settings)
    pipeline.run(settings)
    assert seen == [True, False]  # offline when only validating; a real run may call out


def test_the_real_pcam_example_validates_before_anything_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    example = Path(__file__).parents[2] / "examples" / "pcam.toml"
    monkeypatch.chdir(tmp_path)  # data/pcam is relative: nothing there yet
    assert main(["validate", str(example)]) == 0
    assert "valid; stages: convert, manifests, train, evaluate" in capsys.readouterr().out
    settings = Settings.from_toml(example)
    assert settings.data.download and settings.data.download_url.startswith(
        "https://zenodo.org/records/2546921/")
