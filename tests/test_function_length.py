"""No function is over 80 lines (its ``def`` line to its last), read with ``ast``.

Every package outside ``tests/`` (and bench/) is measured, and a function over the limit fails
the test: a long function is a sign that a concern wants its own function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 80
SKIPPED = {"tests", "docs", ".venv", "mlruns", "data", "node_modules"}


def packages() -> list[Path]:
    """The first-party packages: top-level folders holding Python files, tests aside."""
    return sorted(
        folder
        for folder in ROOT.iterdir()
        if folder.is_dir()
        and folder.name not in SKIPPED
        and not folder.name.startswith(".")
        and any(folder.rglob("*.py"))
    )


def long_functions(folder: Path, limit: int = LIMIT) -> list[tuple[str, int]]:
    """``("path:line name", lines)`` of every function in ``folder`` over ``limit`` lines."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    where = f"{path.relative_to(folder.parent)}:{node.lineno} {node.name}"
                    found.append((where, lines))
    return found


def test_the_measure_counts_def_line_to_last_line(tmp_path: Path) -> None:
    body = "\n".join(f"    x = {i}" for i in range(LIMIT - 1))
    (tmp_path / "fits.py").write_text(f"@decorator\ndef fits():\n{body}\n")
    (tmp_path / "over.py").write_text(f"async def over():\n{body}\n    return x\n")
    assert [where.split()[-1] for where, _ in long_functions(tmp_path)] == ["over"]


def test_no_function_of_the_project_is_over_the_limit() -> None:
    folders = packages()
    assert {"serve", "steps", "registry", "marketplace_models"} <= {f.name for f in folders}
    found = [item for folder in folders for item in long_functions(folder)]
    assert not found, f"functions over {LIMIT} lines: {found}"
