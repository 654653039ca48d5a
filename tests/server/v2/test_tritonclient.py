"""Triton's own HTTP client (tritonclient.http, binary tensor data by default), unchanged, against a real server
process with API keys on: every call carries the key through tritonclient's plugin hook."""

from __future__ import annotations

import io
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from model_core.image_processing import preprocess_images
from server.v2.service import EXTENSIONS
from tests.server.v2.conftest import Bearer, Live, png

pytestmark = pytest.mark.slow


def text_input(texts: list[str], *, binary: bool = True) -> triton.InferInput:
    return triton.InferInput("text", [len(texts)], "BYTES").set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=object), binary_data=binary
    )


@pytest.fixture(scope="module")
def client(live: Live) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=live.http, network_timeout=60)
    client.register_plugin(Bearer(live.key))
    yield client
    client.close()


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert set(client.get_server_metadata()["extensions"]) == set(EXTENSIONS)  # the list: test_service.py
    assert client.is_model_ready("mlm") and client.is_model_ready("conv", model_version="1")
    assert not client.is_model_ready("sentiment")  # configured, loads on first use
    meta = client.get_model_metadata("conv")
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {"image": [-1], "pixel_values": [-1, 3, 224, 224]}
    assert {t["name"]: t["shape"] for t in meta["outputs"]} == {"logits": [-1, 4], "labels": [-1, -1]}


def test_fill_mask_binary_and_json(client: triton.InferenceServerClient) -> None:
    texts = ["Hello [MASK]orld", "a[MASK][MASK]b"]
    binary = client.infer(
        "mlm", [text_input(texts)], request_id="r1", priority=2, timeout=20_000_000, parameters={"top_k": 4}
    )
    assert binary.get_response()["id"] == "r1"
    names = ["mask_positions", "token_ids", "scores", "tokens"]
    json_only = client.infer(
        "mlm",
        [text_input(texts, binary=False)],
        parameters={"top_k": 4},
        outputs=[triton.InferRequestedOutput(n, binary_data=False) for n in names],
    )
    assert binary.as_numpy("mask_positions").tolist() == [[7, -1], [2, 3]]
    assert binary.as_numpy("tokens").shape == (2, 2, 4) and binary.as_numpy("scores").dtype == np.float32
    for name in names[:3]:
        np.testing.assert_array_equal(binary.as_numpy(name), json_only.as_numpy(name))
    as_text = np.vectorize(bytes.decode)(binary.as_numpy("tokens"))  # BYTES: bytes when binary, str from JSON
    np.testing.assert_array_equal(as_text, json_only.as_numpy("tokens"))
    np.testing.assert_allclose(binary.as_numpy("scores"), np.sort(binary.as_numpy("scores"), axis=-1)[..., ::-1])

    ids = np.array([[4, *(b + 6 for b in b"Hello "), 3, *(b + 6 for b in b"orld"), 5]], dtype=np.int64)
    by_ids = client.infer(
        "mlm",
        [triton.InferInput("input_ids", list(ids.shape), "INT64").set_data_from_numpy(ids)],
        outputs=[triton.InferRequestedOutput("token_ids")],
        parameters={"top_k": 4},
    )
    assert by_ids.as_numpy("token_ids").tolist()[0][0] == binary.as_numpy("token_ids").tolist()[0][0]


def test_image_classification_binary_json_and_classification(client: triton.InferenceServerClient) -> None:
    data = png()
    image = triton.InferInput("image", [1, 1], "BYTES").set_data_from_numpy(np.array([[data]], dtype=object))
    by_file = client.infer(
        "conv", [image], outputs=[triton.InferRequestedOutput("logits"), triton.InferRequestedOutput("labels")]
    )
    logits = by_file.as_numpy("logits")
    assert logits.shape == (1, 4) and logits.dtype == np.float32
    pixels = preprocess_images([Image.open(io.BytesIO(data))]).numpy()
    for binary in (True, False):
        by_pixels = client.infer(
            "conv",
            [
                triton.InferInput("pixel_values", list(pixels.shape), "FP32").set_data_from_numpy(
                    pixels, binary_data=binary
                )
            ],
            outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
        )
        np.testing.assert_array_equal(by_pixels.as_numpy("logits"), logits)

    top = client.infer("conv", [image], outputs=[triton.InferRequestedOutput("logits", class_count=2)])
    value, index, label = top.as_numpy("logits")[0, 0].decode().split(":")
    assert int(index) == int(logits.argmax()) and np.isclose(float(value), logits.max(), rtol=1e-6)
    assert by_file.as_numpy("labels")[0, 0].decode().split(":")[2] == label


def test_fp16_and_bf16_outputs(client: triton.InferenceServerClient) -> None:
    image = triton.InferInput("image", [1], "BYTES").set_data_from_numpy(np.array([png(1)], dtype=object))
    wanted = [triton.InferRequestedOutput("logits")]
    fp32 = client.infer("conv", [image], outputs=wanted).as_numpy("logits")
    fp16 = client.infer("conv", [image], outputs=wanted, parameters={"output_datatype": "FP16"}).as_numpy("logits")
    bf16 = client.infer("conv", [image], outputs=wanted, parameters={"output_datatype": "BF16"}).as_numpy("logits")
    assert fp16.dtype == np.float16 and bf16.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(fp16, fp32.astype(np.float16))
    np.testing.assert_array_equal(bf16, fp32.astype(ml_dtypes.bfloat16))


def test_errors_raise_with_the_server_message(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [text_input(["[MASK]"])])
    assert info.value.status() == "404" and "no model named 'no-such-model'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("mlm", model_version="7")
    assert info.value.status() == "404" and "only version is '1'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlm", [text_input(["no mask here"])])
    assert info.value.status() == "422" and "text[0]: input has no [MASK]" in info.value.message()


def test_compressed_requests(client: triton.InferenceServerClient) -> None:
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "mlm",
            [text_input(["Hello [MASK]orld"])],
            request_compression_algorithm=algorithm,
            outputs=[triton.InferRequestedOutput("mask_positions")],
        )
        assert result.as_numpy("mask_positions").tolist() == [[7]]


def test_configuration_statistics_and_repository(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("conv", model_version="1")
    assert config["name"] == "conv" and config["max_batch_size"] == 64  # max_inputs
    assert {t["name"]: t["dims"] for t in config["output"]} == {"logits": [4], "labels": [-1]}
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]

    def successes() -> int:
        (stats,) = client.get_inference_statistics("mlm")["model_stats"]
        return stats["inference_stats"]["success"]["count"]

    before = successes()
    client.infer("mlm", [text_input(["a[MASK]"])])
    assert successes() == before + 1
    every = client.get_inference_statistics()["model_stats"]
    assert {"mlm", "sentiment", "conv"} <= {s["name"] for s in every}

    states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert states["mlm"] == "READY" and states["sentiment"] == "UNAVAILABLE"
    assert not client.is_model_ready("sentiment")
    client.load_model("sentiment")  # how a client that checks readiness first makes a model ready
    assert client.is_model_ready("sentiment")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("sentiment", config='{"max_batch_size": 2}')
    assert info.value.status() == "400" and "configuration" in str(info.value)
    client.unload_model("sentiment")
    assert not client.is_model_ready("sentiment")


def test_errors_before_the_routes_read_in_the_client(live: Live, client: triton.InferenceServerClient) -> None:
    """401, 404, 405 and 413 come from the middleware and the router: the protocol's shape, so that tritonclient's
    exception has a message (its str() raises TypeError on the app's nested error object)."""
    bare = triton.InferenceServerClient(url=live.http)
    assert bare.is_server_live() and bare.is_server_ready()  # the probes are open
    with pytest.raises(InferenceServerException) as info:
        bare.get_model_metadata("mlm")
    assert info.value.status() == "401" and "API key is required" in str(info.value)
    assert bare.get_model_metadata("mlm", headers={"X-API-Key": live.key})["name"] == "mlm"  # a key per call
    with pytest.raises(InferenceServerException) as info:
        bare.get_model_metadata("mlm", headers={"authorization": "Bearer wrong"})
    assert info.value.status() == "401" and "not valid" in str(info.value)
    with pytest.raises(InferenceServerException) as info:
        client.get_trace_settings()  # not implemented here: an unknown route
    assert info.value.status() == "404" and "Not Found" in str(info.value)
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlm", [text_input(["[MASK]" + "x" * 5_000_000])])  # over max_body_mb
    assert info.value.status() == "413" and "at most" in str(info.value)
    bare.close()
