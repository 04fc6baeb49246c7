"""Calling an endpoint with the stock boto3 SageMaker runtime client, local or on SageMaker.

The same code serves both: for a local endpoint the client is given ``endpoint_url`` (and
placeholder credentials when none are configured, since the local server checks an API key
rather than AWS signatures); for a SageMaker endpoint it is the plain client.

>>> # client = EndpointClient.for_target("http://127.0.0.1:8080/endpoints/pcamflow")
>>> # client.predict(open("patch.jpg", "rb").read())
>>> # [0.93, 0.07]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attrs

from pcamflow.errors import EndpointError

__all__ = ["EndpointClient", "Prediction", "guess_content_type", "runtime_client"]

API_KEY_HEADER = "X-Api-Key"

def guess_content_type(data: bytes) -> str:
    """The content type to send for ``data``, from its first bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\x93NUMPY"):
        return "application/x-npy"
    return "application/x-image"


def runtime_client(
    endpoint_url: str | None = None,
    *,
    region: str | None = None,
    api_key: str | None = None,
    session: Any = None,
) -> Any:
    """A boto3 ``sagemaker-runtime`` client.

    Args:
        endpoint_url: a local endpoint's base URL; None for SageMaker itself.
        region: the AWS region (for a local endpoint any region will do: ``us-east-1``).
        api_key: a local endpoint's API key, sent as the ``X-Api-Key`` header.
        session: a ``boto3.Session`` to make the client from (default: a new one).
    """
    import boto3
    from botocore.config import Config

    session = session or boto3.Session()
    kwargs: dict[str, Any] = {}
    if endpoint_url is not None:
        kwargs["endpoint_url"] = endpoint_url
        kwargs["region_name"] = region or "us-east-1"
        kwargs["config"] = Config(retries={"max_attempts": 2, "mode": "standard"})
        # botocore signs every request; the local server ignores the signature, and
        # placeholder keys spare the search for real ones (and never send them anywhere)
        kwargs["aws_access_key_id"] = "local"
        kwargs["aws_secret_access_key"] = "local"
    elif region is not None:
        kwargs["region_name"] = region
    client = session.client("sagemaker-runtime", **kwargs)
    if api_key:

        def add_key(request: Any, **_: Any) -> None:
            request.headers[API_KEY_HEADER] = api_key

        client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", add_key)
    return client


@attrs.frozen
class Prediction:
    """One answer of the endpoint.

    Attributes:
        probabilities: one per class, in the model's class order.
        classes: the class names (``"0"``, ``"1"``, ... when the endpoint does not say).
    """

    probabilities: tuple[float, ...]
    classes: tuple[str, ...]

    @property
    def label(self) -> str:
        """The most probable class."""
        best = max(range(len(self.probabilities)), key=self.probabilities.__getitem__)
        return self.classes[best]

    @property
    def confidence(self) -> float:
        """The probability of :attr:`label`."""
        return max(self.probabilities)


@attrs.frozen
class EndpointClient:
    """An endpoint and the boto3 client that reaches it.

    Attributes:
        name: the endpoint's name.
        client: a boto3 ``sagemaker-runtime`` client.
        classes: class names, in output order.
    """

    name: str
    client: Any
    classes: tuple[str, ...] = ("0", "1")

    @classmethod
    def for_target(
        cls,
        target: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        region: str | None = None,
    ) -> EndpointClient:
        """A client for ``target``: a local URL or a SageMaker endpoint name.

        A URL may name the endpoint in its path (``http://127.0.0.1:8080/endpoints/NAME``);
        otherwise ``name`` does, or else the endpoint is asked (``GET /info``).
        """
        parsed = urlparse(target)
        if parsed.scheme not in ("http", "https"):
            return cls(name=target, client=runtime_client(region=region))
        base = f"{parsed.scheme}://{parsed.netloc}"
        parts = [p for p in parsed.path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "endpoints":
            name = parts[1]
        elif parts:
            raise EndpointError(f"{target}: expected a base URL or .../endpoints/NAME")
        if name is None:
            name = _ask_name(base, api_key)
        return cls(name=name, client=runtime_client(base, region=region, api_key=api_key))

    def invoke(self, body: bytes, content_type: str | None = None) -> Any:
        """Send ``body`` and return the decoded JSON answer.

        Raises:
            botocore.exceptions.ClientError: the endpoint refused the request (its
                ``response["Error"]["Code"]`` is e.g. ``ValidationError`` or ``ModelError``).
        """
        reply = self.client.invoke_endpoint(
            EndpointName=self.name,
            ContentType=content_type or guess_content_type(body),
            Accept="application/json",
            Body=body,
        )
        return json.loads(reply["Body"].read())

    def predict(self, image: bytes | str | os.PathLike[str]) -> Prediction:
        """Predict one image, given as bytes or a file path."""
        body = image if isinstance(image, bytes) else Path(image).read_bytes()
        answer = self.invoke(body)
        return Prediction(
            probabilities=tuple(float(p) for p in answer), classes=self._names(len(answer))
        )

    def predict_batch(self, images: Sequence[Any]) -> list[Prediction]:
        """Predict uint8 (H, W, 3) arrays of one size in one request (``application/x-npy``)."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.stack([np.asarray(i, dtype=np.uint8) for i in images]))
        answer = self.invoke(buffer.getvalue(), "application/x-npy")
        return [
            Prediction(probabilities=tuple(float(p) for p in row), classes=self._names(len(row)))
            for row in answer
        ]

    def _names(self, count: int) -> tuple[str, ...]:
        return self.classes if len(self.classes) == count else tuple(str(i) for i in range(count))


def _ask_name(base: str, api_key: str | None) -> str:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{base}/info", headers={"Accept": "application/json"})
    if api_key:
        request.add_header(API_KEY_HEADER, api_key)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return str(json.loads(reply.read())["name"])
    except urllib.error.HTTPError as error:
        raise EndpointError(
            f"{base}/info answered {error.code}: pass the endpoint's name (--name) "
            "or the API key (--api-key)"
        ) from None
    except (OSError, ValueError, KeyError) as error:
        raise EndpointError(f"{base}: cannot reach the endpoint ({error})") from None
