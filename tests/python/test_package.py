"""The shape of the Python package: no import cycle, a library that loads neither the
command line nor the demo nor the bench, one error hierarchy, and what a wheel needs
(py.typed, the licence text, one version)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import costwarden
from costwarden.errors import CostwardenError

PACKAGE = Path(costwarden.__file__).resolve().parent
#: The packages above the library: none of them is loaded by ``import costwarden``.
UPPER = ("costwarden.cli", "costwarden.demo", "costwarden.bench")
ROOT = PACKAGE.parents[1]


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``: code that runs as the module __main__, not as this
    module, so its imports are no edges of this module."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its body (a function's
    lazy import counts), including the parent packages an import loads."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = [node for node in tree.body if not _is_main_guard(node)]
    targets: set[str] = set()
    for top in body:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - node.level + 1]
                    origin = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                targets.add(origin)
                targets.update(f"{origin}.{alias.name}" for alias in node.names)
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c loads a, a.b and a.b.c
            candidate = ".".join(parts[:i])
            if candidate in modules and candidate != name:
                edges.add(candidate)
    # a module's own parent packages are loaded before it: never an edge out of it
    parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return edges - parents


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert {"costwarden.cli.main", "costwarden.demo.story", "costwarden.bench.saga"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_imports_no_cli_demo_or_bench() -> None:
    """What a library user pulls in: the layers only point down."""
    graph = _graph()
    upper = UPPER
    for name, edges in graph.items():
        if _under(name, *upper):
            continue
        assert not {e for e in edges if _under(e, *upper)}, name
    # the demo and the bench never reach up into the command line either
    for name, edges in graph.items():
        if _under(name, "costwarden.demo", "costwarden.bench"):
            assert not {e for e in edges if _under(e, "costwarden.cli")}, name


def test_import_costwarden_loads_neither_click_nor_the_cli() -> None:
    code = "import json, sys, costwarden\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout)
    assert "costwarden.client" in loaded
    assert [m for m in loaded if _under(m, "click", *UPPER)] == []


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(costwarden.__path__, "costwarden."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


def test_commands_are_registered_explicitly() -> None:
    from costwarden.cli import main
    from costwarden.cli.main import COMMANDS

    assert set(main.commands.values()) == set(COMMANDS)
    assert len({c.name for c in COMMANDS}) == len(COMMANDS)
    source = (PACKAGE / "cli" / "main.py").read_text()
    assert "glob" not in source and "import_module" not in source


#: Exceptions that must escape a caller's ``except Exception`` (LiteLLM's sync path
#: swallows every Exception its hooks raise, so a refusal there is a BaseException).
NOT_EXCEPTIONS = {"costwarden.integrations.litellm.SyncCallRefused"}


def test_every_exception_derives_from_costwarden_error() -> None:
    checked = []
    for info in pkgutil.walk_packages(costwarden.__path__, "costwarden."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, BaseException):
                continue
            qualified = f"{cls.__module__}.{cls.__qualname__}"
            checked.append(qualified)
            if qualified in NOT_EXCEPTIONS:
                assert not issubclass(cls, Exception), qualified
                continue
            assert issubclass(cls, CostwardenError), qualified
    assert "costwarden.ledger.LedgerFormatError" in checked
    assert "costwarden.ledger.DigestError" in checked
    assert "costwarden.embedded.EmbeddedError" in checked
    assert "costwarden.migrate.MigrationError" in checked
    assert "costwarden.pricing.CatalogueError" in checked


def test_packaging_files() -> None:
    assert (PACKAGE / "py.typed").is_file()
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    meta = importlib.metadata.metadata("costwarden")
    assert meta["License-Expression"] == "Apache-2.0"
    assert costwarden.__version__ == importlib.metadata.version("costwarden")
    # one version source: pyproject.toml (the package reads it from the metadata)
    assert costwarden.__version__ not in (PACKAGE / "__init__.py").read_text()
    # the bench's workloads travel with the package
    from costwarden.bench.common import workloads_dir

    assert (workloads_dir() / "saga_pair.sql").is_file()
