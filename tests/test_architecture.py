"""The import arrows DESIGN.md draws hold in the code: each layer imports only the layers below it, the retrieval
package never imports the corpus package that owns it, and the ways in (servers/cli, api, mcp, policy) share only
what sits beside them in servers/, never each other (the command line starts the others)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder in the repository -> package it installs as (pyproject's package-dir).
PACKAGES = {"pagelens": "pagelens", "tools": "pagelens.tools", "graph": "pagelens.graph", "servers": "pagelens.servers",
            "prompts": "pagelens.prompts", "training": "pagelens.training"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *parts])
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """Every pagelens module the file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pagelens")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pagelens"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pagelens.x import module`
    return found


# (importer prefix, imported prefix) pairs that must not occur.
FORBIDDEN = [
    ("pagelens.tools", "pagelens.graph"), ("pagelens.tools", "pagelens.servers"),
    ("pagelens.tools", "pagelens.training"),
    ("pagelens.graph", "pagelens.servers"), ("pagelens.graph", "pagelens.training"),
    ("pagelens.training", "pagelens.servers"),
    ("pagelens.tools.retrieval", "pagelens.tools.corpus"),
    *[(f"pagelens.servers.{a}", f"pagelens.servers.{b}")
      for a in ("api", "mcp", "policy") for b in ("cli", "api", "mcp", "policy") if a != b],
]


def test_the_modules_are_found():
    found = modules()
    assert {"pagelens.tools.search", "pagelens.servers.cli.main", "pagelens.graph.nodes"} <= set(found)


@pytest.mark.parametrize("importer,imported", FORBIDDEN, ids=[f"{a}-x-{b}" for a, b in FORBIDDEN])
def test_no_import_crosses_a_layer_upwards(importer, imported):
    known = modules()
    crossing = sorted(f"{name} imports {target}" for name, path in known.items()
                      if name == importer or name.startswith(importer + ".")
                      for target in imports(path) if target == imported or target.startswith(imported + "."))
    assert not crossing, crossing
