"""Reading registered model versions: their run, params, metrics, tags and aliases.

A version's metrics come from the run that logged it (``client.get_run(run_id)``); the
training step also copies its test metrics onto the version as tags (``test/accuracy``
...), which stand in when the run is gone or lacks the metric. Whether a bigger metric is
better follows its name: ``*loss``, ``*error``, ``mae``, ``mse``, ``rmse`` are better
smaller, everything else (accuracy, f1, ...) better bigger.

Metric names are ``<split>/<name>`` (``test/accuracy``, ``val/loss``), so that the MLflow
UI charts a split's metrics together. Versions trained before that carry the flat names
(``test_accuracy``): :mod:`registry.legacy` maps one spelling to the other, and
:meth:`VersionInfo.metric` and :func:`metric_value` accept either and find either, so old
and new versions still compare.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cli import UserError
from registry.kinds import kind_of_name, training_command
from registry.legacy import canonical_metric, canonical_metrics, legacy_metric
from registry.store import error_code

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

LOWER_IS_BETTER = re.compile(r"(loss|error|mae|mse|rmse|perplexity)$", re.IGNORECASE)
SPLITS = ("train", "val", "test")
METRIC_TAG_PREFIXES = tuple(f"{split}{sep}" for split in SPLITS for sep in ("/", "_"))
WHOLE_FLOAT = re.compile(r"\d+\.0*")
BEST = "best"
LATEST = "latest"


@dataclass
class VersionInfo:
    """One registered model version with what its source run recorded."""

    name: str
    version: int
    run_id: str | None
    run_name: str | None
    created: datetime
    stage: str
    status: str
    aliases: list[str]
    source: str
    description: str
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        """The value of metric ``name`` in either spelling (``test/accuracy`` or
        ``test_accuracy``), or None when neither the run nor a tag has it."""
        value = metric_value(self.metrics, name)
        if value is None:
            value = metric_value(self.tags, name)
        return value

    def canonical_metrics(self) -> dict[str, float]:
        """Every metric under its ``<split>/<name>`` name (that spelling wins over the flat one)."""
        return canonical_metrics(self.metrics)


def metric_value(values: Mapping[str, object], name: str) -> float | None:
    """Metric ``name`` from ``values`` (run metrics, version tags, results.json), found under
    its ``<split>/<name>`` name or else its flat legacy one, whichever way ``name`` is spelled;
    None when absent or not a finite number."""
    for key in dict.fromkeys((canonical_metric(name), legacy_metric(name), name)):
        if key in values:
            number = _number(values[key])
            if number is not None:
                return number
    return None


def lower_is_better(metric: str) -> bool:
    """True for metrics where smaller is better (losses and errors)."""
    return bool(LOWER_IS_BETTER.search(metric))


def is_better_or_equal(candidate: float, reference: float, metric: str) -> bool:
    """Whether ``candidate`` is at least as good as ``reference`` for ``metric``."""
    return candidate <= reference if lower_is_better(metric) else candidate >= reference


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _tag_metrics(tags: dict[str, str]) -> dict[str, float]:
    """Numeric version tags named like metrics (``test/accuracy``, or ``test_accuracy`` on older
    versions), as training writes them."""
    metrics = {}
    for key, value in tags.items():
        number = _number(value)
        if key.startswith(METRIC_TAG_PREFIXES) and number is not None:
            metrics[key] = number
    return metrics


def describe(
    client: MlflowClient, version: ModelVersion, aliases: list[str] | None = None
) -> VersionInfo:
    """A :class:`VersionInfo` for ``version``: run metrics first, numeric version tags second.

    ``aliases`` overrides ``version.aliases`` (``search_model_versions`` leaves them empty).
    """
    tags = dict(version.tags or {})
    metrics = _tag_metrics(tags)
    params: dict[str, str] = {}
    run_name = None
    if version.run_id:
        try:
            run = client.get_run(version.run_id)
        except Exception as exc:  # a deleted or foreign run: the tags are all there is
            if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:
            metrics.update(run.data.metrics)
            params = dict(run.data.params)
            run_name = run.info.run_name
    return VersionInfo(
        name=version.name,
        version=int(version.version),
        run_id=version.run_id,
        run_name=run_name,
        created=datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC),
        stage=version.current_stage or "None",
        status=str(version.status or "READY"),
        aliases=sorted(version.aliases or [] if aliases is None else aliases),
        source=version.source or "",
        description=version.description or "",
        tags=tags,
        params=params,
        metrics=metrics,
    )


class NoSuchModel(UserError):
    """No registered model is called ``name``; the message names the entry point that
    trains one of its kind. :attr:`missing` is the first half alone, for a caller (the
    service) that words what to do its own way."""

    def __init__(self, name: str, tracking_uri: str, known: list[str]) -> None:
        hint = f" (registered: {', '.join(known)})" if known else ""
        self.name = name
        self.missing = f"no registered model named {name!r} in {tracking_uri}{hint}"
        super().__init__(
            f"{self.missing}: train and register one with "
            f"`{training_command(kind_of_name(name))}`, or pass --model-name"
        )


def require_model(client: MlflowClient, name: str) -> None:
    """Raise :class:`NoSuchModel` when no registered model is called ``name``."""
    try:
        client.get_registered_model(name)
    except Exception as exc:
        if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(model.name for model in client.search_registered_models(max_results=20))
        raise NoSuchModel(name, client.tracking_uri, known) from None


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of ``name``, oldest first (raises when the model does not exist)."""
    require_model(client, name)
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def list_versions(client: MlflowClient, name: str) -> list[VersionInfo]:
    """Every version of ``name`` described, oldest first."""
    versions = all_versions(client, name)
    held = client.get_registered_model(name).aliases or {}
    return [
        describe(client, v, [a for a, n in held.items() if int(n) == int(v.version)])
        for v in versions
    ]


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version of ``name`` that holds ``alias`` now, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:
        if error_code(exc) not in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            raise
        return None


def get_version(client: MlflowClient, name: str, spec: str | int) -> ModelVersion:
    """The version that ``spec`` names: a number, ``latest``, or an alias (``@`` optional)."""
    text = str(spec).strip()
    if WHOLE_FLOAT.fullmatch(text):  # MLproject passes numbers as text such as "3.0"
        text = text.split(".", 1)[0]
    if text.isdigit():
        try:
            return client.get_model_version(name, text)
        except Exception as exc:
            if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
        numbers = [v.version for v in all_versions(client, name)]
        known = ", ".join(str(n) for n in numbers) or "none"
        raise UserError(f"{name} has no version {text} (versions: {known})")
    if text.lower() == LATEST:
        versions = all_versions(client, name)
        if not versions:
            raise UserError(f"{name} has no versions yet: train one first")
        return versions[-1]
    alias = text.removeprefix("@")
    require_model(client, name)
    holder = alias_holder(client, name, alias)
    if holder is None:
        raise UserError(
            f"no version of {name} holds the alias {alias!r}: give a version number, "
            "`latest`, or an alias that `python -m registry list` shows"
        )
    return holder


def best_version(
    versions: list[VersionInfo], metric: str, prefer: int | None = None
) -> VersionInfo:
    """The best version by ``metric`` among those that have it.

    Ties go to ``prefer`` (the version holding production, so a tie moves nothing), then to
    the newest version.
    """
    scored = [v for v in versions if v.metric(metric) is not None]
    if not scored:
        names = sorted({m for v in versions for m in v.canonical_metrics()})
        known = ", ".join(names) if names else "none"
        raise UserError(
            f"no version of {versions[0].name if versions else 'the model'} has the metric "
            f"{metric!r} (metrics found: {known}): pass --metric, or a version number with --force"
        )
    sign = -1.0 if lower_is_better(metric) else 1.0
    return max(scored, key=lambda v: (sign * v.metric(metric), v.version == prefer, v.version))
