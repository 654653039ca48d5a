"""The shape of the code: small modules, a short server/ top level, and imports that follow the request path
downwards only (HTTP -> routes -> engine -> tasks -> media and model_core). Training (finetune/) stands
beside the server: it builds on model_core alone, and only the command line reaches into it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# Lower layers never import higher ones. Within a layer, packages may import each other.
LAYERS = [
    ("model_core",),
    ("server.errors", "server.settings", "server.limits", "server.models.catalog", "server.observability"),  # core
    ("server.media", "server.models"),
    ("server.tasks",),
    ("server.engine",),
    ("server.http",),
    ("server.routers", "server.v2", "server.deps"),  # deps: what a route may ask for
    ("server.app", "server.cli", "server.__main__", "server"),
]
TRAINING = "finetune"
TRAINING_ENTRY = "server.cli"  # its `finetune` subcommand


def modules(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    """The layer of a module: the one whose most specific prefix matches it."""
    best = (-1, -1)  # (prefix length, layer)
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), level)
    assert best[1] >= 0, f"{name} is in no layer"
    return best[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name.split(".")[0] in ("server", "model_core", TRAINING) and "." in name}


@pytest.mark.parametrize("path", [*modules("server"), *modules("model_core")], ids=lambda p: str(p.relative_to(REPO)))
def test_modules_are_small_and_import_downwards(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it"
    name = module_name(path)
    found = imports(path)
    training = sorted(i for i in found if i.split(".")[0] == TRAINING)
    assert not training or name == TRAINING_ENTRY, f"{name} imports training code: {training}"
    upward = sorted(i for i in found - set(training) if _is_module(i) and layer_of(i) > layer_of(name))
    assert not upward, f"{name} (layer {layer_of(name)}) imports higher layers: {upward}"


@pytest.mark.parametrize("path", modules(TRAINING), ids=lambda p: str(p.relative_to(REPO)))
def test_training_modules_are_small_and_build_on_model_core_alone(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it"
    server = sorted(i for i in imports(path) if i.split(".")[0] == "server")
    assert not server, f"{module_name(path)} imports the server: {server}"


def _is_module(name: str) -> bool:
    """Whether `name` is a module or package of the repository (not a name imported from one)."""
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_the_server_top_level_is_short() -> None:
    top = sorted(p.name for p in (REPO / "server").glob("*.py"))
    assert len(top) <= 8, top
