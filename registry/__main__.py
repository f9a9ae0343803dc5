"""``python -m registry <command>``: list, show, compare, promote and roll back model versions,
and add a version's int8 export (``quantize``, see :mod:`registry.quantize`).

Reads the Model Registry named by MLFLOW_TRACKING_URI (default ``sqlite:///mlflow.db``, or
``--tracking-uri``); ``promote`` and ``rollback`` move the ``production`` alias and tag the
version (see :mod:`registry.promotion`). Tables go to stdout, logs to stderr, and errors
end in one ``error: ...`` line with exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cli import ArgumentParser, UserError, cli
from registry.store import DEFAULT_MODEL_NAME, PRODUCTION

DEFAULT_CLEAN = "data/clean"
# auto: the model's kind's metric (registry.kinds.default_metric): test/accuracy for the
# classifiers, test/ndcg_at_10 for the ranker.
DEFAULT_METRIC = "auto"
METRIC_HELP = (
    "(default auto: test/accuracy, or test/ndcg_at_10 for marketplace-ranker; test/accuracy "
    "and the older spelling test_accuracy are the same metric)"
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m registry",
        description="Inspect and promote versions of a registered model.",
    )
    parser.add_argument(
        "--tracking-uri",
        help="tracking/registry URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model name")
        return sub

    listing = command("list", "versions with their key metrics; who holds production")
    listing.add_argument(
        "--metric", default=DEFAULT_METRIC, help=f"first metric column {METRIC_HELP}"
    )

    show = command("show", "one version: run, params, metrics, tags, aliases")
    show.add_argument(
        "version",
        nargs="?",
        default=PRODUCTION,
        help="number, alias or latest (default production)",
    )

    compare = command("compare", "two versions side by side")
    compare.add_argument("first", help="number, alias or latest")
    compare.add_argument("second", help="number, alias or latest")

    promote = command("promote", "move the production alias to a version")
    promote.add_argument(
        "--version", default="best", help="number, alias, latest or best (default best)"
    )
    promote.add_argument(
        "--metric", default=DEFAULT_METRIC, help=f"metric for best and for the rule {METRIC_HELP}"
    )
    promote.add_argument(
        "--force", action="store_true", help="skip the metric rule (never the smoke check)"
    )
    _decision_arguments(promote)

    rollback = command("rollback", "give production back to previous-production")
    rollback.add_argument("--metric", default=DEFAULT_METRIC, help="metric recorded in the tags")
    _decision_arguments(rollback)
    _quantize_arguments(command("quantize", "add the int8 export to a version, behind its gate"))
    return parser


def _quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="version number")
    parser.add_argument(
        "--clean",
        type=Path,
        default=Path(DEFAULT_CLEAN),
        help="cleaned data: training photos calibrate, the test split gates (default data/clean)",
    )
    parser.add_argument(
        "--calibration-images", type=int, default=300, help="training photos that calibrate"
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="least top-1 agreement with fp32 on the test split (default 0.99)",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="most test accuracy the int8 export may lose (default 0.01: one point)",
    )


def _decision_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why, recorded on the version")
    parser.add_argument("--by", default="", help="who decides (default: the OS user)")
    parser.add_argument(
        "--clean",
        type=Path,
        default=Path(DEFAULT_CLEAN),
        help="cleaned data whose test images feed the smoke check (default data/clean; "
        "the model's input example when absent)",
    )
    parser.add_argument(
        "--legacy-stage",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also move the deprecated Production stage (default: only if a version is in it)",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command (``run`` is the process entry point: 0, or 2 after one ``error:``
    line)."""
    args = get_args_parser().parse_args(argv)
    try:
        run_command(args)
    except Exception as exc:
        if type(exc).__name__ != "MlflowException":
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
        raise UserError(f"the registry refused the request: {first}") from None


def run_command(args: argparse.Namespace) -> None:
    from registry import promotion, store, tables

    client = store.connect(args.tracking_uri)
    name = args.model_name
    if args.command == "list":
        print(tables.versions_table(client, name, promotion.resolve_metric(name, args.metric)))
    elif args.command == "show":
        print(tables.version_report(client, name, args.version))
    elif args.command == "compare":
        print(tables.comparison(client, name, args.first, args.second))
    elif args.command == "promote":
        options = promotion.decision_options(args)
        decision = promotion.promote(name, args.version, force=args.force, client=client, **options)
        print(decision.summary())
    elif args.command == "rollback":
        decision = promotion.rollback(name, client=client, **promotion.decision_options(args))
        print(decision.summary())
    elif args.command == "quantize":
        print(_quantize(client, args))


def _quantize(client, args: argparse.Namespace) -> str:
    """Run ``quantize``; its one-line verdict."""
    from registry.quantize import quantize_version

    if not 0.0 <= args.min_agreement <= 1.0 or not 0.0 <= args.max_accuracy_drop <= 1.0:
        raise UserError("--min-agreement and --max-accuracy-drop are fractions between 0 and 1")
    if args.calibration_images < 1:
        raise UserError("--calibration-images must be at least 1")
    if not args.clean.is_dir():
        raise UserError(f"no clean data folder {args.clean}: pass --clean with the cleaned data")
    report = quantize_version(
        client,
        args.model_name,
        args.version,
        args.clean,
        calibration_images=args.calibration_images,
        min_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop,
    )
    return f"version {args.version} of {args.model_name}: {report.note()}"


run = cli(main)

if __name__ == "__main__":
    run()
