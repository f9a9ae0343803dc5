"""Promotion by rules: production moves to a version only when it is as good and passes the smoke
check; force, best, refusals, rollback, the legacy stage, and proposals that never undo a
person's decision."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from cli import UserError
from registry import promotion
from registry.promotion import PromotionRefused, promote, rollback
from registry.resolve import resolve_model_uri
from registry.smoke import (
    SmokeCheckError,
)
from tests.helpers.registry_store import (
    NAME,
    _aliases,
    _tags,
)


def test_promote_sets_production_and_records_who_when_why(client) -> None:
    decision = promote(NAME, "1", by="alice", reason="first model", client=client)

    assert decision.action == "promote" and decision.version == 1
    assert _aliases(client) == {"production": 1}
    tags = _tags(client, 1)
    assert tags["promotion.action"] == "promote"
    assert tags["promotion.by"] == "alice"
    assert tags["promotion.reason"] == "first model"
    assert tags["promotion.metric"] == "test/accuracy"
    assert tags["promotion.value"] == "0.6000"
    assert tags["promotion.previous_version"] == "none"
    assert tags["promotion.forced"] == "false"
    assert tags["promotion.smoke_check"].startswith(
        "passed on 1 image from the model's input example"
    )
    when = datetime.fromisoformat(tags["promotion.at"].replace("Z", "+00:00"))
    assert abs(time.time() - when.timestamp()) < 120


def test_better_version_takes_production_and_old_one_keeps_previous(client) -> None:
    promote(NAME, "1", client=client)
    decision = promote(NAME, "2", reason="better", client=client)

    assert _aliases(client) == {"production": 2, "previous-production": 1}
    assert (decision.previous, decision.value, decision.previous_value) == (1, 0.7, 0.6)
    tags = _tags(client, 2)
    assert tags["promotion.previous_version"] == "1"
    assert tags["promotion.value"] == "0.7000"
    assert tags["promotion.previous_value"] == "0.6000"
    assert _tags(client, 1)["promotion.superseded_by"] == "2"
    assert decision.summary() == (
        f"{NAME}: production promoted version 2 (was version 1); test/accuracy 0.7000 vs 0.6000"
    )


def test_worse_version_is_refused_with_the_gap(client) -> None:
    client.set_registered_model_alias(NAME, "production", "2")

    with pytest.raises(PromotionRefused) as refused:
        promote(NAME, "1", client=client)

    message = str(refused.value)
    assert "test/accuracy 0.6000" in message
    assert "0.1000 below production version 2 (0.7000)" in message
    assert "--force" in message
    assert _aliases(client) == {"production": 2}
    assert "promotion.action" not in _tags(client, 1)


def test_force_promotes_a_worse_version_and_says_so(client) -> None:
    client.set_registered_model_alias(NAME, "production", "2")

    decision = promote(NAME, "1", force=True, reason="rollout bug in v2", client=client)

    assert decision.forced
    assert _aliases(client) == {"production": 1, "previous-production": 2}
    tags = _tags(client, 1)
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.previous_value"] == "0.7000"
    assert tags["promotion.reason"] == "rollout bug in v2"


def test_best_picks_the_highest_metric_and_a_rerun_moves_nothing(client) -> None:
    first = promote(NAME, "best", client=client)
    again = promote(NAME, "best", client=client)

    assert first.version == 2  # 0.7 beats 0.6 and the broken 0.5; version 4 has no metric
    assert again.action == "unchanged"
    assert _aliases(client) == {"production": 2}


def test_best_by_another_metric_counts_only_versions_that_have_it(client) -> None:
    decision = promote(NAME, "best", metric="val_accuracy", client=client)
    assert decision.version == 4  # 0.8 > 0.71 > 0.62; version 3 has no val_accuracy


def test_a_version_that_fails_the_smoke_check_never_gets_production(client) -> None:
    client.set_registered_model_alias(NAME, "production", "1")

    with pytest.raises(SmokeCheckError, match="version 3 failed the smoke check: predict raised"):
        promote(NAME, "3", force=True, client=client)

    assert _aliases(client) == {"production": 1}
    assert "promotion.action" not in _tags(client, 3)


def test_a_version_without_the_metric_is_refused_unless_forced(client) -> None:
    client.set_registered_model_alias(NAME, "production", "1")
    with pytest.raises(PromotionRefused, match="version 4 has no metric 'test/accuracy'"):
        promote(NAME, "4", client=client)
    assert _aliases(client) == {"production": 1}

    promote(NAME, "4", force=True, client=client)
    assert _aliases(client)["production"] == 4


def test_a_metric_tag_stands_in_for_a_missing_run_metric(client) -> None:
    client.set_model_version_tag(NAME, "4", "test_accuracy", "0.65")
    client.set_registered_model_alias(NAME, "production", "1")

    decision = promote(NAME, "4", client=client)

    assert decision.value == 0.65 and decision.previous_value == 0.6


def test_lower_is_better_for_losses(client) -> None:
    for version, loss in (("1", "0.9"), ("2", "0.4")):
        client.set_model_version_tag(NAME, version, "test_loss", loss)
    client.set_registered_model_alias(NAME, "production", "2")

    with pytest.raises(PromotionRefused, match="0.5000 above production version 2"):
        promote(NAME, "1", metric="test_loss", client=client)
    assert promote(NAME, "best", metric="test_loss", client=client).action == "unchanged"


def test_unknown_model_and_version_are_clear_errors(client) -> None:
    with pytest.raises(UserError, match="no registered model named 'nope'.*marketplace"):
        promote("nope", "1", client=client)
    with pytest.raises(UserError, match=r"has no version 9 \(versions: 1, 2, 3, 4\)"):
        promote(NAME, "9", client=client)


def test_a_decision_without_a_reason_gives_its_own(client) -> None:
    promote(NAME, "1", client=client)
    assert (
        _tags(client, 1)["promotion.reason"]
        == "the first version in production (test/accuracy 0.6000)"
    )
    promote(NAME, "2", client=client)
    assert _tags(client, 2)["promotion.reason"] == (
        "test/accuracy 0.7000 is at least production version 1's 0.6000"
    )
    rollback(NAME, client=client)
    assert _tags(client, 1)["promotion.reason"] == "rollback (no reason given)"


def test_rollback_swaps_production_and_previous_and_records_it(client) -> None:
    promote(NAME, "1", client=client)
    promote(NAME, "2", client=client)

    decision = rollback(NAME, reason="latency regression", by="bob", client=client)

    assert decision.action == "rollback" and decision.version == 1
    assert _aliases(client) == {"production": 1, "previous-production": 2}
    tags = _tags(client, 1)
    assert tags["promotion.action"] == "rollback"
    assert tags["promotion.by"] == "bob"
    assert tags["promotion.reason"] == "latency regression"
    assert tags["promotion.previous_version"] == "2"
    assert (tags["promotion.value"], tags["promotion.previous_value"]) == ("0.6000", "0.7000")

    assert "promotion.superseded_by" not in tags  # production again: not superseded
    assert _tags(client, 2)["promotion.superseded_by"] == "1"

    rollback(NAME, client=client)  # a second rollback undoes the first
    assert _aliases(client) == {"production": 2, "previous-production": 1}


def test_rollback_needs_a_previous_production(client) -> None:
    with pytest.raises(UserError, match="no registered model named 'nope'"):
        rollback("nope", client=client)
    with pytest.raises(UserError, match="no version of .* holds production"):
        rollback(NAME, client=client)
    promote(NAME, "1", client=client)
    with pytest.raises(UserError, match="holds previous-production"):
        rollback(NAME, client=client)


def test_rollback_refuses_a_previous_version_that_no_longer_works(client) -> None:
    client.set_registered_model_alias(NAME, "production", "1")
    client.set_registered_model_alias(NAME, "previous-production", "3")

    with pytest.raises(SmokeCheckError):
        rollback(NAME, client=client)
    assert _aliases(client) == {"production": 1, "previous-production": 3}


def test_legacy_stage_follows_production_once_used(client) -> None:
    promote(NAME, "1", legacy_stage=True, client=client)
    assert client.get_model_version(NAME, "1").current_stage == "Production"
    assert resolve_model_uri(f"models:/{NAME}/Production") == f"models:/{NAME}/1"

    promote(NAME, "2", client=client)  # no flag: the stage is in use, so it follows
    assert client.get_model_version(NAME, "2").current_stage == "Production"
    assert client.get_model_version(NAME, "1").current_stage == "Archived"
    assert resolve_model_uri(f"models:/{NAME}/production") == f"models:/{NAME}/2"

    rollback(NAME, client=client)
    assert resolve_model_uri(f"models:/{NAME}/Production") == f"models:/{NAME}/1"


def test_legacy_stage_untouched_unless_asked(client) -> None:
    promote(NAME, "1", client=client)
    assert client.get_model_version(NAME, "1").current_stage == "None"
    with pytest.raises(UserError, match="no version of .* is in the legacy stage Production"):
        resolve_model_uri(f"models:/{NAME}/Production")

    again = promote(NAME, "1", legacy_stage=True, client=client)  # set it for production now
    assert again.action == "unchanged"
    assert resolve_model_uri(f"models:/{NAME}/Production") == f"models:/{NAME}/1"


def test_a_proposal_never_brings_back_a_rolled_back_or_replaced_version(client) -> None:
    from steps.promote import main as promote_step

    promote(NAME, "1", client=client)
    promote(NAME, "2", client=client)
    rollback(NAME, by="ops", client=client)  # 2 rolled back: production 1
    assert "rolled back to version 1 by ops" in _tags(client, 2)[promotion.BLOCKED]
    with pytest.raises(PromotionRefused, match="rolled back"):
        promote(NAME, "2", proposal=True, client=client)  # 0.7 beats 0.6, yet never again
    with pytest.raises(UserError, match="only an explicit"):
        promote_step(["--version", "2", "--proposal", "true", "--clean", "nothing"])
    assert _aliases(client)["production"] == 1

    promote(NAME, "4", force=True, reason="hotfix", by="bob", client=client)
    assert "forced in by bob" in _tags(client, 1)[promotion.BLOCKED]
    with pytest.raises(PromotionRefused, match="replaced in production"):
        promote(NAME, "1", proposal=True, force=True, client=client)
    assert _aliases(client)["production"] == 4

    promote(NAME, "2", force=True, by="alice", client=client)  # a person may: and it clears
    assert _aliases(client)["production"] == 2
    assert promotion.BLOCKED not in _tags(client, 2)
    assert _tags(client, 2)["promotion.proposal"] == "false"


def test_a_rule_replacing_a_proposal_does_not_block_it(client) -> None:
    promote(NAME, "1", proposal=True, client=client)
    promote(NAME, "2", proposal=True, client=client)
    assert promotion.BLOCKED not in _tags(client, 1)
    assert _tags(client, 2)["promotion.proposal"] == "true"
