"""Entry point ``promote``: move the ``production`` alias to a trained version, by a rule.

Reads the Model Registry (the versions of ``--model-name`` and their runs' metrics) and,
for the smoke check, a few test images from ``--clean`` (``images.parquet`` and
``images/<size>/``; the model's input example when the folder is absent). Writes the
``production`` and ``previous-production`` aliases, ``promotion.*`` tags on the version
(when, by whom, why, the metric values compared) and, when asked or already in use, the
legacy ``Production`` stage. This step's MLflow run is named after what it did
(``promote v3 -> production``, ``promote v3 refused``) and records the decision: its params,
``promotion.version`` (the version it acted on), ``promotion.outcome`` (promote, unchanged
or refused) and the decision's ``promotion.*`` tags that its params do not already say.
With ``--proposal true`` (what ``main`` passes) the version is a pipeline's proposal, not a
person's choice: a version that was rolled back, refused or replaced by a person
(``promotion.blocked``, ``promotion.refused``) is refused, and only an explicit promotion
(the default) can put it back.

    mlflow run . -e promote -P version=best --env-manager local
    python -m steps.promote --version 3 --force true --reason "hotfix for #12"
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from cli import UserError
from registry.promotion import (
    TAG_PREFIX,
    Decision,
    choose_candidate,
    decision_options,
    promote,
    resolve_metric,
)
from registry.store import DEFAULT_MODEL_NAME, PRODUCTION, connect
from registry.versions import canonical_metric
from steps import runtime
from steps.runtime import cli, log_params, optional_text, start_run, str_to_bool

log = logging.getLogger(__name__)

OUTCOME = TAG_PREFIX + "outcome"
VERSION = TAG_PREFIX + "version"
ERROR = TAG_PREFIX + "error"
# Decision tags the run's params already hold (metric, force, legacy_stage) or that point at
# the run itself: not logged twice. `reason` and `by` are tagged only when the params left
# them unset (the tag then says what the decision used: its own reason, the OS user).
SAID_BY_PARAMS = ("metric", "forced", "legacy_stage", "run_id", "proposal")


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
        "--metric",
        type=canonical_metric,
        default="auto",
        help="metric that picks best and sets the rule (auto: test/accuracy for a classifier, "
        "test/ndcg_at_10 for marketplace-ranker; test_accuracy, the older spelling of "
        "test/accuracy, is the same metric)",
    )
    parser.add_argument(
        "--force", type=str_to_bool, default=False, help="skip the metric rule (true/false)"
    )
    parser.add_argument(
        "--reason", type=optional_text, default="", help="why, recorded on the version"
    )
    parser.add_argument(
        "--by", type=optional_text, default="", help="who decides (none: the OS user)"
    )
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
    parser.add_argument(
        "--proposal",
        type=str_to_bool,
        default=False,
        help="true: a pipeline's proposal, refused for a version that was rolled back, refused "
        "or replaced by a person (false: a person's explicit choice)",
    )
    return parser


def step_params(args: argparse.Namespace) -> dict[str, str]:
    """The step's params, as text (``mlflow run`` logs its own copy of them first); the
    unset ``reason`` and ``by`` are left out."""
    legacy = "auto" if args.legacy_stage is None else str(args.legacy_stage).lower()
    return {
        "model_name": args.model_name,
        "version": args.version,
        "metric": args.metric,
        "force": str(args.force).lower(),
        "reason": args.reason,
        "by": args.by,
        "clean": str(args.clean),
        "legacy_stage": legacy,
        "proposal": str(args.proposal).lower(),
    }


def run_name(
    version: int | str | None, outcome: str, forced: bool = False, model_name: str = ""
) -> str:
    """``promote v3 -> production``, ``promote v3 refused``: what the runs table shows (with
    the model's name when it is not the default one)."""
    target = f"v{version}" if version is not None else "(no version)"
    if model_name and model_name != DEFAULT_MODEL_NAME:  # marketplace-text-classifier: text
        short = model_name.removeprefix("marketplace-").removesuffix("-classifier")
        target = f"{short} {target}"
    if outcome == "promote":
        return f"promote {target} -> {PRODUCTION}" + (" (forced)" if forced else "")
    if outcome == "unchanged":
        return f"promote {target} (already {PRODUCTION})"
    return f"promote {target} refused"


def record_decision(decision: Decision, given: dict[str, str] | None = None) -> None:
    """Name and tag the active run with the decision; ``given`` holds the step's params."""
    import mlflow

    said = set(SAID_BY_PARAMS) | {key for key in ("reason", "by") if (given or {}).get(key)}
    tags = {
        key: value
        for key, value in decision.tags().items()
        if key.removeprefix(TAG_PREFIX) not in said
    }
    tags.update({OUTCOME: decision.action, VERSION: str(decision.version)})
    tags["mlflow.runName"] = run_name(
        decision.version, decision.action, decision.forced, decision.name
    )
    mlflow.set_tags(tags)


def _candidate_version(args: argparse.Namespace) -> int | None:
    """The version ``--version`` names now (None when it names none)."""
    try:
        return choose_candidate(connect(), args.model_name, args.version, args.metric).version
    except UserError:
        return None


def main(argv: Sequence[str] | None = None) -> Decision:
    args = get_args_parser().parse_args(argv)
    import mlflow

    args.metric = resolve_metric(args.model_name, args.metric)
    with start_run(f"promote {args.version}") as run:
        params = step_params(args)
        log_params(params)
        candidate = _candidate_version(args)
        if candidate is not None:
            name = run_name(candidate, "promote", model_name=args.model_name)
            mlflow.set_tags({"mlflow.runName": name, VERSION: candidate})
        try:
            decision = promote(
                args.model_name,
                args.version if candidate is None else candidate,
                force=args.force,
                run_id=run.info.run_id,
                proposal=args.proposal,
                **decision_options(args),
            )
        except UserError as exc:
            mlflow.set_tags(
                {
                    OUTCOME: "refused",
                    ERROR: str(exc)[:1000],
                    "mlflow.runName": run_name(candidate, "refused", model_name=args.model_name),
                }
            )
            raise UserError(str(exc)) from None
        record_decision(decision, params)
    print(decision.summary())
    return decision


run = cli(main)

if __name__ == "__main__":
    run()
