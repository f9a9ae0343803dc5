"""Promoting a registered version to production, and rolling production back.

``promote`` moves the ``production`` alias of a registered model to a chosen version (a
number, or ``best`` by a metric) when

1. the version loads and predicts well-formed answers on a few images (the smoke check);
2. unless forced, its metric is at least as good as the current production version's.

The version that held production keeps ``previous-production``; ``rollback`` swaps the two
back. Each decision is written as ``promotion.*`` tags on the version (when, by whom, why,
the metric values compared), as a line in the version's description (and in the
description of the version that left production), and, with ``legacy_stage``, mirrored in
the deprecated ``Production`` stage. A refused candidate (the metric rule or the smoke
check) is tagged ``promotion.refused`` with the reason, and its description says so.
Promotions of one model take a lock (a registered model named ``<name>.promotion-lock``,
whose creation is atomic in any store), so two at once run one after the other and exactly
one version ends up holding ``production``.

Reads and writes the Model Registry only.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import UserError
from registry.descriptions import append_to_version, decision_note
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
LOCK_STALE_S = 600.0
TAG_PREFIX = "promotion."
SUPERSEDED_AT = TAG_PREFIX + "superseded_at"
SUPERSEDED_BY = TAG_PREFIX + "superseded_by"
SUPERSEDED_TAGS = frozenset({SUPERSEDED_AT, SUPERSEDED_BY})
REFUSED = TAG_PREFIX + "refused"
REFUSED_AT = TAG_PREFIX + "refused_at"
REFUSED_BY = TAG_PREFIX + "refused_by"
REFUSED_TAGS = frozenset({REFUSED, REFUSED_AT, REFUSED_BY})
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
        }
        return {TAG_PREFIX + key: value for key, value in tags.items()}

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
    metric: str = DEFAULT_METRIC,
    force: bool = False,
    reason: str = "",
    by: str | None = None,
    clean: Path | None = None,
    legacy_stage: bool | None = None,
    run_id: str | None = None,
    client: MlflowClient | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> Decision:
    """Move ``production`` to ``version`` of ``name`` if it passes the smoke check and the rule.

    ``version`` is a number, an alias, ``latest`` or ``best`` (the best by ``metric`` among
    versions that have it). ``force`` skips the metric rule, never the smoke check.
    ``legacy_stage`` True also moves the ``Production`` stage; None (the default) moves it
    only when some version is in that stage already, so the two never disagree.
    ``run_id`` (the promote step's run) is recorded in the tags. Raises
    :class:`UserError` (:class:`PromotionRefused`, ``SmokeCheckError``) and moves nothing
    when a check fails; a candidate refused by the rule or the smoke check is tagged
    ``promotion.refused`` and its description says why.
    """
    client = client or connect()
    by = by or current_user()
    metric = canonical_metric(metric)  # `test_accuracy` and `test/accuracy` are one metric
    candidate = choose_candidate(client, name, version, metric)
    current = _holder_info(client, name, PRODUCTION)
    if current is not None and current.version == candidate.version:
        if legacy_stage and candidate.stage != LEGACY_STAGE:
            _set_legacy_stage(client, name, candidate.version)
        return _unchanged(candidate, metric, by, reason, run_id)
    with _refusal_recorded(client, candidate, by, reason):
        check_rule(candidate, current, metric, force)  # fail before the slow smoke check
        smoke = check_version(client, name, candidate.version, clean)
    with promotion_lock(client, name, timeout=lock_timeout):
        current = _holder_info(client, name, PRODUCTION)  # another promotion may have run
        if current is not None and current.version == candidate.version:
            return _unchanged(candidate, metric, by, reason, run_id)
        with _refusal_recorded(client, candidate, by, reason):
            value, current_value = check_rule(candidate, current, metric, force)
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
        )
        _move_production(client, decision)
    log.debug("%s", decision.summary())
    return decision


def rollback(
    name: str = DEFAULT_MODEL_NAME,
    *,
    metric: str = DEFAULT_METRIC,
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
    smoke-checked first; the metric rule does not apply (``metric`` is only recorded).
    """
    client = client or connect()
    by = by or current_user()
    metric = canonical_metric(metric)
    current, target = _rollback_pair(client, name)
    smoke = check_version(client, name, target.version, clean)
    with promotion_lock(client, name, timeout=lock_timeout):
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
    require_model(client, name)
    current = _holder_info(client, name, PRODUCTION)
    target = _holder_info(client, name, PREVIOUS_PRODUCTION)
    if current is None:
        raise UserError(
            f"no version of {name} holds {PRODUCTION}, so there is nothing to roll back: "
            "promote one with `python -m registry promote`"
        )
    if target is None or target.version == current.version:
        raise UserError(
            f"no version of {name} holds {PREVIOUS_PRODUCTION}, so there is nothing to roll "
            "back to: promote the version you want with `python -m registry promote --version N`"
        )
    return current, target


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
    """Set the aliases (previous first, so a crash in between changes nothing), then tags."""
    name, version = decision.name, str(decision.version)
    if decision.previous is not None:
        client.set_registered_model_alias(name, PREVIOUS_PRODUCTION, str(decision.previous))
    client.set_registered_model_alias(name, PRODUCTION, version)
    holder = alias_holder(client, name, PRODUCTION)
    if holder is None or int(holder.version) != decision.version:
        now = "nothing" if holder is None else f"version {holder.version}"
        raise UserError(
            f"{PRODUCTION} of {name} points at {now} right after this promotion set it to "
            f"version {version}: another client moved it; check `python -m registry list`"
        )
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    stale = (SUPERSEDED_TAGS | REFUSED_TAGS) & set(client.get_model_version(name, version).tags)
    for key in sorted(stale):  # it holds production now: neither superseded nor refused
        client.delete_model_version_tag(name, version, key)
    if decision.previous is not None:
        previous = str(decision.previous)
        client.set_model_version_tag(name, previous, SUPERSEDED_AT, decision.at)
        client.set_model_version_tag(name, previous, SUPERSEDED_BY, version)
    for number, (note, status) in decision.notes().items():
        append_to_version(client, name, number, note, status)
    if decision.legacy_stage:
        _set_legacy_stage(client, name, decision.version)


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
    fails atomically when one of that name exists, in sqlite and behind a server alike.
    A lock older than ``stale_after`` seconds (a crashed promotion) is broken. Waits up to
    ``timeout`` seconds, then raises :class:`UserError`.
    """
    lock = name + LOCK_SUFFIX
    holder = f"{current_user()}@{socket.gethostname()} pid {os.getpid()}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"holder": holder},
                description=f"Held while a promotion of {name} runs; deleted when it ends.",
            )
            break
        except Exception as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        if _break_if_stale(client, lock, stale_after):
            continue
        if time.monotonic() > deadline:
            raise UserError(
                f"another promotion of {name} is in progress (it holds the registered model "
                f"{lock}); wait for it and retry, or delete {lock} if no promotion is running"
            )
        time.sleep(0.1 + random.random() * 0.2)
    try:
        yield
    finally:
        try:
            client.delete_registered_model(lock)
        except Exception as exc:  # the block's own error matters more
            log.warning("could not release the promotion lock %s: %s", lock, exc)


def _break_if_stale(client: MlflowClient, lock: str, stale_after: float) -> bool:
    try:
        model = client.get_registered_model(lock)
    except Exception as exc:
        if error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return True  # released meanwhile: try again at once
        raise
    age = time.time() - model.creation_timestamp / 1000
    if age <= stale_after:
        return False
    log.warning("breaking the promotion lock %s, held %.0f s by %s", lock, age, model.tags)
    try:
        # Delete only the lock seen stale, not one a faster waiter has just taken.
        if client.get_registered_model(lock).creation_timestamp == model.creation_timestamp:
            client.delete_registered_model(lock)
    except Exception as exc:
        if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
    return True
