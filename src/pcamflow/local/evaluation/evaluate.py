"""Scoring a local model archive on a manifest's images and writing the report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcamflow.artifacts import Evaluation, Manifests
from pcamflow.errors import DataError, ModelError
from pcamflow.evaluation import evaluate_scores, flatten_metrics, format_metrics_table, write_report
from pcamflow.local.evaluation.predict import predict_files
from pcamflow.local.model.archive import LoadedModel, load_model_archive
from pcamflow.local.model.cache import DataPath

__all__ = ["check_compatible", "evaluate_archive", "read_split"]

log = logging.getLogger("pcamflow")


def read_split(manifests: Manifests, split: str) -> tuple[list[Path], np.ndarray]:
    """The image paths and labels of one split's manifest.

    Raises:
        DataError: the split has no manifest, it is empty, or a line is malformed.
    """
    from pcamflow.data.manifests import read_manifest, uri_to_path

    if split not in manifests.manifests:
        raise DataError(
            f"manifests: no {split!r} manifest to evaluate (have "
            f"{', '.join(sorted(manifests.manifests)) or 'none'})"
        )
    path = manifests.manifests[split]
    entries = read_manifest(path)
    if not entries:
        raise DataError(f"{path}: the {split} manifest has no images")
    paths = [uri_to_path(uri) if "://" in uri else Path(uri) for uri, _ in entries]
    return paths, np.asarray([int(label) for _, label in entries], dtype=np.int64)


def check_compatible(
    model: LoadedModel, archive: str | Path, labels: np.ndarray, first_image: Path, manifest: str
) -> int:
    """Check that the model fits the data; return the output index of class ``1``.

    Raises:
        ModelError: the model's class count or classes, or its ``image_shape``, do not match
            the data (the message names the archive, the manifest and both values).
    """
    meta = model.meta
    data_classes = sorted({str(v) for v in labels} | {"0", "1"})
    if meta.num_classes != len(data_classes) or set(data_classes) - set(meta.classes):
        raise ModelError(
            f"{archive}: the model has {meta.num_classes} classes ({', '.join(meta.classes)}) "
            f"but the data of {manifest} has {len(data_classes)} ({', '.join(data_classes)})"
        )
    channels, height, width = meta.image_shape
    try:
        with Image.open(first_image) as image:
            bands, (img_w, img_h) = len(image.getbands()), image.size
    except OSError as error:
        raise DataError(f"{first_image}: not a readable image ({error})") from None
    if bands != channels and not (channels == 3 and bands == 1):
        raise ModelError(
            f"{archive}: the model takes image_shape {channels},{height},{width} "
            f"({channels} channels) but {first_image} has {bands} channels"
        )
    if meta.resize is None and (img_h < height or img_w < width):
        raise ModelError(
            f"{archive}: the model takes image_shape {channels},{height},{width} but "
            f"{first_image} is {img_w}x{img_h} pixels, smaller than its input; train with "
            "resize or with an image_shape that fits the data"
        )
    return meta.classes.index("1")


def _decoded(model: LoadedModel, paths: list[Path], labels: np.ndarray, name: str, *,
             data_path: DataPath, cache_dir: Path, workers: int | None,
             progress: bool) -> np.ndarray | None:
    """The split's decoded cache, or None to decode the files as they are predicted.

    One pass over a split decodes each image once either way, and streaming overlaps the
    decoding with the forward passes; so ``auto`` reads a cache only where one is there
    already (the trainer's, with a shared ``cache_dir``), and ``cache`` builds one.
    """
    from pcamflow.local.model.cache import choose_data_path, decoded_size, find_cache, open_cache

    channels = model.meta.image_shape[0]
    entries = list(zip(paths, labels.tolist(), strict=True))
    resize = model.meta.resize
    if data_path == "stream":
        return None
    cached = find_cache(entries, cache_dir, name, channels=channels, resize=resize)
    if data_path == "auto" and not cached:
        return None
    choose_data_path(data_path, 0 if cached else decoded_size(entries, channels, resize),
                     cache_dir, cached=cached)  # refuses a cache the disk cannot hold
    opened = open_cache(entries, cache_dir, name, channels=channels, resize=resize,
                        workers=workers, progress=progress, required=data_path == "cache")
    return None if opened is None else opened.images


def evaluate_archive(
    archive: str | Path,
    manifests: Manifests,
    out_dir: Path,
    *,
    split: str = "test",
    tta: bool = False,
    bootstrap: int = 1000,
    batch_size: int = 128,
    top_errors: int = 16,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    data_path: DataPath = "stream",
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> Evaluation:
    """Predict ``split`` (and ``valid``, for the threshold), score it and write the report.

    ``data_path``: ``cache`` decodes each split once into ``cache_dir`` (or reuses the
    decoded cache of the same manifest there, such as the trainer's) and predicts from it;
    ``stream`` decodes the files as it goes, in ``workers`` threads (None: one per core)
    a few batches ahead; ``auto`` reads a cache that is there already and streams otherwise.
    """
    model = load_model_archive(archive, device=device)
    paths, labels = read_split(manifests, split)
    manifest = manifests.manifests[split]
    positive = check_compatible(model, archive, labels, paths[0], manifest)
    options: dict[str, Any] = {"positive": positive, "batch_size": batch_size, "tta": tta,
                               "progress": progress, "workers": workers}
    reading = {"data_path": data_path, "cache_dir": cache_dir or Path(out_dir) / "cache",
               "workers": workers, "progress": progress}
    scores, tta_scores = predict_files(model, paths, desc=f"evaluate {split}",
                                       images=_decoded(model, paths, labels, split, **reading),
                                       **options)
    valid_labels = valid_scores = tta_valid = None
    if split != "valid" and "valid" in manifests.manifests:
        valid_paths, valid_labels = read_split(manifests, "valid")
        check_compatible(model, archive, valid_labels, valid_paths[0],
                         manifests.manifests["valid"])
        cached = _decoded(model, valid_paths, valid_labels, "valid", **reading)
        valid_scores, tta_valid = predict_files(model, valid_paths, desc="evaluate valid",
                                                images=cached, **options)
    else:
        log.warning("evaluate: no validation split to choose a threshold on; 0.5 only")
    document = evaluate_scores(
        labels, scores, valid_labels=valid_labels, valid_scores=valid_scores,
        tta_scores=tta_scores, tta_valid_scores=tta_valid, bootstrap=bootstrap, seed=seed,
        info={"model": str(archive), "architecture": model.meta.architecture,
              "split": split, "manifest": str(manifest), "tta": tta},
    )
    report = write_report(out_dir, labels=labels, scores=scores,
                          image_paths=[str(p) for p in paths], metrics=document,
                          tta_scores=tta_scores, top_errors=top_errors,
                          title=f"pcamflow evaluation: {split} split")
    log.info("evaluate: %s\n%s", report, format_metrics_table(document))
    return Evaluation(metrics=flatten_metrics(document), report=str(report),
                      metrics_file=str(out_dir / "metrics.json"))
