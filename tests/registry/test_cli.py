"""``python -m registry``: list, show, compare, promote, roll back; errors in one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.promotion import promote
from tests.helpers.registry_store import (
    NAME,
    ROOT,
    _tags,
    registry_main,
)
from tests.helpers.servers import closed_endpoint


def test_cli_list_show_compare(client, capsys: pytest.CaptureFixture[str]) -> None:
    promote(NAME, "1", client=client)
    promote(NAME, "2", client=client)

    assert registry_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[:5] == ["version", "aliases", "stage", "test/accuracy", "val/accuracy"]
    rows = {line.split()[0]: line for line in lines[2:] if line[:1].isdigit()}
    assert list(rows) == ["4", "3", "2", "1"]
    assert "production" in rows["2"] and "0.7000" in rows["2"]
    assert "previous-production" in rows["1"]
    assert lines[-1] == "production: version 2"

    assert registry_main(["show"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{NAME} version 2\n")
    assert "  test/accuracy  0.7000" in shown
    assert "promotion.previous_version  1" in shown
    assert "  arch  two" in shown

    assert registry_main(["compare", "previous-production", "production"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["version", "1", "version", "2", "change"]
    accuracy = next(line for line in table if line.startswith("test/accuracy"))
    assert accuracy.split() == ["test/accuracy", "0.6000", "0.7000", "+0.1000"]
    arch = next(line for line in table if line.startswith("param arch"))
    assert arch.split() == ["param", "arch", "one", "two", "*"]


def test_cli_promote_refusal_and_rollback(client, capsys: pytest.CaptureFixture[str]) -> None:
    assert registry_main(["promote", "--version", "2", "--by", "carol", "--reason", "go"]) == 0
    assert capsys.readouterr().out.startswith(f"{NAME}: production promoted version 2")

    assert registry_main(["promote", "--version", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: refused: version 1 has test/accuracy 0.6000, 0.1000 below")

    assert registry_main(["promote", "--version", "1", "--force", "--legacy-stage"]) == 0
    assert registry_main(["rollback", "--reason", "oops"]) == 0
    assert "rolled back to version 2 (was version 1)" in capsys.readouterr().out
    assert client.get_model_version(NAME, "2").current_stage == "Production"
    assert _tags(client, 2)["promotion.reason"] == "oops"


def test_cli_errors_are_one_line(client, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in (
        (["show", "9"], "error: marketplace-classifier has no version 9 (versions: 1, 2, 3, 4)"),
        (["show", "production"], "error: no version of marketplace-classifier holds the alias"),
        (["list", "--model-name", "nope"], "error: no registered model named 'nope'"),
        (["promote", "--version", "best", "--metric", "f1"], "error: no version of"),
    ):
        assert registry_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(expected), err
        assert not any("Traceback" in line for line in err)


def test_cli_unreachable_server_fails_fast(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_endpoint())
    started = time.monotonic()
    assert registry_main(["list"]) == 2
    # MLflow's own client retries for minutes; the check answers at once, even on a busy machine.
    assert time.monotonic() - started < 60
    assert capsys.readouterr().err.startswith("error: cannot reach the MLflow tracking server")


def test_cli_missing_sqlite_store_is_not_created(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry_main(["list"]) == 2
    assert "no tracking store at mlflow.db" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_help_for_every_command() -> None:
    for command in ([], ["list"], ["show"], ["compare"], ["promote"], ["rollback"]):
        result = subprocess.run(
            [sys.executable, "-m", "registry", *command, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: python -m registry" in result.stdout


@pytest.mark.parametrize(
    ("name", "entry_point"),
    [
        ("marketplace-classifier", "train"),
        ("marketplace-text-classifier", "train_text"),
        ("marketplace-listing-classifier", "train_combined"),
    ],
)
def test_a_missing_model_names_the_entry_point_that_trains_its_kind(
    tmp_path: Path, name: str, entry_point: str, monkeypatch, capsys
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_registered_models()  # an empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert registry_main(["list", "--model-name", name]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no registered model named {name!r}" in error, error
    assert f"`mlflow run . -e {entry_point} --env-manager local`" in error, error
