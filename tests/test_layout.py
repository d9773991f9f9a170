"""The layout shows the architecture: no import cycles, no patched classes, typed ignores."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import smoothapi
from smoothapi import SmoothedClassifier

PACKAGE = Path(smoothapi.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports when it is loaded: top-level imports,
    not those inside functions or under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module.startswith("smoothapi"):
                    found.add(module)
                    found.update(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("smoothapi"))

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # Importing from one's own package (``from .. import __version__``) is how a subpackage
    # reaches its parents' names; the package is already being loaded: no edge.
    return {name: {m for m in _load_time_imports(path)
                   if m in modules and m != name and not name.startswith(m + ".")}
            for name, path in modules.items()}  # fmt: skip


def test_no_module_of_the_package_imports_itself_back_at_load_time():
    graph, cycles = _graph(), []

    def walk(node: str, trail: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in trail:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif len(trail) < 12:
                walk(nxt, [*trail, nxt])

    for start in graph:
        walk(start, [start])
    assert cycles == []


def test_the_library_never_imports_the_command_line_or_the_studies():
    graph = _graph()
    library = [m for m in graph if not m.startswith(("smoothapi.cli", "smoothapi.studies"))
               and m != "smoothapi.__main__"]  # fmt: skip
    reached = {m for name in library for m in graph[name]}
    assert not {m for m in reached if m.startswith(("smoothapi.cli", "smoothapi.studies"))}


def test_the_facade_defines_its_methods_in_its_own_class_body():
    for name in ("certify_many", "acertify_many"):
        method = SmoothedClassifier.__dict__[name]
        assert method.__qualname__ == f"SmoothedClassifier.{name}"
        assert method.__module__ == "smoothapi.smoothing"


def test_every_type_ignore_names_its_error_code_and_a_reason():
    loose = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "type: ignore" in line and not re.search(r"type: ignore\[[\w-]+\]\s+#\s*\S", line):
                loose.append(f"{path.name}:{number}")
    assert loose == []
