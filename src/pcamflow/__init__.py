"""pcamflow: PatchCamelyon from raw HDF5 to a deployed metastasis detector.

The pipeline's steps are stages (:mod:`pcamflow.stages`) that make artifacts
(:mod:`pcamflow.artifacts`); a :class:`Pipeline` runs them with resume, from :class:`Settings`
read from one TOML file, with stage implementations found in a :class:`Registry`;
:class:`RunObserver` objects follow a run (the run report, MLflow tracking). The local
backend (``pcamflow[local]``) and the SageMaker backend (``pcamflow[sagemaker]``) are extras.
"""

from pcamflow._io import atomic_write
from pcamflow.artifacts import (
    Artifact,
    Endpoint,
    Evaluation,
    ImageDataset,
    Manifests,
    ModelArtifact,
    TuningResult,
)
from pcamflow.config import Settings
from pcamflow.errors import (
    ConfigError,
    DataError,
    HyperparameterError,
    MissingExtraError,
    PcamflowError,
    PipelineDefinitionError,
    RegistryError,
    StageError,
)
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.pipeline import Pipeline, RunObserver, RunResult
from pcamflow.registry import Registry
from pcamflow.stages import (
    Context,
    DataConverter,
    Deployer,
    Evaluator,
    ManifestBuilder,
    Stage,
    Trainer,
    Tuner,
)
from pcamflow.tuning_ranges import TuningRange

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ConfigError",
    "Context",
    "DataConverter",
    "DataError",
    "Deployer",
    "Endpoint",
    "Evaluation",
    "Evaluator",
    "HyperparameterError",
    "Hyperparameters",
    "ImageDataset",
    "LocalExtensions",
    "ManifestBuilder",
    "Manifests",
    "MissingExtraError",
    "ModelArtifact",
    "PcamflowError",
    "Pipeline",
    "PipelineDefinitionError",
    "Registry",
    "RegistryError",
    "RunObserver",
    "RunResult",
    "Settings",
    "Stage",
    "StageError",
    "Trainer",
    "Tuner",
    "TuningRange",
    "TuningResult",
    "__version__",
    "atomic_write",
]
