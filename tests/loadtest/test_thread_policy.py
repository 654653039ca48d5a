"""The thread-policy benchmark: each policy served by the server's own batcher, in a process of its own."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.thread_policy import ONE_MODEL, TWO_MODELS, policy_env, policy_threads, print_table, run_policy


def test_policies_differ_in_threads_wait_policy_and_processes() -> None:
    assert policy_threads("one-fewer", 8) == 7 and policy_threads("one-fewer", 1) == 1
    assert all(policy_threads(p, 8) == 8 for p in ("all-active", "all-passive", "process", "shared", "serialised"))
    assert policy_threads("process-split", 8) == 4
    assert "OMP_WAIT_POLICY" not in policy_env("one-fewer") and "OMP_WAIT_POLICY" not in policy_env("all-active")
    assert all(policy_env(p)["OMP_WAIT_POLICY"] == "PASSIVE" for p in ("all-passive", "process", *TWO_MODELS))
    assert len(set(ONE_MODEL) | set(TWO_MODELS)) == 10


@pytest.mark.slow
def test_each_kind_of_policy_serves_requests(tiny_models: dict[str, dict[str, Any]], capsys: Any) -> None:
    source = tiny_models["mlm"]["source"]
    rows = [run_policy(policy, source, 4, 4, 1.0, 1.0) for policy in ("adaptive", "process", "serialised")]
    for row in rows:
        assert "error" not in row, row
        assert row["req_s"] > 0 and row["p50_ms"] > 0 and 0 < row["cpu_used"] <= 1.05
        assert 0 <= row["loop_lag_p99_ms"] <= row["loop_lag_max_ms"]
    assert [r["models"] for r in rows] == [1, 1, 2]
    assert all(v > 0 for v in rows[2]["per_model_req_s"])  # both models served: half the clients each
    print_table([{**r, "size": "tiny"} for r in rows])
    assert capsys.readouterr().out.count("| tiny |") == 3
