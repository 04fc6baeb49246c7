"""SageMaker local mode: the built-in Image Classification algorithm, emulated on this machine.

:class:`LocalMode` runs what the SageMaker backend creates (training, tuning and transform
jobs; models, endpoint configs and endpoints) against moto, with the local engine, holding
every request to the rules AWS documents (:data:`~.rules.RULES`). It is the one part of
``pcamflow.sagemaker`` that imports ``pcamflow.local``, and needs the ``local``,
``sagemaker`` and ``localmode`` extras: ``pip install 'pcamflow[localmode]'``.
"""

from pcamflow._extras import require

require("local", "pcamflow.sagemaker.localmode")
require("sagemaker", "pcamflow.sagemaker.localmode")
require("localmode", "pcamflow.sagemaker.localmode")

from pcamflow.sagemaker.localmode.emulator import LocalMode  # noqa: E402
from pcamflow.sagemaker.localmode.rules import RULES, Rule  # noqa: E402

__all__ = ["RULES", "LocalMode", "Rule"]
