"""The exceptions pcamflow raises.

Every error derives from :class:`PcamflowError`; most also derive from the built-in exception
that matches their meaning, so ``except ValueError`` keeps working for callers who do not know
pcamflow::

    PcamflowError
    ├── ConfigError (ValueError)              a setting is unknown, mistyped or out of range
    │   ├── HyperparameterError                a hyperparameter of the algorithm is invalid
    │   └── TuningRangeError                   a tuning range is invalid
    ├── PipelineDefinitionError (ValueError)  the stage list cannot form a pipeline
    │   ├── StageNameNotUniqueError            two stages share a name
    │   ├── MissingInputError                  a stage needs an artifact no earlier stage makes
    │   └── PlacementError                     a stage's input is made where it cannot read it
    ├── RegistryError (LookupError)           a stage name cannot be resolved
    │   ├── DuplicateStageError                two plugins register the same name
    │   └── PluginLoadError                    a plugin's entry point fails to load
    ├── MissingExtraError (ImportError)       an optional extra is not installed
    ├── DataError (ValueError)                input data is missing or malformed
    │   ├── SchemaError                        an HDF5 file's keys, shapes or dtypes are wrong
    │   ├── ChecksumError                      a real PCam file does not match its checksum
    │   └── ImageError                         an image is missing, corrupt or the wrong size
    ├── StageError (RuntimeError)             a stage failed while running
    │   ├── TrainingError                      training failed
    │   │   └── DivergedError                  the loss became NaN or infinite
    │   └── ModelError                         a model cannot be loaded or run
    ├── DownloadError (OSError)               a file cannot be downloaded
    ├── EndpointError (RuntimeError)          an endpoint cannot be started, reached or used
    ├── TrackingError (RuntimeError)          the experiment tracker cannot be reached or used
    └── AwsError (RuntimeError)               an AWS call or job failed
        └── JobFailedError                     a SageMaker job ended in Failed or Stopped

Exit codes of the command line: usage, settings and data-definition errors exit 2, failures
while running exit 1 (see :func:`exit_code`).
"""

from __future__ import annotations

__all__ = [
    "AwsError",
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "DownloadError",
    "DuplicateStageError",
    "EndpointError",
    "HyperparameterError",
    "ImageError",
    "JobFailedError",
    "MissingExtraError",
    "MissingInputError",
    "ModelError",
    "PcamflowError",
    "PipelineDefinitionError",
    "PlacementError",
    "PluginLoadError",
    "RegistryError",
    "SchemaError",
    "StageError",
    "StageNameNotUniqueError",
    "TrackingError",
    "TrainingError",
    "TuningRangeError",
    "exit_code",
]


class PcamflowError(Exception):
    """Base class of every error pcamflow raises."""


class ConfigError(PcamflowError, ValueError):
    """A setting is unknown, has the wrong type, or has a value outside what is allowed.

    The message starts with the key path (``train.num_layers: ...``).
    """


class HyperparameterError(ConfigError):
    """A hyperparameter of the Image Classification algorithm is invalid."""


class TuningRangeError(ConfigError):
    """A hyperparameter tuning range is invalid, or takes a value its hyperparameter refuses."""


class PipelineDefinitionError(PcamflowError, ValueError):
    """The stages given cannot form a pipeline."""


class StageNameNotUniqueError(PipelineDefinitionError):
    """Two stages in one pipeline share a name."""


class MissingInputError(PipelineDefinitionError):
    """A stage needs an artifact that no earlier stage produces."""


class PlacementError(PipelineDefinitionError):
    """A stage reads an input from a place (this machine, S3) where the stage that makes it
    does not put it: a local manifest builder feeding a SageMaker trainer, say.

    Attributes:
        mismatches: ``(reader name, reader, maker name, maker, artifact type)`` for each.
    """

    def __init__(self, message: str, mismatches: list[tuple] | None = None) -> None:
        super().__init__(message)
        self.mismatches = list(mismatches or [])


class RegistryError(PcamflowError, LookupError):
    """A stage name cannot be resolved in the registry."""


class DuplicateStageError(RegistryError):
    """Two registrations claim the same kind and name."""


class PluginLoadError(RegistryError):
    """A plugin's entry point could not be loaded: its import failed, it is misnamed, or it is
    not a stage class of its kind."""


class MissingExtraError(PcamflowError, ImportError):
    """An optional dependency group (extra) is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"{module} needs the '{extra}' extra, which is not installed: "
            f"pip install 'pcamflow[{extra}]' (in a clone of pcamflow: pip install -e "
            f"'.[{extra}]')"
        )
        self.extra = extra
        self.module = module


class DataError(PcamflowError, ValueError):
    """Input data is missing or malformed."""


class SchemaError(DataError):
    """An HDF5 file does not have PCam's keys, shapes or dtypes."""


class ChecksumError(DataError):
    """A file named like a real PCam file does not match its published checksum."""


class ImageError(DataError):
    """An image is missing, cannot be decoded, or has the wrong shape."""


class StageError(PcamflowError, RuntimeError):
    """A stage failed while running."""


class TrainingError(StageError):
    """Training failed."""


class DivergedError(TrainingError):
    """The training loss became NaN or infinite."""


class ModelError(StageError):
    """A model archive cannot be loaded, or the model fails on its input."""


class DownloadError(PcamflowError, OSError):
    """A file cannot be downloaded: the server refuses it, the connection keeps failing, the
    disk is full, or it arrives corrupt. The message names the URL or the file; what was
    fetched is kept, so a re-run resumes."""


class EndpointError(PcamflowError, RuntimeError):
    """An endpoint cannot be started, reached or used."""


class TrackingError(PcamflowError, RuntimeError):
    """The experiment tracker (MLflow) cannot be reached or refuses what is logged."""


class AwsError(PcamflowError, RuntimeError):
    """An AWS request or job failed."""


class JobFailedError(AwsError):
    """A SageMaker job ended in the Failed or Stopped state; the message holds its reason."""


def exit_code(error: BaseException) -> int:
    """The command line's exit status for ``error``: 2 for usage/settings errors, else 1."""
    if isinstance(error, ConfigError | PipelineDefinitionError | RegistryError | MissingExtraError):
        return 2
    if isinstance(error, DataError) and not isinstance(error, ImageError):
        return 2
    return 1
