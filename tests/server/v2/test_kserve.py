"""The KServe Python SDK's REST and gRPC clients (kserve.InferenceRESTClient, kserve.InferenceGRPCClient), unchanged,
against a real server process: live, ready, model ready and infer, with the key in headers and metadata. The SDK
runs in a process of its own (tests/server/v2/kserve_calls.py says why)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as triton

from tests.server.conftest import REPO
from tests.server.v2.conftest import Bearer, Live

pytestmark = pytest.mark.slow


def test_the_kserve_sdk_calls_live_ready_and_infer(live: Live) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.server.v2.kserve_calls", live.base, live.grpc, live.key],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(proc.stdout.splitlines()[-1])
    reference = triton.InferenceServerClient(live.http)
    reference.register_plugin(Bearer(live.key))
    text = triton.InferInput("text", [2], "BYTES").set_data_from_numpy(
        np.array([b"Hello [MASK]orld", b"a[MASK][MASK]b"], dtype=object)
    )
    expected = reference.infer("mlm", [text], parameters={"top_k": 3})
    for transport in ("rest", "grpc"):
        got = answers[transport]
        assert got["live"] is True and got["ready"] is True and got["model_ready"] is True, transport
        assert got["infer"]["mask_positions"] == [[7, -1], [2, 3]], transport
        assert got["infer"]["token_ids"] == expected.as_numpy("token_ids").tolist(), transport
    reference.close()
