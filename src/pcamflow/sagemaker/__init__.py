"""The SageMaker backend: S3 uploads, training and tuning jobs, batch transform, endpoints.

Needs the ``sagemaker`` extra: ``pip install 'pcamflow[sagemaker]'``.
"""

from pcamflow._extras import require

require("sagemaker", "pcamflow.sagemaker")
