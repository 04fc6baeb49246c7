"""AWS clients of one run, built from one boto3 session and passed in (no global clients).

A stage takes the :class:`AwsClients` the caller passed as ``services={"aws": clients}``, or
builds one from ``settings.aws``. Every client it makes uses botocore's *standard* retry mode,
so throttled and transient errors are retried with backoff (``aws.max_attempts`` attempts);
sagemaker-core's resource classes use the same session, with the SDK's own standard-mode
client. Defaults are resolved as the SageMaker SDK resolves them: the bucket is
``sagemaker-<region>-<account>`` and the execution role is that of the SageMaker notebook or
Studio session the run is in.

Credentials stay inside the boto3 session: nothing here logs or stores them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pcamflow.errors import AwsError, ConfigError

if TYPE_CHECKING:
    import boto3

    from pcamflow.config import AwsSettings
    from pcamflow.stages import Context

__all__ = ["AwsClients", "clients_for", "resolve", "services_for"]

log = logging.getLogger(__name__)


class AwsClients:
    """The boto3 session of a run and the clients made from it.

    Args:
        session: the boto3 session (credentials and region).
        max_attempts: attempts per request in botocore's standard retry mode.
        max_pool_connections: HTTP connections per client (at least the upload workers).
        endpoint_urls: service -> URL to reach it at instead of AWS's (a VPC endpoint, or a
            local endpoint speaking the SageMaker runtime API for ``sagemaker-runtime``).
    """

    def __init__(
        self,
        session: boto3.Session,
        *,
        max_attempts: int = 8,
        max_pool_connections: int = 32,
        endpoint_urls: Mapping[str, str] | None = None,
    ) -> None:
        if not session.region_name:
            raise ConfigError(
                "aws.region: not set, and the AWS configuration names no default region"
            )
        self.session = session
        self.max_attempts = max_attempts
        self.max_pool_connections = max_pool_connections
        self.endpoint_urls = dict(endpoint_urls or {})
        self.local_mode = False  # set by SageMaker local mode, whose resources end with it
        self.max_poll_s: float | None = None
        self._clients: dict[str, Any] = {}
        self._kms: dict[str, str] = {}

    @classmethod
    def from_settings(cls, aws: AwsSettings, session: boto3.Session | None = None) -> AwsClients:
        """Clients for ``[aws]`` settings, from ``session`` or a new one (region, profile)."""
        if session is None:
            import boto3

            session = boto3.Session(region_name=aws.region, profile_name=aws.profile)
        return cls(
            session,
            max_attempts=aws.max_attempts,
            max_pool_connections=max(10, aws.upload_workers),
        )

    def poll_s(self, aws: AwsSettings) -> float:
        """Seconds between status checks: ``aws.poll_s``, at most ``max_poll_s`` if set
        (local mode's jobs are checked often: they run on this machine)."""
        if self.max_poll_s is None:
            return float(aws.poll_s)
        return min(float(aws.poll_s), self.max_poll_s)

    @property
    def region(self) -> str:
        """The session's region."""
        return str(self.session.region_name)

    def config(self) -> Any:
        """The botocore client config: standard retry mode, enough connections."""
        from botocore.config import Config

        return Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            max_pool_connections=self.max_pool_connections,
        )

    def client(self, service: str) -> Any:
        """A client of ``service`` (made once, then reused)."""
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, config=self.config(), endpoint_url=self.endpoint_urls.get(service)
            )
        return self._clients[service]

    @property
    def s3(self) -> Any:
        """The S3 client."""
        return self.client("s3")

    @property
    def sagemaker(self) -> Any:
        """The SageMaker client, for the few calls sagemaker-core has no resource method for."""
        return self.client("sagemaker")

    @functools.cached_property
    def account_id(self) -> str:
        """The account of the session's credentials."""
        try:
            return str(self.client("sts").get_caller_identity()["Account"])
        except Exception as error:  # botocore's NoCredentialsError, ClientError, ...
            raise AwsError(f"cannot find the AWS account of the credentials: {error}") from None

    def sagemaker_session(self) -> Any:
        """The SageMaker SDK's session helper on this boto3 session."""
        from sagemaker.core.helper.session_helper import Session

        return Session(boto_session=self.session)

    def default_bucket_name(self) -> str:
        """The SDK's default bucket name, ``sagemaker-<region>-<account>``, without creating it."""
        return f"sagemaker-{self.region}-{self.account_id}"

    def bucket(self, aws: AwsSettings, *, create: bool = True) -> str:
        """``aws.bucket``, or the SDK's default bucket (made if missing when ``create``)."""
        if aws.bucket:
            return aws.bucket
        if not create:
            return self.default_bucket_name()
        try:
            return str(self.sagemaker_session().default_bucket())
        except Exception as error:  # the SDK raises botocore errors as they come
            raise AwsError(
                f"aws.bucket: not set, and SageMaker's default bucket cannot be used: {error}"
            ) from None

    def kms_key_arn(self, aws: AwsSettings) -> str | None:
        """``aws.kms_key_id`` as a key ARN or key ID; an alias is resolved through KMS.

        ``ResourceConfig.VolumeKmsKeyId`` takes a key ID or key ARN only, so an alias
        (``alias/name`` or its ARN) is looked up once (``DescribeKey``) and its key's ARN used
        everywhere.

        Raises:
            ConfigError: the alias names no key.
        """
        key = aws.kms_key_id
        if not key:
            return None
        if not (key.startswith("alias/") or ":alias/" in key):
            return key
        if key not in self._kms:
            try:
                answer = self.client("kms").describe_key(KeyId=key)
            except Exception as error:  # botocore ClientError: NotFoundException, AccessDenied
                raise ConfigError(
                    f"aws.kms_key_id: cannot find the key of {key!r} ({error})"
                ) from None
            self._kms[key] = str(answer["KeyMetadata"]["Arn"])
        return self._kms[key]

    def role_arn(self, aws: AwsSettings) -> str:
        """``aws.role_arn``, or the execution role of the SageMaker session this runs in."""
        if aws.role_arn:
            return aws.role_arn
        from sagemaker.core.helper.session_helper import get_execution_role

        try:
            return str(get_execution_role(self.sagemaker_session()))
        except ValueError as error:
            raise ConfigError(
                "aws.role_arn: not set, and the current AWS identity is not a SageMaker "
                f"execution role ({error}); set aws.role_arn"
            ) from None

    def __repr__(self) -> str:
        return f"AwsClients(region={self.region!r})"


def clients_for(context: Context) -> AwsClients:
    """The :class:`AwsClients` passed in as ``services["aws"]``, or new ones from the settings."""
    clients = context.service("aws")
    if clients is None:
        clients = AwsClients.from_settings(context.settings.aws)
    if not isinstance(clients, AwsClients):
        raise ConfigError(f"services['aws']: expected AwsClients, got {type(clients).__name__}")
    return clients


def services_for(clients: AwsClients) -> dict[str, Any]:
    """The ``services`` mapping for :meth:`Pipeline.run <pcamflow.pipeline.Pipeline.run>`.

    It carries the clients for the SageMaker stages and the ``s3://`` probe that checks
    whether artifacts of an earlier run are still in S3 (``services["probes"]``).
    """
    from pcamflow.sagemaker.s3 import s3_probe

    return {"aws": clients, "probes": {"s3": s3_probe(clients.s3)}}


def resolve(clients: AwsClients, aws: AwsSettings, *, create_bucket: bool = True) -> Any:
    """The run's :class:`~pcamflow.sagemaker.requests.Resolved` values, looked up once."""
    from pcamflow.sagemaker.requests import Resolved, algorithm_image

    return Resolved(
        region=clients.region,
        role_arn=clients.role_arn(aws),
        bucket=clients.bucket(aws, create=create_bucket),
        image_uri=algorithm_image(clients.region),
        kms_key_id=clients.kms_key_arn(aws),
    )
