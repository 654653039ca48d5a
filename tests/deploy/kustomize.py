"""A small, offline renderer for the kustomize features that k8s/ uses, and nothing more.

No kustomize binary is packaged on PyPI, npm or Debian, and CI has no kubectl, so the tests
render k8s/ with this. It supports exactly:

- `resources`: YAML files (several documents allowed) and directories holding a kustomization;
- `configMapGenerator`: entries with `name` and `files` (`path` or `key=path`), named with
  kustomize's content hash suffix; references to the generated ConfigMap from pod volumes
  (`spec.template.spec.volumes[].configMap.name`) are renamed to the hashed name, and any other
  reference to it (envFrom, env valueFrom...) raises;
- `patches`: strategic-merge patches (`path` or inline `patch`, no `target`), matched to a
  resource by apiVersion group, kind and name; `$patch: delete` at the top level removes the
  resource. Maps merge recursively, `null` deletes a key, lists in LIST_MERGE_KEYS merge by
  their key as the Kubernetes types declare, lists in LIST_REPLACE are replaced;
- `namespace`: set on every resource but the cluster-scoped kinds of CLUSTER_SCOPED; a Namespace
  object is renamed to it (as kustomize does); a resource with `subjects` (RoleBinding...) raises;
- `images`: entries with `name` and `newName`, `newTag` and/or `digest` (not both of the last two),
  applied to the `image` of every container and init container.

Transformers run in kustomize's order: patches, then namespace, then images.

Anything else (another kustomization field, a patch touching a list not classified here)
raises UnsupportedFeature instead of being rendered wrongly. Where kubectl is installed,
tests/deploy/test_kustomize_renderer.py checks the output against `kubectl kustomize`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "configMapGenerator", "namespace", "images"}
# Kinds without a namespace, among those a deployment might carry (kustomize leaves them unnamespaced).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

# Lists whose Kubernetes type declares patchStrategy=merge, with their patchMergeKey.
LIST_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
# Lists without a merge strategy (atomic): a patch replaces them whole.
LIST_REPLACE = {"args", "command", "tolerations", "metrics", "policies", "triggers", "accessModes"}


class UnsupportedFeature(Exception):
    """The kustomization uses something this renderer does not implement."""


def _load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _group(api_version: str) -> str:
    return api_version.split("/", maxsplit=1)[0] if "/" in api_version else ""


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (_group(obj["apiVersion"]), obj["kind"], obj["metadata"]["name"])


def config_map_hash(cm: dict[str, Any]) -> str:
    """kustomize's name suffix for a ConfigMap (api/hasher: sha256 of a JSON encoding, re-lettered).

    The encoding has the data, the kind and a "name" that is always "": kustomize looks the name up
    with yaml.Lookup("metadata/name"), a single (missing) field, so the hash ignores the real name.
    """
    encoded: dict[str, Any] = {"kind": "ConfigMap", "name": "", "data": cm.get("data") or ""}
    if cm.get("binaryData"):
        encoded["binaryData"] = cm["binaryData"]
    # Go's json.Marshal: sorted map keys, no spaces, HTML-safe escapes, raw UTF-8.
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _generate_config_map(directory: Path, spec: dict[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - {"name", "files"}
    if unknown:
        raise UnsupportedFeature(f"configMapGenerator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.rpartition("=")
        path = directory / rel
        data[key or path.name] = path.read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": spec["name"]}, "data": data}


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict) and isinstance(base, dict):
        if "$patch" in patch:
            raise UnsupportedFeature(f"$patch directive inside {field or 'a resource'}")
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list):
        if field in LIST_MERGE_KEYS:
            return _merge_list(base or [], patch, LIST_MERGE_KEYS[field], field)
        if field in LIST_REPLACE:
            return copy.deepcopy(patch)
        raise UnsupportedFeature(f"strategic merge of list field {field!r} is not classified")
    return copy.deepcopy(patch)


def _merge_list(base: list[Any], patch: list[Any], key: str, field: str) -> list[Any]:
    out = copy.deepcopy(base)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise UnsupportedFeature(f"{field} patch item without merge key {key!r}")
        match = next((i for i, b in enumerate(out) if b.get(key) == item[key]), None)
        if match is None:
            out.append(copy.deepcopy(item))
        else:
            out[match] = _merge(out[match], item, field)
    return out


def _apply_patch(resources: list[dict[str, Any]], patch: dict[str, Any]) -> list[dict[str, Any]]:
    key = _key(patch)
    hits = [i for i, r in enumerate(resources) if _key(r) == key]
    if len(hits) != 1:
        raise ValueError(f"patch target {key} matches {len(hits)} resources")
    if patch.get("$patch") == "delete":
        return [r for i, r in enumerate(resources) if i != hits[0]]
    if "$patch" in patch:
        raise UnsupportedFeature(f"$patch: {patch['$patch']}")
    resources = list(resources)
    resources[hits[0]] = _merge(resources[hits[0]], patch)
    return resources


def _config_map_refs(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every {configMap|configMapRef|configMapKeyRef: {name: ...}} in a resource, with its path."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("configMap", "configMapRef", "configMapKeyRef") and isinstance(v, dict) and "name" in v:
                found.append(((*path, k), v))
            found += _config_map_refs(v, (*path, k))
    elif isinstance(node, list):
        for item in node:
            found += _config_map_refs(item, (*path, "[]"))
    return found


def _rename_config_map_refs(resources: list[dict[str, Any]], renames: dict[str, str]) -> None:
    for r in resources:
        for path, ref in _config_map_refs(r):
            if ref["name"] not in renames:
                continue
            if path != ("spec", "template", "spec", "volumes", "[]", "configMap"):
                raise UnsupportedFeature(f"reference to a generated ConfigMap at {'.'.join(path)}")
            ref["name"] = renames[ref["name"]]


def _set_namespace(resources: list[dict[str, Any]], namespace: str) -> None:
    for r in resources:
        if r["kind"] == "Namespace":
            r["metadata"]["name"] = namespace
        elif "subjects" in r:
            raise UnsupportedFeature(f"namespace with {r['kind']} subjects")
        elif r["kind"] not in CLUSTER_SCOPED:
            r["metadata"]["namespace"] = namespace


def _split_image(image: str) -> tuple[str, str]:
    """'repo/name:tag@digest' -> ('repo/name', ':tag@digest'); a registry port is not a tag."""
    at = image.find("@")
    head, digest = (image[:at], image[at:]) if at >= 0 else (image, "")
    colon = head.rfind(":")
    if colon > head.rfind("/"):
        return head[:colon], head[colon:] + digest
    return head, digest


def _set_images(node: Any, entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        unknown = set(entry) - {"name", "newName", "newTag", "digest"}
        if unknown or ("newTag" in entry and "digest" in entry):
            raise UnsupportedFeature(f"images entry fields {sorted(entry)}")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        c["image"] = _new_image(c["image"], entries)
            _set_images(value, entries)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, entries)


def _new_image(image: str, entries: list[dict[str, Any]]) -> str:
    name, rest = _split_image(image)
    for entry in entries:
        if entry["name"] != name:
            continue
        if "digest" in entry:
            rest = "@" + entry["digest"]
        elif "newTag" in entry:
            rest = ":" + str(entry["newTag"])
        return entry.get("newName", name) + rest
    return image


def render(directory: str | Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize DIRECTORY` would output (order aside)."""
    directory = Path(directory)
    kustomization = yaml.safe_load(_kustomization_file(directory).read_text()) or {}
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedFeature(f"{directory}: kustomization fields {sorted(unknown)}")

    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += render(path) if path.is_dir() else _load_docs(path)

    generated = [_generate_config_map(directory, g) for g in kustomization.get("configMapGenerator", [])]
    resources += generated

    for entry in kustomization.get("patches", []):
        if set(entry) - {"path", "patch"}:
            raise UnsupportedFeature(f"patch fields {sorted(set(entry) - {'path', 'patch'})}")
        docs = _load_docs(directory / entry["path"]) if "path" in entry else list(yaml.safe_load_all(entry["patch"]))
        for patch in docs:
            resources = _apply_patch(resources, patch)

    renames = {}
    for cm in generated:
        original = cm["metadata"]["name"]
        cm["metadata"]["name"] = f"{original}-{config_map_hash(cm)}"
        renames[original] = cm["metadata"]["name"]
    _rename_config_map_refs(resources, renames)
    if "namespace" in kustomization:
        _set_namespace(resources, kustomization["namespace"])
    if "images" in kustomization:
        _set_images(resources, kustomization["images"])

    keys = [_key(r) for r in resources]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise ValueError(f"{directory}: duplicate resources {sorted(duplicates)}")
    return resources
