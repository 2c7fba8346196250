"""The package's shape: imports flow one way (no cycles among retrieval modules), and the heavy
or front-end libraries stay in their rooms: torch/open_clip in embedders/, faiss in index/,
typer in cli/, fastapi/starlette/pydantic/uvicorn in http/. Read from the source with ast, so
lazy (function-level) imports count too; `if TYPE_CHECKING:` imports do not run and are skipped."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "retrieval"


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


# The rooms in layers, lowest first: a module imports its own room, rooms of its layer and rooms
# of lower layers, never a higher one (README "Architecture" draws the same picture).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {
            "retrieval",
            "types",
            "errors",
            "files",
            "faults",
            "config",
            "images",
            "locks",
            "sqlite_errors",
            "formats",
            "scaling",
        }
    ),
    frozenset({"embedders", "index"}),
    frozenset({"storage"}),
    frozenset({"ingest", "search", "eval"}),
    frozenset({"compose"}),
    frozenset({"distributed"}),
    frozenset({"indexing"}),
    frozenset({"cli", "http", "__main__"}),
)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(module: str) -> int:
    room = room_of(module)
    for number, rooms in enumerate(LAYERS):
        if room in rooms:
            return number
    raise AssertionError(f"{module} is in no layer: add its room to LAYERS")


def test_every_room_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_imports_flow_down_the_layers() -> None:
    upward = sorted(
        f"{name} (layer {layer_of(name)}) imports {other} (layer {layer_of(other)})"
        for name, path in MODULES.items()
        for other in runtime_imports(path)
        if other in MODULES and layer_of(other) > layer_of(name)
    )
    assert upward == []


def test_the_package_root_holds_only_leaves_and_the_composition_root() -> None:
    """The flat root of 31 modules was grouped into rooms; what stays at the root is a leaf
    (layer 0) or one of the two composition modules."""
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert all(layer_of(f"retrieval.{stem}") in (0, 4, 6) for stem in root), root
    assert len(root) <= 12, root


def test_every_public_name_resolves() -> None:
    """`retrieval.X` for each name of __all__ (most are lazy: a module path that moved with
    the rooms would otherwise fail only when a user touches it)."""
    import retrieval

    for name in retrieval.__all__:
        assert getattr(retrieval, name) is not None, name


# Modules that may read the process environment, and why; everything else gets its settings as
# parameters from the front ends, which read MMSEARCH_* in one place (cli/environment.py).
ENVIRONMENT_READERS = {
    "retrieval.cli.environment": "the front ends' one reader of MMSEARCH_* settings",
    "retrieval.faults": "MMSEARCH_FAULT, the fault harnesses' crash hook in a child process",
    "retrieval.embedders.open_clip": "Hugging Face's own HF_* variables, to word offline errors",
    "retrieval.distributed.ray_embed": "forwards the environment to Ray worker processes",
}


def reads_environment(path: Path) -> bool:
    """True when `path` touches os.environ, os.getenv or os.environb (however imported)."""
    names = {"environ", "environb", "getenv", "getenvb"}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in names
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in names for alias in node.names)
        ):
            return True
    return False


def test_environment_variables_are_read_at_the_edges_only() -> None:
    readers = sorted(name for name, path in MODULES.items() if reads_environment(path))
    assert readers == sorted(ENVIRONMENT_READERS)
