"""The local Evaluator stage: score a model archive on the test split and write the report.

It reports accuracy, precision, recall, F1, ROC AUC, average precision, log loss and the
confusion matrix, at 0.5 and at a threshold chosen on the validation split, with bootstrap 95%
intervals for accuracy and ROC AUC, and (``[evaluate] tta = true``) the same for the mean over
the 8 dihedral views beside the plain prediction. ``metrics.json``, the plots and an offline
``report.html`` land in the stage folder; the :class:`~pcamflow.artifacts.Evaluation` carries
the metrics. Images are read as ``[train.extensions]`` says (``data_path``, ``cache_dir``,
``num_workers``): decoded once into a cache, or decoded as they are predicted. PyTorch is
imported only when the stage runs.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from pcamflow.artifacts import Evaluation, Manifests, ModelArtifact
from pcamflow.errors import ConfigError
from pcamflow.stages import Context, Evaluator

__all__ = ["LocalEvaluator"]


class LocalEvaluator(Evaluator):
    """Evaluate a local ``model.tar.gz`` on a split of the manifests.

    Args:
        progress: show progress bars while predicting.
        device: ``auto`` (CUDA when present; the default follows ``[train.extensions] device``),
            ``cpu`` or ``cuda``.
    """

    writes_to = "local"
    reads_from = frozenset({"local"})

    def __init__(self, *, progress: bool = True, device: str | None = None) -> None:
        self.progress = progress
        self.device = device

    def validate(self, context: Context) -> None:
        """Check that the split to score has a manifest and the model is a local file.

        Raises:
            ConfigError: the split has no manifest, or the model lies in S3.
        """
        split = context.settings.evaluate.split
        manifests = context.optional_input(Manifests)
        if manifests is not None and split not in manifests.manifests:
            raise ConfigError(
                f"evaluate.split: no {split!r} manifest (have "
                f"{', '.join(sorted(manifests.manifests)) or 'none'})"
            )
        model = context.optional_input(ModelArtifact)
        if model is not None and urlparse(model.uri).scheme not in ("", "file"):
            raise ConfigError(
                f"evaluator: {model.uri} is not a local file; the local evaluator scores local "
                "archives (use evaluator = \"sagemaker\" for a model in S3)"
            )

    def _device(self, context: Context) -> str:
        wanted = self.device or context.settings.train.extensions.device
        if wanted != "auto":
            return wanted
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def run(self, context: Context) -> Evaluation:
        """Predict the split, score it, write the report and return the metrics."""
        from pcamflow.local.evaluation.evaluate import evaluate_archive

        settings = context.settings.evaluate
        reading = context.settings.train.extensions  # the data path settings are shared
        model = context.input(ModelArtifact)
        uri = urlparse(model.uri)
        archive = Path(uri.path) if uri.scheme == "file" else Path(model.uri)
        return evaluate_archive(
            archive, context.input(Manifests), Path(context.stage_dir),
            split=settings.split, tta=settings.tta, bootstrap=settings.bootstrap,
            batch_size=settings.batch_size, top_errors=settings.top_errors,
            seed=context.settings.pipeline.seed, device=self._device(context),
            progress=self.progress, data_path=reading.data_path,
            cache_dir=Path(reading.cache_dir) if reading.cache_dir else None,
            workers=reading.num_workers,
        )
