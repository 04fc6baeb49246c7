"""The local backend: every stage on this machine, with PyTorch, Optuna and a local endpoint.

Needs the ``local`` extra: ``pip install 'pcamflow[local]'``. One package per concern:

- :mod:`~pcamflow.local.model`: the algorithm's ResNets, the shared image preprocessing, the
  decoded-image cache and the ``model.tar.gz`` archive: what training makes and the other
  concerns load.
- :mod:`~pcamflow.local.training`: augmentation, the data path, the training loop,
  checkpoints, distributed training and the Trainer stage; :mod:`~pcamflow.local.train` is
  its command line (``python -m pcamflow.local.train``, also under ``torchrun``).
- :mod:`~pcamflow.local.tuning`: SageMaker's tuning strategies on Optuna and the Tuner stage.
- :mod:`~pcamflow.local.evaluation`: prediction over image files and the Evaluator stage.
- :mod:`~pcamflow.local.serving`: request payloads, micro-batching, the HTTP endpoint and the
  Deployer stage.

Each stage is a thin class over functions a user can call directly (``train_model``,
``tune``, ``evaluate_archive``, ``serve_model``). The stage modules import torch only when a
stage runs, so listing and validating stages stays fast.
"""

from pcamflow._extras import require

require("local", "pcamflow.local")
