"""Benchmark: what the photo + text model gains when its head learns from honest photos.

Runs the ``train_combined`` step (in this process, ``--register false``) over one store
and one image version, once per ``--head-data`` way and seed: ``train`` (the head fits on
the train photos, whose embeddings the image model was fitted to) and ``val`` (the
default: it fits on validation photos, a share of their listings held back to stop on),
and ``val`` with the train photos added at ``--train-weights``. Every run reports on the
same test photos: the combined model, the image model alone and the text alone; and the
image model alone on the photos the head fitted on (how far those were from new photos),
the head's fit time and its best epoch.

    .venv/bin/python bench/combined_head.py --tracking-uri sqlite:////tmp/d/mlflow.db \\
        --clean /tmp/d/clean --image-model-uri models:/marketplace-classifier/1

Writes bench/results/combined_head.json and prints the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "combined_head.json"
sys.path.insert(0, str(REPO))

from cli import ArgumentParser, UserError, cli  # noqa: E402

KEYS = {
    "combined": "test/accuracy",
    "text_alone": "test_text_only/accuracy",
    "image_alone": "test_image_only/accuracy",
    "image_alone_on_head_fit_photos": "head_fit_image_only/accuracy",
    "head_fit_seconds": "head_fit_seconds",
    "best_epoch": "best_epoch",
}


def run_once(args: argparse.Namespace, way: list[str], seed: int) -> dict[str, float]:
    """One ``train_combined`` run; its figures (``KEYS``) from the run's metrics."""
    import mlflow

    from steps import train_combined

    argv = ["--clean", str(args.clean), "--image-model-uri", args.image_model_uri]
    argv += ["--register", "false", "--seed", str(seed), *way]
    outcome = train_combined.train_combined(train_combined.get_args_parser().parse_args(argv))
    metrics = mlflow.MlflowClient().get_run(outcome.run_id).data.metrics
    figures = {name: metrics[key] for name, key in KEYS.items() if key in metrics}
    figures["gain_over_text"] = figures["combined"] - figures["text_alone"]
    return {"run_id": outcome.run_id, **figures}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over the seeds (and the spread of the combined accuracy)."""
    names = [k for k in runs[0] if k != "run_id"]
    means = {name: round(statistics.fmean(r[name] for r in runs), 4) for name in names}
    combined = [r["combined"] for r in runs]
    means["combined_min"], means["combined_max"] = min(combined), max(combined)
    return means


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python bench/combined_head.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    parser.add_argument("--clean", type=Path, default=REPO / "data" / "clean")
    parser.add_argument("--image-model-uri", default="models:/marketplace-classifier@production")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-weights", type=float, nargs="*", default=[0.1])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.clean / "images.parquet").is_file():
        raise UserError(f"{args.clean} holds no clean data: pass the --clean of a store's run")
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "bench-combined-head")
    load_before = round(os.getloadavg()[0], 2)
    ways = {"train": ["--head-data", "train"], "val": ["--head-data", "val"]}
    for weight in args.train_weights:
        ways[f"val+train@{weight:g}"] = ["--head-data", "val", "--train-weight", str(weight)]
    runs = {name: [run_once(args, way, seed) for seed in args.seeds] for name, way in ways.items()}
    result = {
        "figures": {name: summary(found) for name, found in runs.items()},
        "runs": runs,
        "seeds": args.seeds,
        "tracking_uri": args.tracking_uri,
        "image_model_uri": args.image_model_uri,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["figures"], indent=2))


run = cli(main)

if __name__ == "__main__":
    run()
