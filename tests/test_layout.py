"""The package's shape: imports flow one way (no cycles among retrieval modules), and the heavy
or front-end libraries stay in their rooms: torch/open_clip in embedders/, faiss in index/,
typer in cli/, fastapi/starlette/pydantic/uvicorn in http/. Read from the source with ast, so
lazy (function-level) imports count too; `if TYPE_CHECKING:` imports do not run and are skipped."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports when it runs (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for inner in ast.walk(child)
    }
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            # `from . import images` imports a module, not a name
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_module_names_are_found() -> None:
    assert {"retrieval.cli.main", "retrieval.http.routes", "retrieval.compose"} <= set(MODULES)
    assert "retrieval.app" not in MODULES


def test_no_import_cycles_among_retrieval_modules() -> None:
    graph = {
        name: {other for other in runtime_imports(path) if other in MODULES and other != name}
        for name, path in MODULES.items()
    }
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


# library -> the only part of the package that may import it
ROOMS = {
    "torch": "retrieval.embedders",
    "torchvision": "retrieval.embedders",
    "open_clip": "retrieval.embedders",
    "faiss": "retrieval.index",
    "typer": "retrieval.cli",
    "tqdm": "retrieval.cli",
    "fastapi": "retrieval.http",
    "starlette": "retrieval.http",
    "pydantic": "retrieval.http",
    "uvicorn": "retrieval.http",
    "prometheus_client": "retrieval.http",
    "ray": "retrieval.distributed",
}


def test_heavy_and_front_end_libraries_stay_in_their_rooms() -> None:
    strays = sorted(
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        for imported in runtime_imports(path)
        if (room := ROOMS.get(imported.split(".")[0])) is not None
        and name != room
        and not name.startswith(room + ".")
    )
    assert strays == []
