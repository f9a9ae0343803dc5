"""learning_path: the image classifiers as the seed built them, side by side on one test split.

The seed's path: sklearn baselines on the photos' pixels, then a small CNN trained from
scratch (``arch=simplecnn``), then a ResNet from random weights and, where they could be
had, from ImageNet's. For each step of the path the newest finished run on the same
cleaned data (its ``data_digest`` tag: the same ``images.parquet``, so the same test split)
with its test accuracy, macro-F1 and training time: the baselines' fit time, the deep
models' time in their epochs (``epoch_seconds`` summed; evaluation and export left out).

The data is that of the production image version (else of the newest training run).
Reads: the tracking store (MLFLOW_TRACKING_URI, default ``sqlite:///mlflow.db``). Writes:
a markdown table to stdout; ``make results`` prints it after the baselines.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from clean_data import DATA_DIGEST_TAG
from cli import UserError
from registry.kinds import MODEL_NAME
from registry.store import PRODUCTION, connect
from registry.versions import alias_holder, metric_value
from steps import runtime

BASELINES_RUN = "baselines"
TRAIN_RUNS = "train %"  # train's run names: "train resnet18 e20 48px" (steps.train.run_name)


@dataclass(frozen=True)
class Step:
    """One row of the path: a model, how it started, its test figures and training time."""

    model: str
    start: str
    accuracy: float | None
    macro_f1: float | None
    seconds: float | None
    run_id: str

    def row(self) -> str:
        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        return (
            f"| {self.model} | {self.start} | {fmt(self.accuracy, '.3f')} | "
            f"{fmt(self.macro_f1, '.3f')} | {fmt(self.seconds, '.0f')} | `{self.run_id[:8]}` |"
        )


def starting_point(weights_used: str) -> str:
    """How a deep model started, from its ``weights_used`` param."""
    if weights_used.startswith("imagenet"):
        return "ImageNet weights"
    if weights_used.startswith("file:"):
        return f"weights {weights_used.removeprefix('file:')}"
    return "random weights (from scratch)"


def training_runs(client, experiment_ids: list[str], digest: str | None = None, **search):
    """Finished ``train`` runs, newest first; only those on ``digest``'s data when given."""
    on_data = f" AND tags.{DATA_DIGEST_TAG} = '{digest}'" if digest else ""
    return client.search_runs(
        experiment_ids,
        f"attributes.status = 'FINISHED' AND tags.mlflow.runName LIKE '{TRAIN_RUNS}'{on_data}",
        order_by=["attributes.start_time DESC"],
        **search,
    )


def the_data(client, experiment_ids: list[str]) -> str:
    """The ``data_digest`` the path is shown on: the production image version's run's, else
    the newest training run's."""
    holder = alias_holder(client, MODEL_NAME, PRODUCTION)
    if holder is not None and holder.tags.get(DATA_DIGEST_TAG):
        return holder.tags[DATA_DIGEST_TAG]
    for run in training_runs(client, experiment_ids, max_results=50):
        if run.data.tags.get(DATA_DIGEST_TAG):
            return run.data.tags[DATA_DIGEST_TAG]
    raise UserError(
        "no finished training run in the store: run `make demo` or `mlflow run . -e train`"
    )


def deep_models(client, experiment_ids: list[str], digest: str) -> list[Step]:
    """The newest finished training run of each architecture and starting point."""
    newest: dict[tuple[str, str], Step] = {}
    for run in training_runs(client, experiment_ids, digest):
        params, metrics = run.data.params, run.data.metrics
        key = (params.get("arch", "?"), starting_point(params.get("weights_used", "none")))
        accuracy = metric_value(metrics, "test/accuracy")
        if key in newest or accuracy is None:
            continue
        epochs = client.get_metric_history(run.info.run_id, "epoch_seconds")
        newest[key] = Step(
            model=key[0],
            start=key[1],
            accuracy=accuracy,
            macro_f1=metric_value(metrics, "test/macro_f1"),
            seconds=sum(m.value for m in epochs) if epochs else None,
            run_id=run.info.run_id,
        )
    order = {"simplecnn": 0}
    return sorted(newest.values(), key=lambda s: (order.get(s.model, 1), s.model, s.start))


def baselines(client, experiment_ids: list[str], digest: str) -> list[Step]:
    """The image baselines of the newest finished baselines run on the same data."""
    runs = client.search_runs(
        experiment_ids,
        f"attributes.status = 'FINISHED' AND tags.mlflow.runName = '{BASELINES_RUN}' "
        f"AND tags.{DATA_DIGEST_TAG} = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return []
    children = client.search_runs(
        experiment_ids,
        f"tags.mlflow.parentRunId = '{runs[0].info.run_id}' AND tags.task = 'image'",
    )
    steps = []
    for child in children:
        info, metrics = child.info, child.data.metrics
        kind = child.data.tags.get("model", "?")
        accuracy = metric_value(metrics, "test/accuracy")
        if accuracy is None:
            continue
        seconds = (info.end_time - info.start_time) / 1000 if info.end_time else None
        steps.append(
            Step(
                model=f"sklearn {kind}",
                start="majority class" if kind == "dummy" else "fitted on image features",
                accuracy=accuracy,
                macro_f1=metric_value(metrics, "test/macro_f1"),
                seconds=seconds,
                run_id=info.run_id,
            )
        )
    return sorted(steps, key=lambda s: s.model)


def report(client) -> str:
    """The path as a markdown table (baselines first, then the deep models)."""
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    digest = the_data(client, experiment_ids)
    rows = baselines(client, experiment_ids, digest) + deep_models(client, experiment_ids, digest)
    lines = [
        f"**The learning path** (test split of the cleaned data `{digest}`)\n",
        "| model | start | test accuracy | macro-F1 | training seconds | run |",
        "|---|---|---|---|---|---|",
        *(step.row() for step in rows),
    ]
    if not any(step.model.startswith("sklearn") for step in rows):
        lines.append("\nNo baselines run on this data: `mlflow run . -e baselines` adds them.")
    if not any(step.model == "simplecnn" for step in rows):
        lines.append("\nNo simple CNN on this data: `mlflow run . -e train -P arch=simplecnn`.")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    return runtime.ArgumentParser(
        prog="python -m steps.learning_path", description=__doc__.split("\n")[0]
    )


def main(argv: Sequence[str] | None = None) -> str:
    get_args_parser().parse_args(argv)
    table = report(connect())
    print(table)
    return table


run = runtime.cli(main)

if __name__ == "__main__":
    run()
