"""A promotion killed at any point between its writes still leaves a rollback target."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry import promotion
from registry.promotion import promote
from tests.helpers.registry_store import (
    NAME,
    ROOT,
    _aliases,
    _tags,
)

KILL_AFTER_ALIAS_WRITES = """
import os, signal, sys

import mlflow

real = mlflow.MlflowClient.set_registered_model_alias
writes = []


def set_alias(self, *args, **kwargs):
    real(self, *args, **kwargs)
    writes.append(args)
    if len(writes) == int(os.environ["KILL_AFTER_ALIAS_WRITES"]):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies here, the lock still held


mlflow.MlflowClient.set_registered_model_alias = set_alias
from registry.__main__ import run

run(sys.argv[1:])
"""


def _registry_process(client, tmp_path: Path, *argv: str, code: str | None = None, **env):
    """``python -m registry ARGV`` (or ``code`` run with ARGV) against the test store."""
    environ = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri, **env}
    environ["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "registry"]
    return subprocess.run(
        [*command, *argv, "--clean", str(tmp_path / "none")],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("writes", [1, 2], ids=["after-first-alias", "after-second-alias"])
def test_a_promotion_killed_between_its_alias_writes_can_still_be_rolled_back(
    client, tmp_path: Path, writes: int
) -> None:
    """Production 2, previous 1; a forced promotion of 4 dies after ``writes`` alias writes
    (holding the lock): ``python -m registry rollback`` gives production back to 2."""
    promote(NAME, "1", client=client)
    promote(NAME, "2", client=client)
    killed = _registry_process(
        client,
        tmp_path,
        "promote",
        "--version",
        "4",
        "--force",
        code=KILL_AFTER_ALIAS_WRITES,
        KILL_AFTER_ALIAS_WRITES=str(writes),
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    lock = NAME + promotion.LOCK_SUFFIX
    assert lock in {m.name for m in client.search_registered_models()}  # left by the dead

    rolled = _registry_process(client, tmp_path, "rollback", "--reason", "after a crash")
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert _aliases(client) == {"production": 2, "previous-production": 4}
    assert _tags(client, 2)["promotion.action"] == "rollback"
    assert "rolled back" in _tags(client, 4)[promotion.BLOCKED]
    model = client.get_registered_model(NAME)
    assert promotion.JOURNAL not in model.tags  # the interrupted move was completed
    assert lock not in {m.name for m in client.search_registered_models()}


def test_an_interrupted_move_is_completed_by_the_next_promotion(client) -> None:
    """A journal left with production already moved: the next move writes the previous
    alias and the tags the crash skipped; one left before production moved is dropped."""
    promote(NAME, "1", client=client)
    moved = promotion.Decision(
        action="promote", name=NAME, version=2, previous=1, metric="test/accuracy", value=0.7,
        previous_value=0.6, forced=False, by="crashed", reason="", at="2026-01-01T00:00:00Z",
        smoke_check="ok",
    )  # fmt: skip
    promotion.write_journal(client, moved)
    client.set_registered_model_alias(NAME, "production", "2")  # the crash came here
    promote(NAME, "2", client=client)  # already production: but the journal is completed
    assert _aliases(client) == {"production": 2, "previous-production": 1}
    assert _tags(client, 2)["promotion.by"] == "crashed"
    assert promotion.JOURNAL not in client.get_registered_model(NAME).tags

    promotion.write_journal(client, replace_decision(moved, version=4, previous=2))
    promote(NAME, "2", client=client)  # production never moved to 4: nothing to complete
    assert _aliases(client) == {"production": 2, "previous-production": 1}
    assert promotion.JOURNAL not in client.get_registered_model(NAME).tags


def replace_decision(decision, **changes):
    from dataclasses import replace

    return replace(decision, **changes)
