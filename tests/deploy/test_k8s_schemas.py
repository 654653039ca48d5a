"""Every rendered manifest validates, strictly and offline, against a schema for its exact kind.

Built-in kinds: kubernetes-validate's bundled OpenAPI schemas for K8S_VERSION, strict (unknown
fields fail). Custom resources: the CRD schemas vendored in tests/deploy/schemas/. A kind with
neither fails, so a new CRD cannot slip through unvalidated.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.support import K8S_VERSION, KSERVE, OVERLAYS, SCHEMAS, one, rendered


@cache
def vendored_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON schema, from tests/deploy/schemas/*.json."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        props = schema["properties"]
        out[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return out


def validate(doc: dict[str, Any]) -> str:
    """Raises unless `doc` is valid; returns what validated it."""
    key = (doc["apiVersion"], doc["kind"])
    if key in vendored_schemas():
        jsonschema.Draft202012Validator(vendored_schemas()[key]).validate(doc)
        return "vendored CRD schema"
    # SchemaNotFoundError for kinds Kubernetes does not have (CRDs without a vendored schema).
    return "kubernetes " + kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", [*OVERLAYS, KSERVE])
def test_rendered_manifests_validate(overlay: str) -> None:
    docs = rendered(overlay)
    assert docs
    failures = []
    for doc in docs:
        try:
            validate(doc)
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{doc['kind']}: {exc.message}; vendor its CRD schema in tests/deploy/schemas/")
        except jsonschema.ValidationError as exc:
            failures.append(
                f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.absolute_path))}: {exc.message}"
            )
    assert not failures, "\n".join(failures)


def test_crd_objects_use_the_vendored_schemas() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for overlay in [*OVERLAYS, KSERVE] for d in rendered(overlay)}
    assert set(vendored_schemas()) == {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    }
    assert set(vendored_schemas()) <= kinds


# The validation must be able to fail: each of these is a real mistake it has to catch.


def test_unknown_kind_fails() -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(widget)


def test_pinned_version_is_bundled() -> None:
    assert (
        kubernetes_validate.validate(one(rendered("base"), "Service"), K8S_VERSION, strict=True)
        == K8S_VERSION.rsplit(".", 1)[0]
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(resource={}),  # typo'd field
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="60"),  # wrong type
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].pop("port"),
    ],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_broken_deployment_fails(mutate) -> None:
    doc = copy.deepcopy(one(rendered("overlays/gpu"), "Deployment"))
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


@pytest.mark.parametrize(
    "kind, overlay, mutate",
    [
        ("ServiceMonitor", "base", lambda d: d["spec"]["endpoints"][0].update(intervall="15s")),
        ("ServiceMonitor", "base", lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds")),
        ("ServiceMonitor", "base", lambda d: d["spec"].pop("selector")),
        ("ScaledObject", "overlays/gpu-keda", lambda d: d["spec"].update(maxReplicas=8)),
        ("ScaledObject", "overlays/gpu-keda", lambda d: d["spec"]["triggers"][0].pop("metadata")),
        ("ScaledObject", "overlays/gpu-keda", lambda d: d["spec"].update(pollingInterval="15")),
        ("ServingRuntime", KSERVE, lambda d: d["spec"]["supportedModelFormats"][0].update(autoselect=True)),
        ("ServingRuntime", KSERVE, lambda d: d["spec"]["containers"][0]["ports"][0].update(containerPort="8080")),
        ("ServingRuntime", KSERVE, lambda d: d["spec"]["containers"][0]["livenessProbe"]["grpc"].pop("port")),
        ("InferenceService", KSERVE, lambda d: d["spec"]["predictor"]["model"].update(storageURI="s3://x")),
        ("InferenceService", KSERVE, lambda d: d["spec"]["predictor"]["model"]["modelFormat"].pop("name")),
        ("InferenceService", KSERVE, lambda d: d["spec"]["predictor"].update(minReplicas="1")),
    ],
    ids=[
        "sm-unknown-field",
        "sm-bad-duration",
        "sm-missing-selector",
        "so-unknown-field",
        "so-missing-metadata",
        "so-wrong-type",
        "sr-unknown-field",
        "sr-wrong-type",
        "sr-missing-required",
        "isvc-unknown-field",
        "isvc-missing-required",
        "isvc-wrong-type",
    ],
)
def test_broken_custom_resource_fails(kind: str, overlay: str, mutate) -> None:
    doc = copy.deepcopy(one(rendered(overlay), kind))
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)
