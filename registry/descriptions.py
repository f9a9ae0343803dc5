"""What the registry's pages say: the model's description, and each version's story.

The MLflow UI shows a registered model's description on its page and each version's
description beside it, in the versions table, cut to its first line. This module writes
them so that a reader of that page can tell which version is in production and why, and
why the others are not:

* :func:`model_description`: what the model classifies, its input and output, and how a
  version reaches production (set once, when the first version is registered);
* a version's description is three parts: a **status line** first (plain text, verdict
  first, as the versions table shows only its first words: ``In production: test/accuracy
  ...``, ``Refused: version 4 has ...``, ``Not in production: replaced by version 4 ...``),
  rewritten by each decision;
  the **registration note** (:func:`registration_note`: architecture, data digest, test
  metrics, the run), written when training registers it; and the **promotion history**,
  one line per decision (:func:`decision_note`), appended by :mod:`registry.promotion`.

Descriptions are Markdown and kept under :data:`MAX_DESCRIPTION` characters (the limit of
MLflow's SQL stores): when a version's history grows past it, its oldest decision lines go
first. Only :func:`append_to_version` and :func:`set_model_description_if_empty` talk to a
store; the rest builds text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

MAX_DESCRIPTION = 5000
DECISIONS_HEADING = "**Promotion history**"
CANDIDATE = "Not promoted yet: registered by training; `promote` decides whether it is served."
STATUS_PREFIXES = ("In production", "Not in production", "Refused", "Not promoted")
DROPPED = "_(older decisions dropped to fit; the newest are below)_"
METRIC_LABELS = {
    "accuracy": "accuracy",
    "top3_accuracy": "top-3 accuracy",
    "macro_f1": "macro-F1",
    "loss": "loss",
}


def model_description(
    *,
    what: str,
    input_text: str,
    output_text: str,
    metric: str,
    production: str = "production",
    previous: str = "previous-production",
) -> str:
    """The registered model's description: what it does, its I/O, how a version gets served."""
    return (
        f"{what}\n\n"
        f"**Input**: {input_text}  \n"
        f"**Output**: {output_text}\n\n"
        f"**How a version reaches production.** Training registers every version and never "
        f"moves an alias. `promote` (`python -m registry promote`, or the `promote` entry point) "
        f"moves the alias `{production}` to a version when it loads and classifies a few test "
        f"images (the smoke check) and its `{metric}` is at least the current production "
        f"version's; `--force` with a `--reason` skips the metric rule, never the smoke check. "
        f"The version it replaces keeps `{previous}`, and `python -m registry rollback` gives "
        f"production back to it. The service loads `models:/<name>@{production}`.\n\n"
        f"Each version's description says how it was trained and every promotion decision "
        f"about it: promoted, refused (and why), forced (by whom, why), rolled back."
    )


def metrics_line(metrics: Mapping[str, float], split: str = "test") -> str:
    """``accuracy 0.541 · top-3 accuracy 0.793 · ...`` of the ``<split>/...`` metrics."""
    prefix = f"{split}/"
    parts = []
    for key, value in metrics.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            parts.append(f"{METRIC_LABELS.get(name, name)} {value:.4f}")
    return " · ".join(parts)


def registration_note(
    *,
    summary: str,
    run_id: str,
    run_name: str | None,
    data_digest: str | None,
    metrics: Mapping[str, float],
    details: Sequence[str] = (),
) -> str:
    """A new version's description: the candidate status line, then what it is, the data,
    the test metrics and the run."""
    run = f"`{run_name}` ({run_id[:8]})" if run_name else f"`{run_id[:8]}`"
    data = f" on clean data `{data_digest}`" if data_digest else ""
    lines = [f"{summary}, trained by run {run}{data}."]
    tested = metrics_line(metrics)
    lines.append(f"Test split: {tested}." if tested else "No test metrics (empty test split).")
    lines.extend(details)
    return f"{CANDIDATE}\n\n" + "  \n".join(lines)


def with_registration_line(description: str, prefix: str, line: str) -> str:
    """``description`` with ``line`` as the last line of its registration note, replacing
    the line that starts with ``prefix`` if there is one (the promotion history is kept)."""
    head, heading, history = description.partition(DECISIONS_HEADING)
    kept = [row for row in head.rstrip().split("  \n") if not row.startswith(prefix)]
    kept = [row for row in kept if row]
    body = "  \n".join([*kept, line])
    return f"{body}\n\n{heading}{history}" if heading else body


def status_of(description: str) -> str:
    """The status line of a version's description ('' when it has none)."""
    first = description.split("\n\n", 1)[0]
    return first if first.startswith(STATUS_PREFIXES) else ""


def with_status(description: str, status: str) -> str:
    """``description`` with its status line replaced by (or preceded by) ``status``."""
    rest = description
    if status_of(description):
        rest = description.split("\n\n", 1)[1] if "\n\n" in description else ""
    return f"{status}\n\n{rest}".rstrip()


def decision_note(when: str, headline: str, text: str) -> str:
    """One decision line: ``- 2026-12-01 09:12 UTC, **promoted to production** by ...``."""
    return f"- {when}, **{headline}**{' ' if text.startswith('by ') else ': '}{text}"


def append_decision(
    description: str, note: str, status: str | None = None, limit: int = MAX_DESCRIPTION
) -> str:
    """``description`` with ``note`` added under the promotion history and, when given,
    ``status`` as its status line, within ``limit`` (the oldest decisions go first)."""
    if status is not None:
        description = with_status(description, status)
    head, _, history = description.partition(DECISIONS_HEADING)
    head = head.rstrip()
    lines = [line for line in history.strip().splitlines() if line.startswith("- ")]
    lines.append(note)
    dropped = DROPPED in history
    while True:
        body = "\n".join(([DROPPED] if dropped else []) + lines)
        text = f"{DECISIONS_HEADING}\n\n{body}"
        if head:
            text = f"{head}\n\n{text}"
        if len(text) <= limit or len(lines) == 1:
            return text[:limit]
        lines.pop(0)
        dropped = True


def append_to_version(
    client: MlflowClient, name: str, version: str | int, note: str, status: str | None = None
) -> None:
    """Add ``note`` to the promotion history in version ``version``'s description and make
    ``status`` its status line."""
    current = client.get_model_version(name, str(version)).description or ""
    updated = append_decision(current, note, status)
    client.update_model_version(name, str(version), description=updated)


def set_model_description_if_empty(client: MlflowClient, name: str, description: str) -> None:
    """Describe the registered model ``name``, unless someone already has."""
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=description[:MAX_DESCRIPTION])
