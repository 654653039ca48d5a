"""The KServe SDK's clients, as its docs drive them, against a server: run as `python -m tests.server.v2.kserve_calls
HTTP_BASE GRPC_TARGET KEY`, printing what each call answered as JSON.

A process of its own: the SDK registers the protocol's protobuf names in protobuf's default pool, as
tritonclient.grpc does, and the two cannot be imported into one process (the test process imports tritonclient).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

TEXTS = ["Hello [MASK]orld", "a[MASK][MASK]b"]


def request() -> InferRequest:
    text = InferInput(name="text", shape=[len(TEXTS)], datatype="BYTES", data=TEXTS, parameters={"content_type": "str"})
    return InferRequest(
        model_name="mlm",
        infer_inputs=[text],
        request_outputs=[RequestedOutput("token_ids"), RequestedOutput("mask_positions")],
        parameters={"top_k": 3},
    )


def outputs(response: Any) -> dict[str, list[Any]]:
    return {output.name: output.as_numpy().tolist() for output in response.outputs}


async def main(base: str, target: str, key: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    grpc = InferenceGRPCClient(target, timeout=60)
    metadata = tuple(headers.items())
    try:
        return {
            "rest": {
                "live": await rest.is_server_live(base),
                "ready": await rest.is_server_ready(base),
                "model_ready": await rest.is_model_ready(base, "mlm", headers=headers),
                "infer": outputs(await rest.infer(base, request(), model_name="mlm", headers=headers)),
            },
            "grpc": {
                "live": await grpc.is_server_live(),
                "ready": await grpc.is_server_ready(),
                "model_ready": await grpc.is_model_ready("mlm", headers=metadata),
                "infer": outputs(await grpc.infer(request(), headers=metadata)),
            },
        }
    finally:
        await rest.close()
        await grpc.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
