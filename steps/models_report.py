"""models_report: the three classifiers' test figures side by side (image, text, both).

For each kind of model (``registry.kinds``: image, text, image+text) the version of its
registered model that holds ``production`` (else the newest), with the test accuracy,
top-3 accuracy and macro-F1 of the run that trained it, and what those were measured on
(the image and the combined models on test photos, the text model on test listings).
Then, from the combined version's run, the three on exactly the same test photos: the
image model alone, the text alone, and both (``train_combined`` logs all three). Last, the
search ranking on the test queries and candidates of the ranker's run (``rank``): the
learned ranker, the hand blend, the text relevance alone and the photo similarity alone
(photo queries only), by graded NDCG@10 and @5 and precision@10.

Reads: the tracking store (MLFLOW_TRACKING_URI, default ``sqlite:///mlflow.db``). Writes:
the tables (markdown) to stdout. ``make demo`` ends with it; ``make results`` prints it
after the baselines.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence

from cli import UserError
from marketplace_models.kinds import IMAGE, IMAGE_TEXT, KINDS, RANKING, TEXT
from registry.kinds import MODEL_NAMES
from registry.store import PRODUCTION, connect
from registry.versions import alias_holder, get_version
from steps import runtime

log = logging.getLogger(__name__)

FIGURES = (("accuracy", "accuracy"), ("top3_accuracy", "top-3"), ("macro_f1", "macro-F1"))
UNITS = {IMAGE: "photos", TEXT: "listings", IMAGE_TEXT: "photos + their text"}
RANKINGS = (
    ("", "learned ranker"),
    ("blend_", "hand blend"),
    ("text_", "text relevance alone"),
    ("photo_", "photo similarity alone (photo queries)"),
)
RANKING_FIGURES = (
    ("ndcg_at_10", "NDCG@10"),
    ("ndcg_at_5", "NDCG@5"),
    ("precision_at_10", "precision@10"),
)
SAME_PHOTOS = (
    ("test_image_only", "image alone"),
    ("test_text_only", "text alone"),
    ("test", "both"),
)


def metric(metrics: Mapping[str, float], prefix: str, name: str) -> float | None:
    """``<prefix>/<name>`` (the current spelling), else ``<prefix>_<name>`` (the older)."""
    for key in (f"{prefix}/{name}", f"{prefix}_{name}"):
        if key in metrics:
            return float(metrics[key])
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def chosen_version(client, name: str):
    """The version holding production, else the newest; None when ``name`` has none."""
    try:
        holder = alias_holder(client, name, PRODUCTION)
        return holder or get_version(client, name, "latest")
    except UserError:
        return None


def report(client) -> str:
    """The two markdown tables."""
    lines = [
        "| model | registered model | version | test rows | "
        + " | ".join(label for _, label in FIGURES)
        + " |",
        "|---|---|---|---|" + "---|" * len(FIGURES),
    ]
    combined_metrics: Mapping[str, float] = {}
    for kind in KINDS:
        name = MODEL_NAMES[kind]
        version = chosen_version(client, name)
        if version is None:
            lines.append(f"| {kind} | {name} | none yet | - |" + " - |" * len(FIGURES))
            continue
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        if kind == IMAGE_TEXT:
            combined_metrics = metrics
        held = " (production)" if PRODUCTION in (version.aliases or []) else ""
        figures = " | ".join(_fmt(metric(metrics, "test", key)) for key, _ in FIGURES)
        lines.append(f"| {kind} | {name} | {version.version}{held} | {UNITS[kind]} | {figures} |")
    if combined_metrics:
        lines += [
            "",
            "On the same test photos (from the combined model's run):",
            "",
            "| input | " + " | ".join(label for _, label in FIGURES) + " |",
            "|---|" + "---|" * len(FIGURES),
        ]
        for prefix, label in SAME_PHOTOS:
            figures = " | ".join(_fmt(metric(combined_metrics, prefix, key)) for key, _ in FIGURES)
            lines.append(f"| {label} | {figures} |")
    return "\n".join(lines + ranking_report(client))


def ranking_report(client) -> list[str]:
    """The ranking table of the ranker version holding production (else the newest)."""
    name = MODEL_NAMES[RANKING]
    version = chosen_version(client, name)
    if version is None or not version.run_id:
        return ["", f"No {name} version yet: `mlflow run . -e rank --env-manager local`."]
    metrics = client.get_run(version.run_id).data.metrics
    held = " (production)" if PRODUCTION in (version.aliases or []) else ""
    queries = int(metrics.get("test/queries", 0))
    lines = [
        "",
        f"Search ranking on the same {queries} test queries and candidates ({name} version "
        f"{version.version}{held}; graded relevance, docs/ranking.md):",
        "",
        "| ranking | " + " | ".join(label for _, label in RANKING_FIGURES) + " |",
        "|---|" + "---|" * len(RANKING_FIGURES),
    ]
    for prefix, label in RANKINGS:
        figures = " | ".join(_fmt(metrics.get(f"test/{prefix}{key}")) for key, _ in RANKING_FIGURES)
        lines.append(f"| {label} | {figures} |")
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    return runtime.ArgumentParser(
        prog="python -m steps.models_report", description=__doc__.split("\n")[0]
    )


def main(argv: Sequence[str] | None = None) -> str:
    get_args_parser().parse_args(argv)
    table = report(connect())
    print(table)
    return table


run = runtime.cli(main)

if __name__ == "__main__":
    run()
