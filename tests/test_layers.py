"""The layers import downwards only: cli -> flows -> pipeline -> model.

``model/`` is torch only and knows nothing of the pipeline; ``pipeline/`` is the domain and
knows nothing of Prefect or the CLI; ``flows/`` is orchestration over ``pipeline``; the CLI sits
above both. Read from the source with :mod:`ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("model", "pipeline", "flows", "cli")
"""Lowest first: a package may import the ones before it, never the ones after."""
FORBIDDEN_THIRD_PARTY = {"pipeline": ("prefect",), "model": ("prefect", "av", "click")}
"""Libraries a layer must not import: the domain has no Prefect; the model no I/O stack."""


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports, at any depth)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_violations(package: str) -> list[str]:
    """``file: imports X`` for every import of a higher layer or a forbidden library in ``package``."""
    above = set(LAYERS[LAYERS.index(package) + 1 :]) | set(FORBIDDEN_THIRD_PARTY.get(package, ()))
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in sorted(imported_modules(path) & above):
            found.append(f"{path.relative_to(REPO)}: imports {name}")
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_layers_import_only_downwards(package: str) -> None:
    assert layer_violations(package) == []


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from flows.reel import run_flow\n    import prefect.states\n")
    assert imported_modules(source) == {"flows", "prefect"}
