"""Promoting a registered version to production, and rolling production back.

``promote`` moves the ``production`` alias of a registered model to a chosen version (a
number, or ``best`` by a metric) when

1. the version loads and predicts well-formed answers on a few images (the smoke check);
2. unless forced, its metric is at least as good as the current production version's;
3. for a ranker (``input=ranking``), unless forced, its ``test/ndcg_at_10`` is at least the
   hand blend's ``test/blend_ndcg_at_10`` on the same test queries (the blend gate);
4. for a ``proposal`` (a pipeline's rule, not a person's choice), it was never rolled back,
   refused, or replaced in production by a person: those versions carry
   ``promotion.blocked`` (why) and only an explicit promotion can put them back (and clears
   the tag).

The version that held production keeps ``previous-production``; ``rollback`` swaps the two
back. Each decision is written as ``promotion.*`` tags on the version (when, by whom, why,
the metric values compared, the blend gate), as a line in the version's description (and in the
description of the version that left production), and, with ``legacy_stage``, mirrored in
the deprecated ``Production`` stage. A refused candidate (the metric rule or the smoke
check) is tagged ``promotion.refused`` with the reason, and its description says so.

Alias moves survive a crash at any point. Before writing anything, a move records itself
in the registered model's ``promotion.journal`` tag (the decision as JSON); then it sets
``production`` (the truth: whatever crashes, production is either the old or the new
version), then ``previous-production``, then the tags and descriptions, and deletes the
journal last. The next promotion or rollback finds a journal left behind, and completes
it (the previous alias and the tags) when ``production`` moved, or drops it when it did
not; so ``rollback`` always gives production back to the version that held it before.

Promotions of one model take a lock (a registered model named ``<name>.promotion-lock``,
whose creation is atomic in any store), so two at once run one after the other and exactly
one version ends up holding ``production``. The lock carries its holder's token, and only
that holder deletes it. The holder keeps it alive (a heartbeat that updates its
description, so the store stamps it with its own clock); a waiter breaks the lock only
when the store's stamps stood still for ``stale_after`` seconds of the waiter's watching
(no two clocks compared), or at once when the holder was a process on this host that is
gone.

Reads and writes the Model Registry only.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import UserError
from registry.descriptions import append_to_version, decision_note
from registry.kinds import BLEND_GATE, RANKING, default_metric, input_of
from registry.smoke import SmokeCheckError, check_version
from registry.store import (
    DEFAULT_MODEL_NAME,
    LEGACY_STAGE,
    PREVIOUS_PRODUCTION,
    PRODUCTION,
    connect,
    error_code,
)
from registry.versions import (
    BEST,
    VersionInfo,
    alias_holder,
    best_version,
    canonical_metric,
    describe,
    get_version,
    is_better_or_equal,
    list_versions,
    lower_is_better,
    require_model,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_METRIC = "test/accuracy"
LOCK_SUFFIX = ".promotion-lock"
LOCK_TIMEOUT_S = 600.0  # the holder may be smoke-checking a large model on a busy CPU
LOCK_STALE_S = 60.0  # a live holder refreshes the lock four times as often
TAG_PREFIX = "promotion."
SUPERSEDED_AT = TAG_PREFIX + "superseded_at"
SUPERSEDED_BY = TAG_PREFIX + "superseded_by"
SUPERSEDED_TAGS = frozenset({SUPERSEDED_AT, SUPERSEDED_BY})
REFUSED = TAG_PREFIX + "refused"
REFUSED_AT = TAG_PREFIX + "refused_at"
REFUSED_BY = TAG_PREFIX + "refused_by"
REFUSED_TAGS = frozenset({REFUSED, REFUSED_AT, REFUSED_BY})
# A version rolled back, or replaced in production by a person: a proposal never restores it.
BLOCKED = TAG_PREFIX + "blocked"
JOURNAL = TAG_PREFIX + "journal"  # a registered-model tag: the alias move in progress
NONE = "none"  # a tag value for "no such thing" (no previous version, no metric value)
READY = "READY"


class PromotionRefused(UserError):
    """The candidate broke the metric rule; the message says by how much.

    ``why`` is the same without the advice, as the version's description records it.
    """

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why or message


@dataclass(frozen=True)
class Decision:
    """What a promotion or rollback did, as recorded on the version."""

    action: str  # "promote", "rollback" or "unchanged"
    name: str
    version: int
    previous: int | None
    metric: str
    value: float | None
    previous_value: float | None
    forced: bool
    by: str
    reason: str
    at: str
    smoke_check: str
    legacy_stage: bool = False
    run_id: str | None = None
    proposal: bool = False  # a pipeline's rule proposed it, not a person
    gate: str = ""  # a ranker's blend gate, as checked (or skipped when forced)

    @property
    def why(self) -> str:
        """The reason given, else one that the decision itself gives."""
        if self.reason:
            return self.reason
        if self.action == "rollback":
            return "rollback (no reason given)"
        if self.action == "unchanged":
            return f"already in {PRODUCTION}"
        if self.forced:
            return "forced (no reason given)"
        if self.previous is None or self.previous_value is None:
            return f"the first version in {PRODUCTION} ({self.metric} {_fmt(self.value)})"
        return (
            f"{self.metric} {_fmt(self.value)} is at least production version "
            f"{self.previous}'s {_fmt(self.previous_value)}"
        )

    def tags(self) -> dict[str, str]:
        """The ``promotion.*`` tags written on the promoted version."""
        tags = {
            "action": self.action,
            "at": self.at,
            "by": self.by,
            "reason": self.why,
            "metric": self.metric,
            "value": _fmt(self.value),
            "previous_version": NONE if self.previous is None else str(self.previous),
            "previous_value": _fmt(self.previous_value),
            "forced": str(self.forced).lower(),
            "smoke_check": self.smoke_check or NONE,
            "legacy_stage": str(self.legacy_stage).lower(),
            "run_id": self.run_id or NONE,
            "proposal": str(self.proposal).lower(),
        }
        if self.gate:
            tags["gate"] = self.gate
        return {TAG_PREFIX + key: value for key, value in tags.items()}

    def blocks_previous(self) -> str | None:
        """Why the version leaving production may not come back by a proposal (it was rolled
        back, or a person chose another over it), or None when a rule replaced it."""
        if self.previous is None or self.previous == self.version:
            return None
        when = _when(self.at)
        if self.action == "rollback":
            return f"rolled back to version {self.version} by {self.by} ({when})"
        if self.proposal:
            return None
        how = "forced in" if self.forced else "promoted"
        return f"replaced in {PRODUCTION} by version {self.version}, {how} by {self.by} ({when})"

    def notes(self) -> dict[int, tuple[str, str]]:
        """What the descriptions say of this decision: for the version that got production
        and, when another version held it, for that one: version -> (history line, status
        line)."""
        when = _when(self.at)
        compared = f"{self.metric} {_fmt(self.value)}"
        if self.previous is not None and self.previous_value is not None:
            compared += f" vs {_fmt(self.previous_value)} of version {self.previous}"
        given = f" Reason: {self.reason}." if self.reason else ""
        smoke = f"; smoke check {self.smoke_check}" if self.smoke_check else ""
        if self.gate:
            smoke = f"; {self.gate}{smoke}"
        run = f" (promote run {self.run_id[:8]})" if self.run_id else ""
        # Status lines lead with the verdict: the versions table shows their first words.
        if self.action == "rollback":
            headline = "back in production (rollback)"
            text = f"by {self.by}, from version {self.previous}; {compared}{smoke}.{given}"
            status = f"In production by a rollback from version {self.previous} ({self.by}"
            left = f"rolled back to version {self.version} by {self.by}"
        elif self.forced:
            headline = "forced into production"
            text = f"by {self.by}, the metric rule skipped; {compared}{smoke}.{given}{run}"
            status = f"In production, forced by {self.by}: the metric rule skipped ({compared}"
            left = f"version {self.version} forced in by {self.by}"
        else:
            headline = "promoted to production"
            rule = "" if self.previous_value is None else ", at least as good"
            text = f"by {self.by}; {compared}{rule}{smoke}.{given}{run}"
            status = f"In production: {compared}{rule} (promoted by {self.by}"
            left = f"replaced by version {self.version}, promoted by {self.by}"
        notes = {
            self.version: (
                decision_note(when, headline, text),
                f"{status}, {when}).{given}",
            )
        }
        if self.previous is not None and self.previous != self.version:
            notes[self.previous] = (
                decision_note(
                    when,
                    "left production",
                    f"{left}; this version got `{PREVIOUS_PRODUCTION}`.{given}",
                ),
                f"Not in production: {left} ({when}).{given}",
            )
        return notes

    def summary(self) -> str:
        """One line for the terminal."""
        if self.action == "unchanged":
            return f"{self.name} version {self.version} already holds {PRODUCTION}; nothing moved"
        verb = "rolled back to" if self.action == "rollback" else "promoted"
        was = f" (was version {self.previous})" if self.previous is not None else ""
        compared = f"; {self.metric} {_fmt(self.value)}"
        if self.previous_value is not None:
            compared += f" vs {_fmt(self.previous_value)}"
        forced = " [forced]" if self.forced and self.action == "promote" else ""
        return f"{self.name}: {PRODUCTION} {verb} version {self.version}{was}{compared}{forced}"


def _fmt(value: float | None) -> str:
    return NONE if value is None else f"{value:.4f}"


def _when(at: str) -> str:
    """``2026-12-01T09:12:00Z`` -> ``2026-12-01 09:12 UTC``."""
    return at[:16].replace("T", " ") + " UTC"


def current_user() -> str:
    """The OS user running the command, for the ``promotion.by`` tag."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def choose_candidate(
    client: MlflowClient, name: str, version: str | int, metric: str
) -> VersionInfo:
    """The version ``version`` names: a number, an alias, ``latest``, or ``best`` by ``metric``."""
    metric = canonical_metric(metric)
    if str(version).strip().lower() == BEST:
        holder = alias_holder(client, name, PRODUCTION)
        versions = [v for v in list_versions(client, name) if v.status == READY]
        if not versions:
            raise UserError(f"{name} has no versions yet: train one first")
        prefer = int(holder.version) if holder else None
        return best_version(versions, metric, prefer=prefer)
    chosen = describe(client, get_version(client, name, version))
    if chosen.status != READY:
        raise UserError(
            f"{name} version {chosen.version} is {chosen.status}, not READY: its registration "
            "did not finish; pick another version"
        )
    return chosen


def check_rule(
    candidate: VersionInfo, current: VersionInfo | None, metric: str, force: bool
) -> tuple[float | None, float | None]:
    """Apply the metric rule; return (candidate value, production value).

    Raises :class:`PromotionRefused` when, without ``force``, the candidate lacks the metric,
    production lacks it, or the candidate is worse than production (saying by how much).
    """
    metric = canonical_metric(metric)
    value = candidate.metric(metric)
    current_value = current.metric(metric) if current else None
    if force:
        return value, current_value
    if value is None:
        known = ", ".join(candidate.canonical_metrics()) or "none"
        why = f"version {candidate.version} has no metric {metric!r} (it has: {known})"
        raise PromotionRefused(
            f"refused: {why}; pass --metric with one it has, or --force with a --reason", why
        )
    if current is None:
        return value, None
    if current_value is None:
        why = f"production version {current.version} has no metric {metric!r} to compare with"
        raise PromotionRefused(
            f"refused: {why}; pass --metric with one both have, or --force with a --reason", why
        )
    if not is_better_or_equal(value, current_value, metric):
        gap = abs(value - current_value)
        side = "above" if lower_is_better(metric) else "below"
        why = (
            f"version {candidate.version} has {metric} {value:.4f}, {gap:.4f} {side} "
            f"production version {current.version} ({current_value:.4f})"
        )
        raise PromotionRefused(
            f"refused: {why}; promote a better version, or pass --force with a --reason", why
        )
    return value, current_value


def check_gate(candidate: VersionInfo, force: bool) -> str:
    """A ranker's blend gate: its ``test/ndcg_at_10`` at least the hand blend's
    ``test/blend_ndcg_at_10`` on the same test queries. Returns what the description says
    ('' for a classifier); raises :class:`PromotionRefused` when, unforced, it fails."""
    if input_of(candidate.tags) != RANKING:
        return ""
    mine, blend = (candidate.metric(name) for name in BLEND_GATE)
    if force:
        return "blend gate skipped (forced)"
    if mine is None or blend is None:
        pairs = zip(BLEND_GATE, (mine, blend), strict=True)
        absent = " and ".join(name for name, value in pairs if value is None)
        why = f"version {candidate.version} has no {absent} for the blend gate"
        raise PromotionRefused(
            f"refused: {why}; train it again with `mlflow run . -e rank`, or pass --force "
            "with a --reason",
            why,
        )
    if mine < blend:
        why = (
            f"version {candidate.version} has {BLEND_GATE[0]} {mine:.4f}, below the hand "
            f"blend's {BLEND_GATE[1]} {blend:.4f} on the same test queries (the blend gate)"
        )
        raise PromotionRefused(
            f"refused: {why}; train a better ranker, or pass --force with a --reason", why
        )
    return (
        f"blend gate passed: {BLEND_GATE[0]} {mine:.4f} >= {BLEND_GATE[1]} {blend:.4f} "
        "on the same test queries"
    )


def resolve_metric(name: str, metric: str | None) -> str:
    """``metric`` in its canonical spelling; unset or ``auto``: the model's kind's default
    (``test/accuracy`` for a classifier, ``test/ndcg_at_10`` for the ranker)."""
    text = (metric or "").strip()
    if text.lower() in ("", "auto"):
        text = default_metric(name)
    return canonical_metric(text)


def decision_options(args) -> dict[str, Any]:
    """The keyword arguments that :func:`promote` and :func:`rollback` share, from parsed
    command-line ``args`` (``python -m registry`` and the ``promote`` step parse the same
    options): ``metric``, ``reason``, ``by`` (None when empty), ``clean``, ``legacy_stage``."""
    return {
        "metric": args.metric,
        "reason": args.reason,
        "by": args.by or None,
        "clean": args.clean,
        "legacy_stage": args.legacy_stage,
    }


def promote(
    name: str = DEFAULT_MODEL_NAME,
    version: str | int = BEST,
    *,
    metric: str | None = None,
    force: bool = False,
    reason: str = "",
    by: str | None = None,
    clean: Path | None = None,
    legacy_stage: bool | None = None,
    run_id: str | None = None,
    proposal: bool = False,
    client: MlflowClient | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> Decision:
    """Move ``production`` to ``version`` of ``name`` if it passes the smoke check and the rule.

    ``version`` is a number, an alias, ``latest`` or ``best`` (the best by ``metric`` among
    versions that have it; unset: the kind's default, :func:`resolve_metric`). ``force``
    skips the metric rule and a ranker's blend gate, never the smoke check.
    ``legacy_stage`` True also moves the ``Production`` stage; None (the default) moves it
    only when some version is in that stage already, so the two never disagree.
    ``run_id`` (the promote step's run) is recorded in the tags. ``proposal`` True (the
    pipeline's rule, not a person) refuses a version tagged ``promotion.blocked`` or
    ``promotion.refused``; an explicit promotion (False) of such a version clears the tags,
    and blocks the version it replaces. Raises :class:`UserError`
    (:class:`PromotionRefused`, ``SmokeCheckError``) and moves nothing when a check fails; a
    candidate refused by the rule or the smoke check is tagged ``promotion.refused`` and its
    description says why.
    """
    client = client or connect()
    by = by or current_user()
    metric = resolve_metric(name, metric)  # `test_accuracy` and `test/accuracy` are one metric
    candidate = choose_candidate(client, name, version, metric)
    current = _holder_info(client, name, PRODUCTION)
    if current is not None and current.version == candidate.version:
        if read_journal(client, name) is not None:  # the crashed move that put it there
            with promotion_lock(client, name, timeout=lock_timeout):
                complete_interrupted_move(client, name)
        if legacy_stage and candidate.stage != LEGACY_STAGE:
            _set_legacy_stage(client, name, candidate.version)
        return _unchanged(candidate, metric, by, reason, run_id)
    if proposal:
        check_proposable(client, name, candidate.version)
    with _refusal_recorded(client, candidate, by, reason):
        check_rule(candidate, current, metric, force)  # fail before the slow smoke check
        check_gate(candidate, force)
        smoke = check_version(client, name, candidate.version, clean)
    with promotion_lock(client, name, timeout=lock_timeout):
        complete_interrupted_move(client, name)
        current = _holder_info(client, name, PRODUCTION)  # another promotion may have run
        if current is not None and current.version == candidate.version:
            return _unchanged(candidate, metric, by, reason, run_id)
        if proposal:
            check_proposable(client, name, candidate.version)  # a rollback may have run
        with _refusal_recorded(client, candidate, by, reason):
            value, current_value = check_rule(candidate, current, metric, force)
            gate = check_gate(candidate, force)
        stage = _use_legacy_stage(client, name, legacy_stage)
        decision = Decision(
            action="promote",
            name=name,
            version=candidate.version,
            previous=current.version if current else None,
            metric=metric,
            value=value,
            previous_value=current_value,
            forced=force,
            by=by,
            reason=reason,
            at=_now(),
            smoke_check=smoke.summary(),
            legacy_stage=stage,
            run_id=run_id,
            proposal=proposal,
            gate=gate,
        )
        _move_production(client, decision)
    log.debug("%s", decision.summary())
    return decision


def rollback(
    name: str = DEFAULT_MODEL_NAME,
    *,
    metric: str | None = None,
    reason: str = "",
    by: str | None = None,
    clean: Path | None = None,
    legacy_stage: bool | None = None,
    run_id: str | None = None,
    client: MlflowClient | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> Decision:
    """Give ``production`` back to the version holding ``previous-production``.

    The two aliases swap, so a second rollback undoes the first. The target is
    smoke-checked first; the metric rule does not apply (``metric`` is only recorded). A
    move that crashed half-way is completed first (see the module docstring), so the target
    is the version that held production before it. The version rolled back from is tagged
    ``promotion.blocked``: no pipeline proposal puts it back.
    """
    client = client or connect()
    by = by or current_user()
    metric = resolve_metric(name, metric)
    current, target = _rollback_pair(client, name)
    smoke = check_version(client, name, target.version, clean)
    with promotion_lock(client, name, timeout=lock_timeout):
        complete_interrupted_move(client, name)
        now_current, now_target = _rollback_pair(client, name)
        if (now_current.version, now_target.version) != (current.version, target.version):
            raise UserError(
                f"{name}'s aliases changed while this rollback ran (production is now version "
                f"{now_current.version}); check `python -m registry list` and run it again"
            )
        decision = Decision(
            action="rollback",
            name=name,
            version=target.version,
            previous=current.version,
            metric=metric,
            value=target.metric(metric),
            previous_value=current.metric(metric),
            forced=True,
            by=by,
            reason=reason,
            at=_now(),
            smoke_check=smoke.summary(),
            legacy_stage=_use_legacy_stage(client, name, legacy_stage),
            run_id=run_id,
        )
        _move_production(client, decision)
    log.debug("%s", decision.summary())
    return decision


@contextmanager
def _refusal_recorded(
    client: MlflowClient, candidate: VersionInfo, by: str, reason: str
) -> Iterator[None]:
    """Tag ``candidate`` refused, and say why in its description, when the block refuses it."""
    try:
        yield
    except (PromotionRefused, SmokeCheckError) as exc:
        why = exc.why if isinstance(exc, PromotionRefused) else str(exc)
        at = _now()
        name, version = candidate.name, str(candidate.version)
        tags = {REFUSED: why[:1000], REFUSED_AT: at, REFUSED_BY: by}
        try:
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            given = f" Reason for trying: {reason}." if reason else ""
            note = decision_note(_when(at), "refused", f"by {by}: {why}.{given}")
            status = f"Refused: {why} ({by}, {_when(at)})."
            append_to_version(client, name, version, note, status)
        except Exception as record_error:  # the refusal itself matters more
            log.warning("could not record the refusal on version %s: %s", version, record_error)
        raise


def _rollback_pair(client: MlflowClient, name: str) -> tuple[VersionInfo, VersionInfo]:
    """(production, the rollback target): ``previous-production``, or the version an
    interrupted move left production from (its journal says which)."""
    require_model(client, name)
    current = _holder_info(client, name, PRODUCTION)
    target = _holder_info(client, name, PREVIOUS_PRODUCTION)
    if current is None:
        raise UserError(
            f"no version of {name} holds {PRODUCTION}, so there is nothing to roll back: "
            "promote one with `python -m registry promote`"
        )
    pending = read_journal(client, name)
    if pending is not None and pending.version == current.version and pending.previous:
        target = describe(client, get_version(client, name, pending.previous))
    if target is None or target.version == current.version:
        raise UserError(
            f"no version of {name} holds {PREVIOUS_PRODUCTION}, so there is nothing to roll "
            "back to: promote the version you want with `python -m registry promote --version N`"
        )
    return current, target


def check_proposable(client: MlflowClient, name: str, version: int) -> None:
    """Refuse a proposal of a version that was rolled back, refused or replaced by a person."""
    tags = client.get_model_version(name, str(version)).tags
    why = tags.get(BLOCKED) or (f"refused: {tags[REFUSED]}" if REFUSED in tags else None)
    if why:
        raise PromotionRefused(
            f"refused: version {version} was {why}; a pipeline never proposes it again, only "
            f"an explicit `python -m registry promote --model-name {name} --version {version}`",
            f"version {version} was {why}",
        )


def _holder_info(client: MlflowClient, name: str, alias: str) -> VersionInfo | None:
    holder = alias_holder(client, name, alias)
    return describe(client, holder) if holder is not None else None


def _unchanged(
    candidate: VersionInfo, metric: str, by: str, reason: str, run_id: str | None
) -> Decision:
    log.info("%s version %s already holds %s", candidate.name, candidate.version, PRODUCTION)
    return Decision(
        action="unchanged",
        name=candidate.name,
        version=candidate.version,
        previous=candidate.version,
        metric=metric,
        value=candidate.metric(metric),
        previous_value=candidate.metric(metric),
        forced=False,
        by=by,
        reason=reason,
        at=_now(),
        smoke_check="",
        run_id=run_id,
    )


def _use_legacy_stage(client: MlflowClient, name: str, requested: bool | None) -> bool:
    if requested is not None:
        return requested
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return bool(client.get_latest_versions(name, stages=[LEGACY_STAGE]))


def _move_production(client: MlflowClient, decision: Decision) -> None:
    """Journal the move, set ``production`` then ``previous-production``, record it, and
    delete the journal: a crash at any point leaves a state the next move completes."""
    name, version = decision.name, str(decision.version)
    write_journal(client, decision)
    client.set_registered_model_alias(name, PRODUCTION, version)
    if decision.previous is not None:
        client.set_registered_model_alias(name, PREVIOUS_PRODUCTION, str(decision.previous))
    holder = alias_holder(client, name, PRODUCTION)
    if holder is None or int(holder.version) != decision.version:
        now = "nothing" if holder is None else f"version {holder.version}"
        raise UserError(
            f"{PRODUCTION} of {name} points at {now} right after this promotion set it to "
            f"version {version}: another client moved it; check `python -m registry list`"
        )
    _record_tags(client, decision)
    for number, (note, status) in decision.notes().items():
        append_to_version(client, name, number, note, status)
    client.delete_registered_model_tag(name, JOURNAL)


def _record_tags(client: MlflowClient, decision: Decision) -> None:
    """The decision's tags on both versions, and the legacy stage: all safe to repeat."""
    name, version = decision.name, str(decision.version)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    stale = (SUPERSEDED_TAGS | REFUSED_TAGS | {BLOCKED}) & set(
        client.get_model_version(name, version).tags
    )
    for key in sorted(stale):  # it holds production now: neither superseded nor refused
        client.delete_model_version_tag(name, version, key)
    if decision.previous is not None and decision.previous != decision.version:
        previous = str(decision.previous)
        client.set_model_version_tag(name, previous, SUPERSEDED_AT, decision.at)
        client.set_model_version_tag(name, previous, SUPERSEDED_BY, version)
        blocked = decision.blocks_previous()
        if blocked:
            client.set_model_version_tag(name, previous, BLOCKED, blocked[:1000])
    if decision.legacy_stage:
        _set_legacy_stage(client, name, decision.version)


def write_journal(client: MlflowClient, decision: Decision) -> None:
    """Record ``decision`` on the registered model before any alias moves."""
    fields = asdict(decision)
    fields["reason"] = fields["reason"][:1000]
    fields["smoke_check"] = fields["smoke_check"][:1000]
    client.set_registered_model_tag(decision.name, JOURNAL, json.dumps(fields))


def read_journal(client: MlflowClient, name: str) -> Decision | None:
    """The move a crash interrupted (None when the last one finished)."""
    text = client.get_registered_model(name).tags.get(JOURNAL)
    if not text:
        return None
    try:
        return Decision(**json.loads(text))
    except (TypeError, ValueError) as exc:
        log.warning("ignoring an unreadable %s tag on %s: %s", JOURNAL, name, exc)
        return None


def complete_interrupted_move(client: MlflowClient, name: str) -> Decision | None:
    """Finish the alias move a crash interrupted (call it holding the lock); returns it.

    ``production`` is written first: when it holds the journal's version, the move happened
    and its ``previous-production`` and tags are written again; otherwise it never did, and
    the journal is dropped. The descriptions' lines of that move may be missing.
    """
    pending = read_journal(client, name)
    if pending is None:
        return None
    holder = alias_holder(client, name, PRODUCTION)
    if holder is not None and int(holder.version) == pending.version:
        log.warning(
            "completing an interrupted %s of %s version %s (was version %s)",
            pending.action,
            name,
            pending.version,
            pending.previous,
        )
        if pending.previous is not None:
            client.set_registered_model_alias(name, PREVIOUS_PRODUCTION, str(pending.previous))
        _record_tags(client, pending)
    else:
        log.warning(
            "an interrupted %s of %s version %s never moved %s; nothing to complete",
            pending.action,
            name,
            pending.version,
            PRODUCTION,
        )
    client.delete_registered_model_tag(name, JOURNAL)
    return pending


def _set_legacy_stage(client: MlflowClient, name: str, version: int) -> None:
    """Put ``version`` in the deprecated Production stage, archiving the one there before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            name, str(version), LEGACY_STAGE, archive_existing_versions=True
        )


@contextmanager
def promotion_lock(
    client: MlflowClient,
    name: str,
    timeout: float = LOCK_TIMEOUT_S,
    stale_after: float = LOCK_STALE_S,
) -> Iterator[None]:
    """Hold the promotion lock of ``name`` for the duration of the block.

    The lock is a registered model ``<name>.promotion-lock``: creating a registered model
    fails atomically when one of that name exists, in sqlite and behind a server alike. Its
    tags name the holder (a random ``token``, the host and pid); while the block runs, a
    heartbeat updates its description every ``stale_after / 4`` seconds. A waiter breaks it
    when its holder process on this host is gone, or when the store's stamps on it stood
    still for ``stale_after`` seconds. Only the holder whose token it carries deletes it.
    Waits up to ``timeout`` seconds, then raises :class:`UserError`.
    """
    lock = name + LOCK_SUFFIX
    token = uuid.uuid4().hex
    tags = {
        "holder": f"{current_user()}@{socket.gethostname()} pid {os.getpid()}",
        "token": token,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
    }
    deadline = time.monotonic() + timeout
    watch = _StaleWatch(stale_after)
    while True:
        try:
            client.create_registered_model(lock, tags=tags, description=_lock_text(name, 0))
            break
        except Exception as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        if _break_if_stale(client, lock, watch):
            continue
        if time.monotonic() > deadline:
            raise UserError(
                f"another promotion of {name} is in progress (it holds the registered model "
                f"{lock}); wait for it and retry, or delete {lock} if no promotion is running"
            )
        time.sleep(0.1 + random.random() * 0.2)
    heartbeat = _Heartbeat(client, name, token, stale_after / 4)
    try:
        yield
    finally:
        heartbeat.stop()
        _release(client, lock, token)


def _lock_text(name: str, beat: int) -> str:
    return f"Held while a promotion of {name} runs; deleted when it ends (heartbeat {beat})."


class _Heartbeat:
    """Update the lock's description every ``interval`` seconds while its token is ours, so
    that the store stamps it (``last_updated_timestamp``, the store's own clock)."""

    def __init__(self, client: MlflowClient, name: str, token: str, interval: float) -> None:
        self.client, self.name, self.token = client, name, token
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = None
        if interval > 0:
            self.thread = threading.Thread(target=self._beat, name="promotion-lock", daemon=True)
            self.thread.start()

    def _beat(self) -> None:
        lock, beat = self.name + LOCK_SUFFIX, 0
        while not self.stopped.wait(self.interval):
            beat += 1
            try:
                if self.client.get_registered_model(lock).tags.get("token") != self.token:
                    log.warning("the promotion lock %s was broken while this promotion ran", lock)
                    return
                self.client.update_registered_model(lock, _lock_text(self.name, beat))
            except Exception as exc:  # the next beat tries again; the promotion goes on
                log.warning("could not refresh the promotion lock %s: %s", lock, exc)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


def _release(client: MlflowClient, lock: str, token: str) -> None:
    """Delete the lock if it is still this holder's (a lock broken meanwhile is not)."""
    try:
        held = client.get_registered_model(lock)
        if held.tags.get("token") != token:
            log.warning(
                "the promotion lock %s was broken while this promotion ran; it is held by %s "
                "now, and left to it",
                lock,
                held.tags.get("holder", "another promotion"),
            )
            return
        client.delete_registered_model(lock)
    except Exception as exc:  # the block's own error matters more
        if error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            log.warning("the promotion lock %s was broken while this promotion ran", lock)
        else:
            log.warning("could not release the promotion lock %s: %s", lock, exc)


class _StaleWatch:
    """A waiter's view of the lock: how long the store's stamps on it have stood still,
    counted on this process's monotonic clock (the store's and ours are never compared)."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.seen: tuple | None = None
        self.since = 0.0

    def is_stale(self, model) -> bool:
        mark = (
            model.creation_timestamp,
            model.last_updated_timestamp,
            model.description,
            model.tags.get("token"),
        )
        now = time.monotonic()
        if mark != self.seen:
            self.seen, self.since = mark, now
        return _holder_gone(model.tags) or now - self.since > self.stale_after


def _holder_gone(tags: dict[str, str]) -> bool:
    """True when the lock's holder was a process on this host that no longer exists."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(tags["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, another user's
        return False
    return False


def _break_if_stale(client: MlflowClient, lock: str, watch: _StaleWatch) -> bool:
    try:
        model = client.get_registered_model(lock)
    except Exception as exc:
        if error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return True  # released meanwhile: try again at once
        raise
    if not watch.is_stale(model):
        return False
    log.warning("breaking the stale promotion lock %s of %s", lock, model.tags)
    try:
        # Delete only the lock seen stale, not one a faster waiter has just taken.
        now = client.get_registered_model(lock)
        if (now.creation_timestamp, now.tags.get("token")) == (
            model.creation_timestamp,
            model.tags.get("token"),
        ):
            client.delete_registered_model(lock)
    except Exception as exc:
        if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
    return True
