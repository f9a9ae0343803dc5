"""What the registry's pages say: each version's status line and promotion history, and metric
names of either spelling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from registry import descriptions
from registry.promotion import PromotionRefused, promote, rollback
from registry.smoke import (
    SmokeCheckError,
)
from tests.helpers.registry_store import (
    COLOUR_MODEL,
    NAME,
    _aliases,
    _log_version,
    _tags,
    registry_main,
)


def _description(client, version: int) -> str:
    return client.get_model_version(NAME, str(version)).description or ""


def _history(client, version: int) -> list[str]:
    """The headlines of a version's promotion history, oldest first."""
    lines = _description(client, version).split(descriptions.DECISIONS_HEADING)[-1].splitlines()
    return [re.search(r"\*\*(.+?)\*\*", line)[1] for line in lines if line.startswith("- ")]


def test_the_descriptions_say_who_holds_production_and_why_the_others_do_not(client) -> None:
    """A promotion, a refusal by the rule and by the smoke check, a forced promotion and a
    rollback, read back from the versions' descriptions and tags."""
    promote(NAME, "1", by="alice", client=client)
    promote(NAME, "2", by="alice", reason="weekly retrain", client=client)
    with pytest.raises(PromotionRefused):
        promote(NAME, "1", by="bob", client=client)
    refused = _tags(client, 1)
    assert refused["promotion.refused"] == (
        "version 1 has test/accuracy 0.6000, 0.1000 below production version 2 (0.7000)"
    )
    assert refused["promotion.refused_by"] == "bob" and "promotion.refused_at" in refused
    with pytest.raises(SmokeCheckError):
        promote(NAME, "3", force=True, by="bob", client=client)
    promote(NAME, "1", force=True, by="carol", reason="v2 mislabels shoes", client=client)
    rollback(NAME, by="dave", reason="shoes fixed upstream", client=client)

    assert _aliases(client) == {"production": 2, "previous-production": 1}
    assert _history(client, 2) == [
        "promoted to production",
        "left production",
        "back in production (rollback)",
    ]
    assert _history(client, 1) == [
        "promoted to production",
        "left production",
        "refused",
        "forced into production",
        "left production",
    ]
    assert _history(client, 3) == ["refused"]
    assert _history(client, 4) == []  # never tried: nothing said
    one, two, three = (_description(client, v) for v in (1, 2, 3))
    assert "by alice; test/accuracy 0.7000 vs 0.6000 of version 1, at least as good" in two
    assert "Reason: weekly retrain." in two
    assert "smoke check passed on 1 image" in two
    assert "by bob: version 1 has test/accuracy 0.6000, 0.1000 below production version 2" in one
    assert "by carol, the metric rule skipped; test/accuracy 0.6000 vs 0.7000 of version 2" in one
    assert "Reason: v2 mislabels shoes." in one
    assert "rolled back to version 2 by dave; this version got `previous-production`" in one
    assert "by dave, from version 1" in two and "Reason: shoes fixed upstream." in two
    assert "by bob: version 3 failed the smoke check: predict raised" in three
    # the status line, first (the versions table shows its first words): the verdict, then why
    status = {v: descriptions.status_of(_description(client, v)) for v in (1, 2, 3)}
    assert re.fullmatch(
        r"In production by a rollback from version 1 \(dave, [-\d]+ [:\d]+ UTC\)\. "
        r"Reason: shoes fixed upstream\.",
        status[2],
    ), status[2]
    assert re.fullmatch(
        r"Not in production: rolled back to version 2 by dave \([-\d]+ [:\d]+ UTC\)\. "
        r"Reason: shoes fixed upstream\.",
        status[1],
    ), status[1]
    assert status[3].startswith("Refused: version 3 failed the smoke check: predict raised")
    assert re.search(r" \(bob, [-\d]+ [:\d]+ UTC\)\.$", status[3]), status[3]
    # refused stays on the version that never got production; the forced one lost it
    assert _tags(client, 3)["promotion.refused"].startswith("version 3 failed the smoke check")
    assert "promotion.refused" not in _tags(client, 1)
    assert _tags(client, 2)["promotion.action"] == "rollback"
    assert _tags(client, 2)["promotion.reason"] == "shoes fixed upstream"


def test_a_long_history_keeps_the_registration_and_the_newest_decisions() -> None:
    text = "**resnet18** at 48 px, trained by run `train` (abcdef12)."
    for number in range(200):
        text = descriptions.append_decision(
            text, f"- 2026-12-01 09:{number:02d} UTC, **n{number}**"
        )
        assert len(text) <= descriptions.MAX_DESCRIPTION
    assert text.startswith("**resnet18** at 48 px")
    assert text.endswith("**n199**") and descriptions.DROPPED in text and "**n0**" not in text


def test_versions_logged_with_either_metric_name_compare(client, tmp_path: Path, capsys) -> None:
    """Versions 1-4 carry the older flat names; version 5 is logged as training logs now."""
    import mlflow

    mlflow.set_experiment("tests")
    _log_version(tmp_path, COLOUR_MODEL, {"test/accuracy": 0.65, "val/accuracy": 0.9}, "new")
    promote(NAME, "2", client=client)  # test_accuracy 0.7

    with pytest.raises(PromotionRefused, match=r"version 5 has test/accuracy 0.6500, 0.0500 below"):
        promote(NAME, "5", client=client)
    assert registry_main(["promote", "--version", "5", "--metric", "test_accuracy"]) == 2
    assert "version 5 has test/accuracy 0.6500" in capsys.readouterr().err  # the same metric
    assert promote(NAME, "best", client=client).action == "unchanged"  # 0.7 beats 0.65
    decision = promote(NAME, "best", metric="val_accuracy", client=client)
    assert (decision.version, decision.metric, decision.value) == (5, "val/accuracy", 0.9)

    assert registry_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[3:5] == ["test/accuracy", "val/accuracy"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line[:1].isdigit()}
    assert rows["5"][3:5] == ["0.6500", "0.9000"] and rows["2"][3:5] == ["0.7000", "0.7100"]
    assert registry_main(["compare", "2", "5"]) == 0
    table = capsys.readouterr().out.splitlines()
    accuracy = [line.split() for line in table if "accuracy" in line]
    assert accuracy == [
        ["test/accuracy", "0.7000", "0.6500", "-0.0500"],
        ["val/accuracy", "0.7100", "0.9000", "+0.1900"],
    ]
    assert registry_main(["show", "5"]) == 0
    assert "  test/accuracy  0.6500" in capsys.readouterr().out
