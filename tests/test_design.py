"""Checks of the code's shape that a reader can repeat (issue 15): no import circle between facepipe's modules.

Needs no data and no model: it reads the source only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facepipe"


def imports_of_each_module() -> dict[str, set[str]]:
    """facepipe module -> the facepipe modules it imports anywhere in its source (at the top or inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facepipe"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("facepipe"))
        modules[name] = found
    return {name: {other for other in found if other in modules and other != name} for name, found in modules.items()}


def test_no_import_circle_between_modules():
    graph = imports_of_each_module()
    assert {"facepipe.run", "facepipe.report", "facepipe.crops", "facepipe.cvae"} <= set(graph)
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open" and other != "facepipe":
                circles.append(path[path.index(other):] + [other] if other in path else [module, other])
            elif other not in state:
                visit(other, path + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
