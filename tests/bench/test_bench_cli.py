"""The benchmark scripts follow the project's command-line convention: a mistake in their
arguments is one ``error:`` line naming the script's --help, and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "harness.py")


def test_every_script_is_checked() -> None:
    assert {"clean_images.py", "int8.py", "search.py", "serve.py", "train.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bad_argument_is_one_line_and_exit_2(script: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--no-such-option"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (
        f"error: unrecognized arguments: --no-such-option; see `python bench/{script} --help`"
    )
