"""The promotion lock: one promotion at a time, released only by its holder, broken only when
stale by the store's clock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli import UserError
from registry import promotion
from registry.promotion import promote, promotion_lock
from tests.helpers.registry_store import (
    NAME,
    _aliases,
    _tags,
)


def test_two_promotions_at_once_leave_one_production(client) -> None:
    from mlflow import MlflowClient

    client.set_registered_model_alias(NAME, "production", "1")
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            own = MlflowClient(tracking_uri=client.tracking_uri, registry_uri=client.tracking_uri)
            promote(NAME, version, force=True, client=own)
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("2", "4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)  # a generous bound, not a speed test

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    aliases = _aliases(client)
    holders = [
        v for v in ("1", "2", "4") if "production" in client.get_model_version(NAME, v).aliases
    ]
    assert len(holders) == 1
    # They ran one after the other: the loser handed production to the winner.
    assert {aliases["production"], aliases["previous-production"]} == {2, 4}
    winner = _tags(client, aliases["production"])
    assert winner["promotion.previous_version"] == str(aliases["previous-production"])
    assert NAME + promotion.LOCK_SUFFIX not in {m.name for m in client.search_registered_models()}


def test_a_held_lock_makes_a_promotion_wait_then_fail_clearly(client) -> None:
    with promotion_lock(client, NAME), pytest.raises(UserError) as failed:
        promote(NAME, "1", client=client, lock_timeout=0.3)
    assert "another promotion of marketplace-classifier is in progress" in str(failed.value)
    assert _aliases(client) == {}
    promote(NAME, "1", client=client)  # released on exit
    assert _aliases(client) == {"production": 1}


def test_a_stale_lock_is_broken(client) -> None:
    client.create_registered_model(NAME + promotion.LOCK_SUFFIX)
    with promotion_lock(client, NAME, timeout=0.3, stale_after=-1.0):
        pass  # entered: the crashed holder's lock was deleted
    with pytest.raises(UserError, match="in progress"):
        client.create_registered_model(NAME + promotion.LOCK_SUFFIX)
        with promotion_lock(client, NAME, timeout=0.3):
            pass


def test_the_lock_is_released_only_by_its_holder(client) -> None:
    lock = NAME + promotion.LOCK_SUFFIX
    with promotion_lock(client, NAME):
        client.delete_registered_model(lock)  # broken as stale by a waiter, who took it:
        client.create_registered_model(lock, tags={"holder": "successor", "token": "theirs"})
    held = client.get_registered_model(lock)  # the first holder's release left it alone
    assert held.tags["token"] == "theirs"


def test_a_live_holder_is_never_broken(client) -> None:
    """A holder that outlives ``stale_after`` keeps its lock: its heartbeat refreshes it."""
    from mlflow import MlflowClient

    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        own = MlflowClient(tracking_uri=client.tracking_uri, registry_uri=client.tracking_uri)
        with promotion_lock(own, NAME, stale_after=2.0):
            entered.set()
            leave.wait(timeout=600)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(timeout=600)
        waiting = promotion_lock(client, NAME, timeout=8.0, stale_after=4.0)
        with pytest.raises(UserError, match="in progress"), waiting:
            pass  # entered: a live holder's lock was broken
    finally:
        leave.set()
        holder.join(timeout=600)
    assert NAME + promotion.LOCK_SUFFIX not in {m.name for m in client.search_registered_models()}


def test_the_lock_age_is_the_stores_not_this_machines(client, tmp_path: Path) -> None:
    """A fresh lock that the store stamped an hour ago (its clock is behind ours) is not
    stale: only stamps that stand still for ``stale_after`` seconds are."""
    import sqlite3

    lock = NAME + promotion.LOCK_SUFFIX
    client.create_registered_model(lock, tags={"holder": "elsewhere", "token": "theirs"})
    hour_ago = int((time.time() - 3600) * 1000)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute(
            "UPDATE registered_models SET creation_time = ?, last_updated_time = ? WHERE name = ?",
            (hour_ago, hour_ago, lock),
        )
    with pytest.raises(UserError, match="in progress"):
        promote(NAME, "1", client=client, lock_timeout=3.0)
    assert _aliases(client) == {}


def test_a_lock_whose_holder_process_is_gone_is_broken_at_once(client) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    client.create_registered_model(
        NAME + promotion.LOCK_SUFFIX,
        tags={"token": "dead", "host": promotion.socket.gethostname(), "pid": gone.stdout.strip()},
    )
    promote(NAME, "1", client=client, lock_timeout=3.0)
    assert _aliases(client) == {"production": 1}
