"""The algorithm's inference: models loaded from S3, batch answers, endpoints behind a gateway.

A SageMaker model here is the ``model.tar.gz`` its ``ModelDataUrl`` names, loaded with the
local engine's :func:`~pcamflow.local.model.archive.load_model_archive`. An endpoint is that
model served by the local endpoint app (:func:`~pcamflow.local.serving.app.create_app`, the
"container") on 127.0.0.1. The *gateway* plays the SageMaker runtime: it answers
``POST /endpoints/{name}/invocations`` for every endpoint, so a stock boto3
``sagemaker-runtime`` client given its URL (``endpoint_url=``) works unchanged:

- an endpoint that does not exist or is not ``InService``: ``ValidationError`` (400),
  ``Endpoint <name> of account <account> not found.``;
- a body over 6 MB: ``ValidationError``;
- the body goes to the container's ``POST /invocations`` (JPEG and PNG alike as
  ``application/x-image``: the algorithm decodes either whatever its image type says); a 4xx
  or 5xx of the container is a ``ModelError`` (424) in SageMaker's words;
- the answer is the algorithm's documented one for the ``Accept`` asked
  (:func:`format_answer`): a JSON list for ``application/json``, ``{"prediction": [...]}``
  for ``application/jsonlines``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from fastapi import Request, Response  # module level: FastAPI reads the route's annotations

from pcamflow.sagemaker.algorithm import BATCH_ACCEPT, INFERENCE_CONTENT_TYPES

__all__ = ["MAX_BODY_BYTES", "Gateway", "format_answer"]

log = logging.getLogger("pcamflow.sagemaker.localmode")

MAX_BODY_BYTES = 6 * 1024 * 1024
"""InvokeEndpoint's body limit (``Body``: maximum length 6291456)."""


def format_answer(probabilities: list[float], accept: str | None) -> tuple[bytes, str]:
    """The algorithm's answer for ``accept``: the body and its content type."""
    kind = (accept or "application/json").split(";")[0].strip().lower()
    if kind == BATCH_ACCEPT:
        return (json.dumps({"prediction": probabilities}) + "\n").encode(), BATCH_ACCEPT
    return json.dumps(probabilities).encode(), "application/json"


class Gateway:
    """The SageMaker runtime of local mode: one URL for every endpoint.

    Args:
        emulator: the :class:`~pcamflow.sagemaker.localmode.LocalMode` whose endpoints it
            serves (``emulator.endpoints``: name -> state).
    """

    def __init__(self, emulator: Any) -> None:
        from pcamflow.local.serving.hosting import ServerThread

        self.emulator = emulator
        self.server = ServerThread(self._app())
        self.url = self.server.url

    def start(self) -> Gateway:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def _error(self, status: int, kind: str, message: str, **fields: Any) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"message": message, **fields}, status_code=status,
                            headers={"x-amzn-ErrorType": kind})

    def _app(self) -> Any:
        from fastapi import FastAPI
        from starlette.concurrency import run_in_threadpool

        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        emulator = self.emulator

        @app.post("/endpoints/{name}/invocations")
        async def invoke(name: str, request: Request) -> Response:
            state = emulator.endpoints.get(name)
            if state is None or state.get("status") != "InService":
                return self._error(400, "ValidationError", f"Endpoint {name} of account "
                                   f"{emulator.account} not found.")
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                return self._error(400, "ValidationError", "Request payload is too large: the "
                                   "maximum is 6 MB")
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return self._error(400, "ValidationError", "Request payload is too large: the "
                                   "maximum is 6 MB")
            content = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            accept = request.headers.get("accept")
            if accept and accept.split(";")[0].strip() not in ("application/json", BATCH_ACCEPT,
                                                                "*/*"):
                emulator.warn(f"endpoint {name}: Accept {accept} is not documented for the "
                              "algorithm; answering application/json")
            sent = "application/x-image" if content in INFERENCE_CONTENT_TYPES else content
            status, answer = await run_in_threadpool(_forward, state["url"], body, sent)
            if status >= 400:
                kind = "client" if status < 500 else "server"
                try:
                    original = json.loads(answer).get("message", answer.decode(errors="replace"))
                except ValueError:
                    original = answer.decode(errors="replace")
                region = emulator.region
                logs = (f"https://{region}.console.aws.amazon.com/cloudwatch/home?region="
                        f"{region}#logEventViewer:group=/aws/sagemaker/Endpoints/{name}")
                return self._error(
                    424, "ModelError",
                    f"Received {kind} error ({status}) from primary with message "
                    f'"{original}". See {logs} in account {emulator.account} for more '
                    "information.",
                    OriginalStatusCode=status, OriginalMessage=original,
                    LogStreamArn=f"arn:aws:logs:{region}:{emulator.account}:log-group:"
                                 f"/aws/sagemaker/Endpoints/{name}")
            body_out, media = format_answer(json.loads(answer), accept)
            return Response(body_out, media_type=media, headers={
                "x-Amzn-Invoked-Production-Variant": state.get("variant", "AllTraffic")})

        return app


def _forward(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    """POST ``body`` to the container's ``/invocations``; (status, body)."""
    request = urllib.request.Request(f"{url}/invocations", data=body, method="POST", headers={
        "Content-Type": content_type or "application/octet-stream",
        "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError as error:  # the container went away
        return 500, json.dumps({"message": f"the container did not answer: {error}"}).encode()
