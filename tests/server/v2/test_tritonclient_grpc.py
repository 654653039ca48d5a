"""Triton's own gRPC client (tritonclient.grpc, raw tensor contents), unchanged, against a real server process
serving HTTP and gRPC with API keys on; and the same input giving the same output over gRPC, HTTP/JSON and
HTTP/binary."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.server.v2.conftest import Bearer, Live, png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(live: Live) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(live.grpc)
    client.register_plugin(Bearer(live.key))
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(live: Live) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(live.http, network_timeout=60)
    client.register_plugin(Bearer(live.key))
    yield client
    client.close()


def text_input(module, texts: list[str], **options: bool):  # type: ignore[no-untyped-def]
    array = np.array([t.encode() for t in texts], dtype=object)
    return module.InferInput("text", [len(texts)], "BYTES").set_data_from_numpy(array, **options)


def test_health_metadata_config_and_statistics(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "model_repository" in client.get_server_metadata().extensions
    assert client.is_model_ready("mlm") and client.is_model_ready("conv", model_version="1")
    meta = client.get_model_metadata("conv", as_json=True)
    assert {t["name"]: t["shape"] for t in meta["outputs"]} == {"logits": ["-1", "4"], "labels": ["-1", "-1"]}
    config = client.get_model_config("mlm").config
    assert config.max_batch_size == 64 and [i.name for i in config.input] == ["text", "input_ids", "attention_mask"]
    assert config.input[0].data_type == triton.model_config_pb2.TYPE_STRING and config.input[0].optional
    before = client.get_inference_statistics("mlm").model_stats[0].inference_stats.success.count
    client.infer("mlm", [text_input(triton, ["a[MASK]"])])
    assert client.get_inference_statistics("mlm").model_stats[0].inference_stats.success.count == before + 1


def test_repository_index_load_and_unload(client: triton.InferenceServerClient) -> None:
    states = {m.name: m.state for m in client.get_model_repository_index().models}
    assert states["mlm"] == "READY" and states["sentiment"] == "UNAVAILABLE"
    client.load_model("sentiment")
    assert client.is_model_ready("sentiment")
    client.unload_model("sentiment")
    assert not client.is_model_ready("sentiment")


def test_errors_have_the_servers_message_and_a_grpc_status(live: Live, client: triton.InferenceServerClient) -> None:
    bare = triton.InferenceServerClient(live.grpc)
    assert bare.is_server_live() and bare.is_server_ready()  # probes, open
    with pytest.raises(InferenceServerException) as info:
        bare.get_model_metadata("mlm")
    assert info.value.status() == "StatusCode.UNAUTHENTICATED" and "API key is required" in str(info.value)
    bare.close()
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlm", [text_input(triton, ["no mask here"])])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "input has no [MASK]" in str(info.value)
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("mlm", model_version="2")
    assert info.value.status() == "StatusCode.NOT_FOUND" and "only version is '1'" in str(info.value)


def test_one_input_one_output_over_grpc_http_json_and_http_binary(
    client: triton.InferenceServerClient, http: triton_http.InferenceServerClient
) -> None:
    texts = ["Hello [MASK]orld", "a[MASK][MASK]b"]
    names = ["mask_positions", "logits", "token_ids", "scores", "tokens"]
    options = {"request_id": "same", "priority": 1, "timeout": 20_000_000, "parameters": {"top_k": 4}}
    by_grpc = client.infer(
        "mlm", [text_input(triton, texts)], outputs=[triton.InferRequestedOutput(n) for n in names], **options
    )
    answers = {"grpc": {n: by_grpc.as_numpy(n) for n in names}}
    for binary in (True, False):
        result = http.infer(
            "mlm",
            [text_input(triton_http, texts, binary_data=binary)],
            outputs=[triton_http.InferRequestedOutput(n, binary_data=binary) for n in names],
            **options,
        )
        assert result.get_response()["id"] == by_grpc.get_response().id == "same"
        answers["http-binary" if binary else "http-json"] = {n: result.as_numpy(n) for n in names}
    for name in names[:4]:
        np.testing.assert_array_equal(answers["grpc"][name], answers["http-binary"][name])
        np.testing.assert_array_equal(answers["grpc"][name], answers["http-json"][name])
    as_text = np.vectorize(bytes.decode)(answers["grpc"]["tokens"])
    np.testing.assert_array_equal(as_text, np.vectorize(bytes.decode)(answers["http-binary"]["tokens"]))
    np.testing.assert_array_equal(as_text, answers["http-json"]["tokens"])

    data = png(3)
    legs = [  # (client, InferInput of the image, binary outputs)
        (client, triton.InferInput("image", [1], "BYTES").set_data_from_numpy(np.array([data], object)), None),
        (http, triton_http.InferInput("image", [1], "BYTES").set_data_from_numpy(np.array([data], object)), True),
        (  # JSON: the file as base64 text
            http,
            triton_http.InferInput("image", [1], "BYTES").set_data_from_numpy(
                np.array([base64.b64encode(data)], object), binary_data=False
            ),
            False,
        ),
    ]
    labels = []
    for c, image, binary in legs:
        kind = triton if binary is None else triton_http
        wanted = [
            kind.InferRequestedOutput("logits", class_count=2, **({} if binary is None else {"binary_data": binary}))
        ]
        top = c.infer("conv", [image], outputs=wanted).as_numpy("logits").reshape(-1)
        labels.append([v if isinstance(v, str) else v.decode() for v in top])
    assert labels[0] == labels[1] == labels[2]


def test_keys_per_call_sequences_and_deadlines(live: Live) -> None:
    """The key in one call's `headers` (metadata), without the plugin; sequence parameters accepted and ignored; the
    gRPC deadline (`client_timeout`) and the `timeout` parameter bound the call."""
    bare = triton.InferenceServerClient(live.grpc)
    key = {"authorization": f"Bearer {live.key}"}
    answer = bare.infer(
        "mlm", [text_input(triton, ["a[MASK]"])], headers=key, sequence_id=7, sequence_start=True, client_timeout=30
    )
    assert answer.as_numpy("mask_positions").tolist() == [[2]]  # after the start token
    assert bare.get_model_metadata("mlm", headers={"x-api-key": live.key}).name == "mlm"
    with pytest.raises(InferenceServerException) as info:
        bare.infer("mlm", [text_input(triton, ["a[MASK]"])], headers=key, timeout=1)  # 1 µs
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED" and "timed out" in str(info.value)
    bare.close()
