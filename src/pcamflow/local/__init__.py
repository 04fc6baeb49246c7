"""The local backend: PyTorch models and trainer, Optuna tuner, evaluator, HTTP endpoint.

Needs the ``local`` extra: ``pip install 'pcamflow[local]'``. The stage classes' modules import
torch only when a stage runs, so listing and validating stages stays fast.
"""

from pcamflow._extras import require

require("local", "pcamflow.local")
