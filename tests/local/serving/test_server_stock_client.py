"""A stock boto3 ``sagemaker-runtime`` client works against the local endpoint unchanged."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
from _endpoint import decoded, encode, make_archive, patch
from botocore.exceptions import ClientError

from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.serving.app import create_app
from pcamflow.local.serving.hosting import ServerThread
from pcamflow.sagemaker.runtime import EndpointClient

KEY = "another-test-key"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_model_archive(make_archive(tmp_path_factory.mktemp("model") / "model.tar.gz"))


@pytest.fixture(scope="module")
def server(model):
    with ServerThread(create_app(model, name="pcam-endpoint")) as running:
        yield running


def stock_client(url: str):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


def test_invoke_endpoint_with_jpeg_bytes_gets_probabilities(model, server) -> None:
    jpeg = encode(patch(5))
    reply = stock_client(server.url).invoke_endpoint(
        EndpointName="pcam-endpoint",
        ContentType="image/jpeg",
        Accept="application/json",
        CustomAttributes="request=42",
        Body=jpeg,
    )
    assert reply["ContentType"] == "application/json"
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    assert reply["CustomAttributes"] == "request=42"
    answer = json.loads(reply["Body"].read())
    want = model.predict_images(decoded(jpeg)[None])[0]
    assert len(answer) == 2
    np.testing.assert_allclose(answer, want, rtol=1e-5, atol=1e-6)


def test_accept_jsonlines_gets_the_algorithms_prediction_record(model, server) -> None:
    """AWS, "Image Classification - MXNet", Inference: ``accept: application/jsonlines``
    answers ``{"prediction": [prob_0, prob_1, ...]}``."""
    png = encode(patch(8), "PNG")
    reply = stock_client(server.url).invoke_endpoint(
        EndpointName="pcam-endpoint", ContentType="image/jpeg",  # a PNG, labelled as a JPEG
        Accept="application/jsonlines", Body=png,
    )
    assert reply["ContentType"] == "application/jsonlines"
    lines = reply["Body"].read().decode().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert list(record) == ["prediction"]
    want = model.predict_images(decoded(png)[None])[0]
    np.testing.assert_allclose(record["prediction"], want, rtol=1e-5, atol=1e-6)


def test_an_undecodable_image_is_a_validation_error(server) -> None:
    with pytest.raises(ClientError) as caught:
        stock_client(server.url).invoke_endpoint(
            EndpointName="pcam-endpoint", ContentType="image/jpeg", Body=b"\xff\xd8\xff broken"
        )
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "decoded" in error["Error"]["Message"]


def test_the_client_knows_the_modelled_exception_class(server) -> None:
    client = stock_client(server.url)
    with pytest.raises(client.exceptions.ValidationError):
        client.invoke_endpoint(EndpointName="pcam-endpoint", ContentType="text/csv", Body=b"1,2")


def test_a_body_over_the_limit_is_a_413_validation_error(server) -> None:
    with pytest.raises(ClientError) as caught:
        stock_client(server.url).invoke_endpoint(
            EndpointName="pcam-endpoint", ContentType="image/jpeg", Body=bytes(6 * 1024 * 1024 + 1)
        )
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_endpoint_client_predicts_files_and_batches(model, server, tmp_path) -> None:
    client = EndpointClient.for_target(server.url)  # asks the endpoint its name
    assert client.name == "pcam-endpoint"
    path = tmp_path / "patch.png"
    path.write_bytes(encode(patch(6), "PNG"))
    one = client.predict(path)
    want = model.predict_images(decoded(path.read_bytes())[None])[0]
    np.testing.assert_allclose(one.probabilities, want, rtol=1e-5, atol=1e-6)
    assert one.label == ("1" if want[1] > want[0] else "0")
    images = [patch(seed) for seed in range(3)]
    batch = client.predict_batch(images)
    np.testing.assert_allclose(
        [p.probabilities for p in batch], model.predict_images(np.stack(images)), rtol=1e-5
    )


def test_endpoint_client_sends_the_api_key(model) -> None:
    with ServerThread(create_app(model, name="keyed", api_key=KEY)) as running:
        url = f"{running.url}/endpoints/keyed"
        with pytest.raises(ClientError) as caught:
            EndpointClient.for_target(url).predict(encode(patch()))
        assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
        prediction = EndpointClient.for_target(url, api_key=KEY).predict(encode(patch()))
        assert len(prediction.probabilities) == 2


def test_predict_reaches_a_sagemaker_endpoint_by_name(tmp_path, monkeypatch, capsys) -> None:
    """The same client code, without endpoint_url, calls the SageMaker runtime (moto here)."""
    import requests
    from moto import mock_aws

    from pcamflow import cli

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    image = tmp_path / "patch.img"
    image.write_bytes(b"stand-in bytes: moto reads request bodies as UTF-8 text")
    with mock_aws():
        requests.post(
            "http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results",
            json={
                "region": "eu-west-1",
                "results": [{"Body": "[0.25, 0.75]", "ContentType": "application/json"}],
            },
            timeout=10,
        )
        assert cli.main(["predict", "pcam-prod", str(image), "--region", "eu-west-1"]) == 0
    out = capsys.readouterr().out
    assert "class 1" in out and "0.7500" in out
