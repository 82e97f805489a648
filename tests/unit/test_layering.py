"""Imports point one way: ops -> flows -> tasks -> (adapters, model_registry, expectations) -> instructrec.
Read from the source (every import, also those inside functions), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("instructrec", "expectations", "adapters", "model_registry", "service", "tasks", "flows", "ops")

# what each package may import from the project (itself always)
ALLOWED = {
    "instructrec": set(),
    "expectations": {"instructrec"},
    "adapters": {"instructrec"},
    "model_registry": {"instructrec"},
    "service": {"instructrec", "model_registry", "adapters"},
    "tasks": {"instructrec", "expectations", "adapters", "model_registry"},
    "flows": {"instructrec", "expectations", "adapters", "model_registry", "tasks"},
    "ops": {"instructrec", "expectations", "adapters", "model_registry", "service", "tasks", "flows"},
}
# third-party frameworks the library must stay free of (it is tested and used without them)
LIBRARY_FORBIDDEN = {"prefect", "mlflow", "great_expectations", "fastapi"}
# the library's sub-packages, lowest first: each imports only those before it and the shared modules at the top
# (config, errors, io, ranks), which import no sub-package (docs/design.md, "The library")
LIBRARY_LAYERS = ("data", "language", "models", "serving", "evaluation", "training", "online", "engine")
RAY_PACKAGE = "engine"  # the one sub-package that may import Ray


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names this file imports (relative imports are resolved against its package)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


GRAPH = _graph()


def test_the_graph_covers_every_package():
    assert {name.split(".")[0] for name in GRAPH} == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    wrong = sorted(
        f"{src} imports {dst}"
        for src, targets in GRAPH.items()
        if src.split(".")[0] == package
        for dst in targets
        if dst.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not wrong, "\n".join(wrong)


def test_the_library_imports_no_framework():
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {m}"
        for path in (ROOT / "instructrec").rglob("*.py")
        for m in _imports(path)
        if m.split(".")[0] in LIBRARY_FORBIDDEN
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    """Depth-first search for a back edge anywhere in the module graph (two modules importing each other is the
    shortest cycle)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _library_part(module: str) -> str | None:
    """The sub-package a library module belongs to; None for the shared modules at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LIBRARY_LAYERS) else None


def test_every_library_module_sits_in_a_named_layer_or_the_shared_top():
    top = {name.split(".")[1] for name in GRAPH if name.startswith("instructrec.") and name.count(".") == 1}
    parts = {_library_part(name) for name in GRAPH if name.startswith("instructrec.")} - {None}
    assert parts == set(LIBRARY_LAYERS)
    assert top - set(LIBRARY_LAYERS) == {"config", "errors", "io", "ranks"}


def test_library_sub_packages_import_only_lower_ones():
    rank = {name: i for i, name in enumerate(LIBRARY_LAYERS)}
    wrong = []
    for src, targets in GRAPH.items():
        if not src.startswith("instructrec."):
            continue
        here = _library_part(src)
        for dst in targets:
            if not dst.startswith("instructrec.") or (there := _library_part(dst)) is None or there == here:
                continue
            if here is None or rank[there] > rank[here]:
                wrong.append(f"{src} ({here or 'shared top'}) imports {dst} ({there})")
    assert not wrong, "\n".join(sorted(wrong))


def test_only_the_engine_imports_ray():
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {m}"
        for path in (ROOT / "instructrec").rglob("*.py")
        if path.relative_to(ROOT / "instructrec").parts[0] != RAY_PACKAGE
        for m in _imports(path)
        if m.split(".")[0] == "ray"
    )
    assert not wrong, "\n".join(wrong)
    assert any(
        m.split(".")[0] == "ray" for path in (ROOT / "instructrec" / RAY_PACKAGE).rglob("*.py") for m in _imports(path)
    ), "the engine no longer imports Ray: the rule above guards nothing"


def test_tasks_log_to_mlflow_only_through_the_adapter():
    """A task that called MLflow itself would bypass the adapter's retries, key spelling and logging-time count."""
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {m}"
        for path in (ROOT / "tasks").rglob("*.py")
        for m in _imports(path)
        if m.split(".")[0] == "mlflow"
    )
    assert not wrong, "\n".join(wrong)


def test_no_task_draws_with_pyplot():
    """Figures are library code returning `Figure` objects; a task that drew with pyplot would hold global state."""
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {m}"
        for pkg in ("tasks", "flows", "instructrec")
        for path in (ROOT / pkg).rglob("*.py")
        for m in _imports(path)
        if m.startswith("matplotlib.pyplot")
    )
    assert not wrong, "\n".join(wrong)
