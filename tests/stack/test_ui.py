"""``make ui`` (stack/ui.py): mlflow ui, warmed up before it tells anyone its address."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stack.ui import WARM_UP, request
from tests.helpers.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def test_the_warm_up_imports_the_auth_models_before_the_first_orm_query():
    """The order is what prevents the race: the lazy auth import (/graphql) goes first."""
    assert WARM_UP[0][0] == "/graphql"
    assert "registered-models" in WARM_UP[1][0]


@pytest.mark.slow
def test_make_ui_prints_its_address_after_the_warm_up_and_answers_the_registry(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "stack.ui", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "The MLflow UI is ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(timeout=300), "".join(lines)[-3000:]
        text = "".join(lines)
        assert text.index("POST /graphql") < text.index("The MLflow UI is ready")  # warmed up
        base = f"http://127.0.0.1:{port}"
        path = "/ajax-api/2.0/mlflow/registered-models/search?max_results=5"
        assert request(base + path) == 200
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the group
        assert process.wait(timeout=120) == 0
