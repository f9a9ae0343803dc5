"""Plain aligned text tables of registered versions, for ``python -m registry``.

Reads the registry; returns strings (the CLI prints them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from registry.versions import (
    VersionInfo,
    canonical_metric,
    describe,
    get_version,
    list_versions,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

MAX_METRIC_COLUMNS = 4
METRIC_PREFIXES = ("test/", "val/")
MISSING = "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *rows]
    ]
    return "\n".join(lines)


def format_number(value: float | None) -> str:
    if value is None:
        return MISSING
    if value == int(value) and abs(value) >= 1000:
        return str(int(value))
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.6g}"


def key_metrics(versions: Sequence[VersionInfo], first: str) -> list[str]:
    """``first``, then the test/* and val/* metrics some version has, at most four.

    Names are the ``<split>/<name>`` spelling, whichever spelling a version logged."""
    present = {m for v in versions for m in v.canonical_metrics()}
    present |= {canonical_metric(t) for v in versions for t in v.tags if v.metric(t) is not None}
    first = canonical_metric(first)
    ordered = [first] + sorted(m for m in present if m.startswith(METRIC_PREFIXES[0]))
    ordered += sorted(m for m in present if m.startswith(METRIC_PREFIXES[1]))
    unique = list(dict.fromkeys(ordered))
    return unique[:MAX_METRIC_COLUMNS]


def _run_label(version: VersionInfo) -> str:
    if not version.run_id:
        return MISSING
    short = version.run_id[:8]
    return f"{short} ({version.run_name})" if version.run_name else short


def _created(version: VersionInfo) -> str:
    return version.created.strftime("%Y-%m-%d %H:%M")


def versions_table(client: MlflowClient, name: str, metric: str) -> str:
    """``list``: one row per version, newest first, with aliases, stage and key metrics."""
    versions = list_versions(client, name)
    if not versions:
        return f"{name}: no versions yet (train one with `mlflow run . -e train`)"
    metrics = key_metrics(versions, metric)
    headers = ["version", "aliases", "stage", *metrics, "created (UTC)", "run"]
    rows = [
        [
            str(v.version),
            ", ".join(v.aliases) or MISSING,
            v.stage,
            *(format_number(v.metric(m)) for m in metrics),
            _created(v),
            _run_label(v),
        ]
        for v in reversed(versions)
    ]
    holder = next((v for v in versions if "production" in v.aliases), None)
    footer = (
        f"production: version {holder.version}"
        if holder
        else "production: no version (promote one with `python -m registry promote`)"
    )
    return f"{name} ({client.tracking_uri})\n{format_table(headers, rows)}\n{footer}"


def version_report(client: MlflowClient, name: str, spec: str) -> str:
    """``show``: everything about one version, as sections of key-value pairs."""
    v = describe(client, get_version(client, name, spec))
    head = [
        ("aliases", ", ".join(v.aliases) or MISSING),
        ("stage", v.stage),
        ("created (UTC)", _created(v)),
        ("run", f"{v.run_id or MISSING}" + (f" ({v.run_name})" if v.run_name else "")),
        ("source", v.source or MISSING),
        ("description", v.description or MISSING),
    ]
    sections = [f"{name} version {v.version}", _pairs(head)]
    sections += ["params", _pairs(sorted(v.params.items())) or "  (none)"]
    metrics = [(k, format_number(x)) for k, x in v.canonical_metrics().items()]
    sections += ["metrics", _pairs(metrics) or "  (none)"]
    sections += ["tags", _pairs(sorted(v.tags.items())) or "  (none)"]
    return "\n".join(sections)


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"  {k.ljust(width)}  {value}".rstrip() for k, value in pairs)


def comparison(client: MlflowClient, name: str, first: str, second: str) -> str:
    """``compare``: two versions side by side; metric change second minus first, params that
    differ marked ``*``."""
    a = describe(client, get_version(client, name, first))
    b = describe(client, get_version(client, name, second))
    headers = ["", f"version {a.version}", f"version {b.version}", "change"]
    rows = [
        ["aliases", ", ".join(a.aliases) or MISSING, ", ".join(b.aliases) or MISSING, ""],
        ["stage", a.stage, b.stage, ""],
        ["created (UTC)", _created(a), _created(b), ""],
        ["run", _run_label(a), _run_label(b), ""],
    ]
    for metric in sorted(set(a.canonical_metrics()) | set(b.canonical_metrics())):
        x, y = a.metric(metric), b.metric(metric)
        change = MISSING if x is None or y is None else f"{y - x:+.4f}"
        rows.append([metric, format_number(x), format_number(y), change])
    for param in sorted(set(a.params) | set(b.params)):
        x, y = a.params.get(param, MISSING), b.params.get(param, MISSING)
        rows.append([f"param {param}", x, y, "*" if x != y else ""])
    return f"{name}\n{format_table(headers, rows)}"
