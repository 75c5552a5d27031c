"""personas imports nothing of generation but its framework-free engine (DESIGN.md:
imports point one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import personas


def test_personas_imports_nothing_of_generation_but_the_engine():
    offenders = []
    for path in Path(personas.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [
                f"{path.name}: {name}"
                for name in names
                if (name == "generation" or name.startswith("generation."))
                and not (
                    name == "generation.engine" or name.startswith("generation.engine.")
                )
            ]

    assert offenders == []
