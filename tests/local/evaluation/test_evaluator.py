"""The local evaluator: predictions from a model archive, the report, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from pcamflow.artifacts import Evaluation, Manifests, ModelArtifact
from pcamflow.config import Settings
from pcamflow.errors import ConfigError, ModelError
from pcamflow.local.evaluation.evaluator import LocalEvaluator
from pcamflow.local.model.archive import ModelMeta, load_model_archive, save_model_archive
from pcamflow.local.model.resnet import build_model
from pcamflow.stages import Context


def make_archive(path: Path, *, num_classes: int = 2, image_shape=(3, 32, 32),
                 resize: int | None = 32, seed: int = 0):
    """An untrained ResNet-20 archive; by default it shrinks PCam's 96x96 patches to 32x32,
    which keeps the CPU forward passes of these tests short."""
    torch.manual_seed(seed)
    module = build_model(20, num_classes, channels=image_shape[0])
    meta = ModelMeta(architecture="resnet20", num_layers=20, num_classes=num_classes,
                     classes=[str(i) for i in range(num_classes)], image_shape=image_shape,
                     resize=resize, mean=[0.5] * image_shape[0], std=[0.25] * image_shape[0])
    return save_model_archive(path, module, meta)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One PyTorch thread: on a busy shared machine two spinning threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("model") / "model.tar.gz")


def subset(manifest: str, out: Path, per_class: int, classes=("0", "1")) -> str:
    """The first ``per_class`` lines of each class of a manifest (a CPU forward pass is slow)."""
    kept, seen = [], dict.fromkeys(classes, 0)
    for line in Path(manifest).read_text().splitlines():
        label = json.loads(line)["class"]
        if label in seen and seen[label] < per_class:
            kept.append(line)
            seen[label] += 1
    out.write_text("\n".join(kept) + "\n")
    return str(out)


@pytest.fixture(scope="module")
def tiny(small_pcam, tmp_path_factory) -> Manifests:
    """4 test and 4 validation images of each class."""
    manifests, _ = small_pcam
    folder = tmp_path_factory.mktemp("tiny")
    return Manifests(manifests={
        "train": manifests.manifests["train"],
        "valid": subset(manifests.manifests["valid"], folder / "valid.manifest", 4),
        "test": subset(manifests.manifests["test"], folder / "test.manifest", 4),
    })


def evaluate(run_dir: Path, manifests: Manifests, archive: Path, **evaluate_settings):
    settings = Settings.from_dict({
        "pipeline": {"run_dir": str(run_dir)},
        "evaluate": {"bootstrap": 200, "batch_size": 16, **evaluate_settings},
    })
    context = Context(settings=settings, run_dir=run_dir, stage_dir=run_dir / "evaluate",
                      artifacts={"manifests": manifests,
                                 "train": ModelArtifact(uri=str(archive))},
                      stage_name="evaluate")
    stage = LocalEvaluator(progress=False)
    stage.validate(context)
    return stage.run(context)


def test_the_report_scores_the_models_own_predictions(tmp_path, tiny, archive):
    result = evaluate(tmp_path, tiny, archive)

    assert isinstance(result, Evaluation) and result.exists()
    out = tmp_path / "evaluate"
    for name in ("metrics.json", "report.html", "predictions.csv", "roc.png", "pr.png",
                 "confusion.png", "calibration.png", "false_positives.png",
                 "false_negatives.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in table])
    scores = np.array([float(r["score"]) for r in table])
    assert list(labels) == [json.loads(line)["class"] == "1"
                            for line in Path(tiny.manifests["test"]).read_text().splitlines()]
    # the same scores as the archive's own prediction API, image by image
    model = load_model_archive(archive)
    images = [Image.open(r["image"]) for r in table]
    expected = model.predict_images(images)[:, 1]
    assert np.allclose(scores, expected, atol=1e-5)

    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result.metrics["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == labels))
    low, high = result.metrics["accuracy_ci95_low"], result.metrics["accuracy_ci95_high"]
    assert low <= result.metrics["accuracy"] <= high
    document = json.loads((out / "metrics.json").read_text())
    assert set(document["results"]) == {"plain@0.5", "plain@valid"}
    assert 0.0 <= document["thresholds"]["plain"]["value"] <= 1.0
    assert np.sum(document["results"]["plain@0.5"]["confusion_matrix"]) == len(labels)
    html = (out / "report.html").read_text()
    assert "roc_auc" in html and "data:image/png;base64," in html


def test_tta_is_reported_beside_the_plain_prediction(tmp_path, tiny, archive):
    result = evaluate(tmp_path, tiny, archive, tta=True, top_errors=0)
    document = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(document["results"]) == {"plain@0.5", "plain@valid", "tta@0.5", "tta@valid"}
    with open(tmp_path / "evaluate" / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    model = load_model_archive(archive)
    images = [Image.open(r["image"]) for r in table]
    expected = model.predict_images(images, tta=True)[:, 1]
    assert np.allclose([float(r["tta_score"]) for r in table], expected, atol=1e-5)
    assert "tta@0.5/roc_auc" in result.metrics
    assert not (tmp_path / "evaluate" / "false_positives.png").exists()


def test_a_one_class_test_split_reports_auc_as_undefined(tmp_path, tiny, archive):
    one_class = subset(tiny.manifests["test"], tmp_path / "test.manifest", 4, classes=("1",))
    data = Manifests(manifests={**tiny.manifests, "test": one_class})

    result = evaluate(tmp_path, data, archive)

    assert result.metrics["roc_auc"] is None
    assert result.metrics["roc_auc_ci95_low"] is None
    assert result.metrics["accuracy"] is not None
    document = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert any("roc_auc" in note for note in document["results"]["plain@0.5"]["notes"])
    assert "undefined" in (tmp_path / "evaluate" / "report.html").read_text()


def test_a_model_with_another_class_count_is_refused(tmp_path, tiny):
    archive = make_archive(tmp_path / "three.tar.gz", num_classes=3)
    with pytest.raises(ModelError, match=r"three\.tar\.gz: the model has 3 classes .* has 2"):
        evaluate(tmp_path, tiny, archive)
    assert not (tmp_path / "evaluate" / "metrics.json").exists()


@pytest.mark.parametrize(("image_shape", "pattern"), [
    ((3, 128, 128), r"image_shape 3,128,128 but .*test_\d+\.jpg is 96x96 pixels"),
    ((1, 96, 96), r"image_shape 1,96,96 \(1 channels\) but .*test_\d+\.jpg has 3 channels"),
])
def test_a_model_with_another_image_shape_is_refused(tmp_path, tiny, image_shape, pattern):
    archive = make_archive(tmp_path / "shape.tar.gz", image_shape=image_shape, resize=None)
    with pytest.raises(ModelError, match=pattern):
        evaluate(tmp_path, tiny, archive)


def test_validate_names_a_missing_split(tmp_path, tiny, archive):
    data = Manifests(manifests={"train": tiny.manifests["train"]})
    with pytest.raises(ConfigError, match=r"evaluate\.split: no 'test' manifest"):
        evaluate(tmp_path, data, archive)


def test_validate_refuses_a_model_in_s3(tmp_path, tiny):
    with pytest.raises(ConfigError, match="not a local file"):
        evaluate(tmp_path, tiny, "s3://bucket/model.tar.gz")


def test_predictions_from_the_decoded_cache_match_the_files(tmp_path, tiny, archive):
    from pcamflow.local.evaluation.evaluate import read_split
    from pcamflow.local.evaluation.predict import predict_files
    from pcamflow.local.model.cache import open_cache

    model = load_model_archive(archive)
    paths, labels = read_split(tiny, "test")
    cache = open_cache(list(zip(paths, labels.tolist(), strict=True)), tmp_path, "test",
                       channels=3, resize=32, progress=False)
    from_files = predict_files(model, paths, batch_size=3, tta=True, progress=False)
    from_cache = predict_files(model, paths, batch_size=5, tta=True, progress=False,
                               images=cache.images)
    # the archive's own preprocessing (PIL, then the model) is the reference
    images = [Image.open(p).convert("RGB") for p in paths]
    expected = model.predict_images(images)[:, 1]
    expected_tta = model.predict_images(images, tta=True)[:, 1]
    for scores, tta_scores in (from_files, from_cache):
        assert np.allclose(scores, expected, atol=1e-5)
        assert np.allclose(tta_scores, expected_tta, atol=1e-5)


def test_the_evaluator_reads_a_cache_the_trainer_left_in_a_shared_folder(tmp_path, tiny,
                                                                         archive):
    from pcamflow.local.evaluation.evaluate import _decoded, read_split
    from pcamflow.local.model.cache import open_cache

    shared = tmp_path / "cache"
    paths, labels = read_split(tiny, "valid")
    open_cache(list(zip(paths, labels.tolist(), strict=True)), shared, "valid", channels=3,
               resize=32, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}
    settings = Settings.from_dict({
        "pipeline": {"run_dir": str(tmp_path)},
        "evaluate": {"bootstrap": 0, "batch_size": 16},
        "train": {"extensions": {"cache_dir": str(shared)}},
    })
    context = Context(settings=settings, run_dir=tmp_path, stage_dir=tmp_path / "evaluate",
                      artifacts={"manifests": tiny, "train": ModelArtifact(uri=str(archive))},
                      stage_name="evaluate")
    streamed = evaluate(tmp_path / "streamed", tiny, archive, bootstrap=0)
    cached = LocalEvaluator(progress=False).run(context)
    assert cached.metrics == pytest.approx(streamed.metrics)
    # auto: the valid split's cache is read as it is, the test split streamed (one pass)
    assert {p.name: p.stat().st_mtime_ns for p in shared.iterdir()} == before
    assert not list(shared.glob("test-*"))
    reading = {"data_path": "auto", "cache_dir": shared, "workers": 1, "progress": False}
    model = load_model_archive(archive)
    valid = _decoded(model, paths, labels, "valid", **reading)
    assert isinstance(valid, np.memmap) and Path(valid.filename).parent == shared
    assert _decoded(model, *read_split(tiny, "test"), "test", **reading) is None
