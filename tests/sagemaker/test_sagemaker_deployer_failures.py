"""The SageMaker deployer in local mode when things go wrong: nothing is left billing.

Each test has a local mode of its own (``local``), apart from the module of the working
deploys, which shares one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, context_for, settings_for

from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.errors import JobFailedError
from pcamflow.sagemaker.deployer import SageMakerDeployer, teardown_endpoint


def _deploy(clients: Any, tmp_path: Path, model_uri: str, name: str,
            kms_key_id: str | None = None, instance_type: str = "ml.c5.large",
            **endpoint: Any) -> tuple[Endpoint, Any]:
    settings = settings_for(
        tmp_path, deploy={"name": name, "instance_type": instance_type,
                          "initial_instance_count": 1},
        aws={"tags": {"project": "pcam"}, "endpoint": endpoint,
             **({"kms_key_id": kms_key_id} if kms_key_id else {})},
    )
    context = context_for(settings, clients, "deploy", {"train": ModelArtifact(uri=model_uri)})
    deployer = SageMakerDeployer(progress=False)
    deployer.validate(context)
    return deployer.run(context), context


def test_an_endpoint_that_fails_leaves_nothing_billing(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    missing = f"s3://{BUCKET}/nowhere/model.tar.gz"  # no model data: the endpoint fails
    with pytest.raises(JobFailedError, match="ended Failed: ClientError: Failed to deploy the "
                                             "model: Could not find model data"):
        _deploy(clients, tmp_path, missing, "pcam-broken")
    assert clients.sagemaker.list_endpoints()["Endpoints"] == []
    assert clients.sagemaker.list_models()["Models"] == []
    assert any("no model data" in w for w in local.warnings)


def test_ctrl_c_while_the_endpoint_is_created_offers_to_delete_it(
    local: Any, tmp_path: Path
) -> None:
    def created(**kwargs: Any) -> None:  # Ctrl-C as the answer to CreateEndpoint arrives
        raise KeyboardInterrupt

    local.session.events.register("after-call.sagemaker.CreateEndpoint", created)
    clients = local.clients()
    questions: list[str] = []
    settings = settings_for(tmp_path, deploy={"name": "pcam-interrupted"})
    context = context_for(settings, clients, "deploy",
                          {"train": ModelArtifact(uri=f"s3://{BUCKET}/m/model.tar.gz")})
    deployer = SageMakerDeployer(progress=False, ask=lambda q: questions.append(q) or True)
    with pytest.raises(KeyboardInterrupt):
        deployer.run(context)
    assert questions and "Delete it?" in questions[0]
    assert clients.sagemaker.list_endpoints()["Endpoints"] == []
    assert clients.sagemaker.list_models()["Models"] == []


def test_teardown_on_aws_leaves_a_local_mode_endpoint_alone(aws: Any) -> None:
    endpoint = Endpoint(name="pcam-detector", backend="sagemaker",
                        resources={"model": "m", "endpoint_config": "c", "local_mode": "true"})
    assert teardown_endpoint(endpoint, aws, wait=False) == []


def test_pcamflow_teardown_of_a_local_mode_endpoint_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pcamflow._io import StageRecord, write_run_record
    from pcamflow.cli import main

    endpoint = Endpoint(name="pcamflow-detector", backend="sagemaker", region="eu-west-1",
                        resources={"model": "m", "endpoint_config": "c", "local_mode": "true"})
    write_run_record(tmp_path, {"deploy": StageRecord(
        name="deploy", stage="x", status="completed", artifact=endpoint.to_dict())})
    assert main(["teardown", str(tmp_path)]) == 0  # no credentials, no client: nothing sent
    assert "ran in local mode and ended with it" in capsys.readouterr().out
