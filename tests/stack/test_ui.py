"""``make ui`` (stack/ui.py): mlflow ui, warmed up before it tells anyone its address."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.ui import WARM_UP, request
from tests.helpers.servers import UI_READY_LINE, running_ui

REPO = Path(__file__).resolve().parents[2]


def test_the_warm_up_imports_the_auth_models_before_the_first_orm_query():
    """The order is what prevents the race: the lazy auth import (/graphql) goes first."""
    assert WARM_UP[0][0] == "/graphql"
    assert "registered-models" in WARM_UP[1][0]


@pytest.mark.slow
def test_make_ui_prints_its_address_after_the_warm_up_and_answers_the_registry(tmp_path):
    with running_ui(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as ui:
        text = "".join(ui.lines)
        assert text.index("POST /graphql") < text.index(UI_READY_LINE)  # warmed up
        path = "/ajax-api/2.0/mlflow/registered-models/search?max_results=5"
        assert request(ui.url + path) == 200
    assert ui.process.returncode == 0, "Ctrl-C in the terminal reaches the group"
