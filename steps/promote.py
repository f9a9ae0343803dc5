"""Entry point ``promote``: move the ``production`` alias to a trained version, by a rule.

Reads the Model Registry (the versions of ``--model-name`` and their runs' metrics) and,
for the smoke check, a few test images from ``--clean`` (``images.parquet`` and
``images/<size>/``; the model's input example when the folder is absent). Writes the
``production`` and ``previous-production`` aliases, ``promotion.*`` tags on the version
(when, by whom, why, the metric values compared) and, when asked or already in use, the
legacy ``Production`` stage. This step's MLflow run records the decision: its params, and
the same ``promotion.*`` tags plus ``promotion.outcome`` (promote, unchanged or refused).

    mlflow run . -e promote -P version=best --env-manager local
    python -m steps.promote --version 3 --force true --reason "hotfix for #12"
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from registry.promotion import DEFAULT_METRIC, Decision, promote
from registry.store import DEFAULT_MODEL_NAME, RegistryError
from steps import runtime
from steps.runtime import StepError, cli, log_params, start_run, str_to_bool

log = logging.getLogger(__name__)


def legacy_stage_choice(value: str) -> bool | None:
    """argparse type: true, false, or auto (move the stage only if a version is in it)."""
    if value.strip().lower() in ("auto", ""):
        return None
    return str_to_bool(value)


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.promote",
        description="Promote a registered model version to production (alias `production`).",
    )
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
    parser.add_argument(
        "--version", default="best", help="a version number, an alias, latest, or best"
    )
    parser.add_argument(
        "--metric", default=DEFAULT_METRIC, help="metric that picks best and sets the rule"
    )
    parser.add_argument(
        "--force", type=str_to_bool, default=False, help="skip the metric rule (true/false)"
    )
    parser.add_argument("--reason", default="", help="why, recorded on the version")
    parser.add_argument("--by", default="", help="who decides (default: the OS user)")
    parser.add_argument(
        "--clean",
        type=Path,
        default=Path("data/clean"),
        help="cleaned data whose test images feed the smoke check",
    )
    parser.add_argument(
        "--legacy-stage",
        type=legacy_stage_choice,
        default=None,
        help="also move the deprecated Production stage: true, false or auto (default auto: "
        "only when a version is in that stage already)",
    )
    return parser


def step_params(args: argparse.Namespace) -> dict[str, str]:
    """The step's params, as text (``mlflow run`` logs its own copy of them first)."""
    legacy = "auto" if args.legacy_stage is None else str(args.legacy_stage).lower()
    return {
        "model_name": args.model_name,
        "version": args.version,
        "metric": args.metric,
        "force": str(args.force).lower(),
        "clean": str(args.clean),
        "legacy_stage": legacy,
    }


def record_decision(decision: Decision) -> None:
    """Tag the active run with the decision."""
    import mlflow

    mlflow.set_tags({**decision.tags(), "promotion.outcome": decision.action})


def main(argv: Sequence[str] | None = None) -> Decision:
    args = get_args_parser().parse_args(argv)
    import mlflow

    with start_run("promote") as run:
        log_params(step_params(args))
        try:
            decision = promote(
                args.model_name,
                args.version,
                metric=args.metric,
                force=args.force,
                reason=args.reason,
                by=args.by or None,
                clean=args.clean,
                legacy_stage=args.legacy_stage,
                run_id=run.info.run_id,
            )
        except RegistryError as exc:
            mlflow.set_tags({"promotion.outcome": "refused", "promotion.error": str(exc)[:1000]})
            raise StepError(str(exc)) from None
        record_decision(decision)
    print(decision.summary())
    return decision


if __name__ == "__main__":
    cli(main)()
