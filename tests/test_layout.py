"""The package's shape: every module's import name is its path under src/, no two modules
import each other (directly or round a circle), and no layer imports one above it.

Imports are read from the source (every `import` and `from ... import`, function-level ones
included), so the test sees what a reader or a structure viewer sees.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ggml_rpc_spec

PACKAGE = Path(ggml_rpc_spec.__file__).resolve().parent
ROOT = PACKAGE.name

# Lowest first.  A module may import its own subpackage and those of lower rank only.
LAYERS = {
    "fixtures": 0,  # package data only
    "protocol": 0,
    "netio": 1,
    "executor": 2,
    "client": 3,
    "server": 4,
    "relay": 5,
    "traces": 5,
    "upstream_peers": 6,
    "conformance": 7,
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports: a `from X import y` counts as importing
    X.y when that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> tuple[str, int]:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return top, LAYERS.get(top, -1)


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a module above the importer's layer."""
    found = []
    for source, targets in sorted(edges.items()):
        top, rank = layer(source)
        for target in sorted(targets):
            other, other_rank = layer(target)
            if other != top and other_rank > rank:
                found.append(f"{source} ({top}) imports {target} ({other})")
    return found


def test_every_subpackage_has_a_layer():
    tops = {layer(name)[0] for name in modules()} - {""}
    assert tops == set(LAYERS), f"subpackages without a layer, or layers without a subpackage: {tops ^ set(LAYERS)}"


def test_no_import_circles():
    found = circles(graph())
    assert not found, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_layer_imports_a_higher_one():
    found = upward(graph())
    assert not found, "\n".join(found)


def test_import_names_are_paths():
    """Every module the installed package imports by name lives at that path under src/."""
    assert PACKAGE.parent.name == "src", f"the package is not under src/: {PACKAGE}"
    for name, path in modules().items():
        assert path == PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py") or \
            path == PACKAGE.parent.joinpath(*name.split("."), "__init__.py"), (name, path)


# -- the checks themselves can fail ---------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        target = root / ROOT / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root / ROOT


def test_a_circle_is_found(tmp_path):
    package = _write(tmp_path, {
        "__init__.py": "",
        "protocol/__init__.py": "",
        "protocol/a.py": "from .b import x\n",
        "protocol/b.py": "def f():\n    from ggml_rpc_spec.protocol import a\n",
    })
    assert circles(graph(package)) == [["ggml_rpc_spec.protocol.a", "ggml_rpc_spec.protocol.b"]]


def test_a_package_importing_its_own_module_that_imports_it_is_a_circle(tmp_path):
    package = _write(tmp_path, {
        "__init__.py": "",
        "protocol/__init__.py": "from . import ops\n",
        "protocol/ops.py": "from . import Thing\n",
    })
    assert circles(graph(package)) == [["ggml_rpc_spec.protocol", "ggml_rpc_spec.protocol.ops"]]


@pytest.mark.parametrize("text", ["from ggml_rpc_spec.server.service import X\n",
                                  "def f():\n    from ..conformance import core\n"])
def test_protocol_importing_a_higher_layer_is_found(tmp_path, text):
    package = _write(tmp_path, {
        "__init__.py": "",
        "protocol/__init__.py": "",
        "protocol/low.py": text,
        "server/__init__.py": "",
        "server/service.py": "X = 1\n",
        "conformance/__init__.py": "",
        "conformance/core.py": "",
    })
    found = upward(graph(package))
    assert len(found) == 1 and found[0].startswith("ggml_rpc_spec.protocol.low (protocol) imports")
