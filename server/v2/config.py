"""Triton's model configuration extension: a model's configuration in Triton's JSON (its `ModelConfig` message with
the proto field names), for tools that read it (perf_analyzer, model analyzers, clients sizing their batches).
gRPC parses the same dict into the message.

- `max_batch_size` is `max_inputs`, the most rows one request may carry: the model's batcher groups rows of
  several requests into batches of up to the model's `max_batch_size`, its `preferred_batch_size` here.
- Dims leave out the batch dim, as Triton's do when `max_batch_size` > 0; a tensor of rows only ([N]) is Triton's
  `dims: [1]` reshaped to `[]`. Dims known only once the checkpoint is loaded are -1 before.
- Inputs a request may leave out (the other form of the same data: text or input_ids, image or pixel_values) are
  `optional`.
"""

from __future__ import annotations

from typing import Any

from server.engine.devices import default_timeout_s
from server.engine.registry import Registry
from server.settings import ModelSpec
from server.v2.protocol import TensorMetadata
from server.v2.service import ADAPTERS, PLATFORM, find_model

BACKEND = "pytorch"


def data_type(datatype: str) -> str:
    """A protocol datatype as Triton's config names it."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor(meta: TensorMetadata) -> dict[str, Any]:
    dims = meta.shape[1:]  # the batch dim is max_batch_size's
    out: dict[str, Any] = {"name": meta.name, "data_type": data_type(meta.datatype), "dims": dims or [1]}
    if not dims:
        out["reshape"] = {"shape": []}
    return out


def _instance_kind(registry: Registry, spec: ModelSpec) -> dict[str, Any]:
    entry = registry.entries[spec.name]
    if entry.model is not None:
        device = entry.model.device
        if device.type == "cuda":
            return {"kind": "KIND_GPU", "gpus": [device.index or 0]}
        return {"kind": "KIND_CPU"}
    configured = spec.device or registry.settings.server.device
    return {"kind": {"cpu": "KIND_CPU", "auto": "KIND_AUTO"}.get(configured, "KIND_GPU")}


def model_config(registry: Registry, name: str, version: str | None) -> dict[str, Any]:
    spec = find_model(registry.settings, name, version)
    entry = registry.entries[spec.name]
    runner = entry.model.runner if entry.model is not None else None
    adapter = ADAPTERS[spec.task]
    server = registry.settings.server
    inputs = []
    for meta in adapter.inputs(runner):
        described = _tensor(meta)
        if meta.name not in adapter.required:
            described["optional"] = True
        inputs.append(described)
    return {
        "name": spec.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": server.max_inputs,
        "input": inputs,
        "output": [_tensor(meta) for meta in adapter.outputs(runner)],
        "dynamic_batching": {
            "preferred_batch_size": [spec.max_batch_size],
            "max_queue_delay_microseconds": round(spec.max_delay_ms * 1000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(default_timeout_s(spec, registry.settings) * 1e6),
                "allow_timeout_override": True,
                "max_queue_size": spec.max_queue,
            },
        },
        "instance_group": [{"name": spec.name, "count": 1, **_instance_kind(registry, spec)}],
        "parameters": {
            "task": {"string_value": spec.task.value},
            "status": {"string_value": entry.state.value},
            "random_weights": {"string_value": str(spec.random_weights).lower()},
        },
    }
