"""main: the whole pipeline, each step its own MLflow run under this one.

Order: ``ingest`` (when ``--source`` is given) or ``demo_data`` (when the raw folder has no
export yet) -> ``clean_tabular`` -> ``clean_images`` -> ``baselines`` -> ``train`` ->
``index`` (the search index of the version this pipeline trained) -> ``train_text`` ->
``train_combined`` (over the image version this pipeline trained) -> ``promote``, once per
kind (the image version, so a promoted version always has its index; then the text and
the combined versions), each through the same rules. Only a version trained by this
pipeline run is proposed: a skipped training proposes nothing (production stays where a
person or an earlier rule put it), and the promote step is told it is a proposal, so a
version once rolled back, refused or replaced by a person is never put back by ``main``.

A step is skipped when a finished run of it exists with the same parameters, the same
inputs (file names, sizes and modification times), the same code, and outputs that are
still as that run left them. Each step's run is tagged with that key
(``pipeline.cache_key``) and nested under this run in the MLflow UI.

Each step runs with the environment manager this pipeline was given itself
(``mlflow run . -e main`` with conda builds ``conda.yaml``'s environment for every step;
``--env-manager local`` runs them all in the current one).

Reads and writes what the chained steps read and write.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from registry.clean_data import TABLE_FILES, image_folder
from registry.kinds import LISTING_MODEL_NAME, TEXT_MODEL_NAME
from steps import runtime
from steps.runtime import (
    StepError,
    cli,
    log_params,
    non_negative_int,
    positive_int,
    start_run,
    str_to_bool,
    tracking_uri,
)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("steps", "registry")
CACHE_KEY_TAG = "pipeline.cache_key"
OUTPUT_DIGEST_TAG = "pipeline.output_digest"
PARENT_RUN_TAG = "mlflow.parentRunId"
# `mlflow run --env-manager conda|virtualenv|uv` tags its run with the manager; local sets none.
PROJECT_ENV_TAG = "mlflow.project.env"
ENV_MANAGERS = ("local", "conda", "virtualenv", "uv")


@dataclass
class Step:
    """One entry point to run: its parameters, the paths it reads and the paths it writes."""

    entry_point: str
    parameters: dict[str, str]
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    cacheable: bool = True


def fingerprint(paths: Iterable[Path]) -> str:
    """A digest of every file under ``paths``: relative name, size and mtime (not contents).

    Missing paths count as absent, so a deleted output changes the fingerprint.
    """
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        digest.update(f"<{root}>".encode())
        if root.is_file():
            stat = root.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            continue
        if not root.is_dir():
            digest.update(b"missing")
            continue
        entries = []
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                stat = path.stat()
                entries.append(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}")
        for entry in sorted(entries):
            digest.update(entry.encode())
    return digest.hexdigest()


def code_digest() -> str:
    """A digest of the project's Python sources: a code change reruns the steps."""
    digest = hashlib.sha256()
    for folder in CODE_FOLDERS:
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(step: Step, code: str) -> str:
    payload = {
        "entry_point": step.entry_point,
        "parameters": step.parameters,
        "inputs": fingerprint(step.inputs),
        "code": code,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_cached_run(client, experiment_id: str, step: Step, key: str):
    """The latest finished run of ``step`` with ``key`` whose outputs are unchanged, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    outputs = fingerprint(step.outputs)
    for run in runs:
        if run.data.tags.get(OUTPUT_DIGEST_TAG) == outputs:
            return run
    return None


def env_manager_of(client, run_id: str) -> str:
    """The environment manager ``mlflow run`` started run ``run_id`` with (``local`` when it
    says none, as with ``--env-manager local`` or outside ``mlflow run``)."""
    manager = client.get_run(run_id).data.tags.get(PROJECT_ENV_TAG, "local")
    return manager if manager in ENV_MANAGERS else "local"


def run_step(
    step: Step, parent_run_id: str, experiment_id: str, code: str, env_manager: str = "local"
) -> str:
    """Run ``step`` as its own MLflow run (or reuse a cached one) with ``env_manager``; returns
    its run id."""
    import mlflow
    from mlflow.exceptions import ExecutionException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    key = cache_key(step, code)
    if step.cacheable:
        cached = find_cached_run(client, experiment_id, step, key)
        if cached is not None:
            log.info(
                "skipping %s: inputs and parameters unchanged since run %s",
                step.entry_point,
                cached.info.run_id,
            )
            return cached.info.run_id
    log.info("running %s %s", step.entry_point, step.parameters)
    try:
        submitted = mlflow.projects.run(
            str(PROJECT_ROOT),
            entry_point=step.entry_point,
            parameters=step.parameters,
            env_manager=env_manager,
            experiment_id=experiment_id,
            run_name=step.entry_point,
            synchronous=True,
        )
    except ExecutionException as exc:
        raise StepError(f"step {step.entry_point} failed ({exc}); see its message above") from None
    run_id = submitted.run_id
    client.set_tag(run_id, PARENT_RUN_TAG, parent_run_id)
    client.set_tag(run_id, CACHE_KEY_TAG, key)
    client.set_tag(run_id, OUTPUT_DIGEST_TAG, fingerprint(step.outputs))
    return run_id


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps to run, in order, with their parameters, inputs and outputs."""
    raw, clean = Path(args.raw), Path(args.clean)
    images = image_folder(clean, args.size)
    tables = [clean / name for name in TABLE_FILES]
    steps: list[Step] = []
    if args.source:
        steps.append(
            Step("ingest", {"source": args.source, "out": str(raw)}, outputs=[raw], cacheable=False)
        )
    elif not (raw / "Products.csv").exists() or _made_by_demo(raw):
        steps.append(
            Step(
                "demo_data",
                {"out": str(raw), "products": str(args.products), "seed": str(args.seed)},
                outputs=[raw],
            )
        )
    steps += [
        Step(
            "clean_tabular",
            {"raw": str(raw), "out": str(clean), "seed": str(args.seed)},
            inputs=[raw / "Products.csv", raw / "Images.csv", raw / "images"],
            outputs=tables,
        ),
        Step(
            "clean_images",
            {"raw": str(raw), "out": str(clean), "size": str(args.size)},
            inputs=[raw / "images"],
            outputs=[images],
        ),
    ]
    if args.baselines:
        steps.append(
            Step(
                "baselines",
                {"clean": str(clean), "image_size": str(args.size), "seed": str(args.seed)},
                inputs=[*tables, images],
            )
        )
    steps.append(
        Step(
            "train",
            {
                "clean": str(clean),
                "epochs": str(args.epochs),
                "arch": args.arch,
                "weights": args.weights,
                "image_size": str(args.image_size),
                "clean_size": str(args.size),
                "batch_size": str(args.batch_size),
                "lr": str(args.lr),
                "trainable_layers": str(args.trainable_layers),
                "seed": str(args.seed),
                "model_name": args.model_name,
            },
            inputs=[*tables, images],
        )
    )
    return steps


def index_step(args: argparse.Namespace, version: str) -> Step:
    """The search index of ``version``, over the clean data training read."""
    clean = Path(args.clean)
    return Step(
        "index",
        {
            "model_uri": f"models:/{args.model_name}/{version}",
            "model_name": args.model_name,
            "clean": str(clean),
            "clean_size": str(args.size),
            "kind": args.index_kind,
        },
        inputs=[
            clean / "images.parquet",
            clean / "products.parquet",
            clean / "categories.json",
            clean / "images" / str(args.size),
        ],
    )


def text_step(args: argparse.Namespace) -> Step:
    """The text classifier, over the clean tables."""
    clean = Path(args.clean)
    return Step(
        "train_text",
        {
            "clean": str(clean),
            "text_encoder": args.text_encoder,
            "seed": str(args.seed),
            "model_name": TEXT_MODEL_NAME,
        },
        inputs=[clean / name for name in TABLE_FILES],
    )


def combined_step(args: argparse.Namespace, image_version: str) -> Step:
    """The photo + text classifier over ``image_version`` (the one this pipeline trained)."""
    clean = Path(args.clean)
    return Step(
        "train_combined",
        {
            "clean": str(clean),
            "image_model_uri": f"models:/{args.model_name}/{image_version}",
            "image_model_name": args.model_name,
            "clean_size": str(args.size),
            "text_encoder": args.text_encoder,
            "seed": str(args.seed),
            "model_name": LISTING_MODEL_NAME,
        },
        inputs=[*(clean / name for name in TABLE_FILES), image_folder(clean, args.size)],
    )


def _made_by_demo(raw: Path) -> bool:
    """True when ``raw`` holds an export that demo_data wrote (so demo_data may refresh it)."""
    from steps.demo_data import MARKER

    return (raw / MARKER).exists()


def registered_version(client, model_name: str, run_id: str) -> str | None:
    """The version of ``model_name`` that the training run ``run_id`` registered."""
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if not versions:
        return None
    return max(versions, key=lambda v: int(v.version)).version


def ran_here(client, run_id: str, parent_run_id: str) -> bool:
    """True when step run ``run_id`` ran under pipeline run ``parent_run_id`` (a skipped
    step's cached run belongs to an earlier pipeline run)."""
    return client.get_run(run_id).data.tags.get(PARENT_RUN_TAG) == parent_run_id


def _holds_production(client, model_name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, "production").version == version
    except MlflowException:
        return False


def pipeline_run_name(args: argparse.Namespace) -> str:
    """What the runs table shows for the pipeline: ``pipeline resnet18 e20 48px``."""
    return f"pipeline {args.arch} e{args.epochs} {args.image_size}px"


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.main", description="Run the whole pipeline, skipping unchanged steps."
    )
    parser.add_argument("--raw", default="data/raw", help="raw export folder")
    parser.add_argument("--clean", default="data/clean", help="clean data folder")
    parser.add_argument(
        "--source",
        type=runtime.optional_text,
        default="",
        help="ingest from this folder or s3:// URI first (none: no ingest)",
    )
    parser.add_argument("--products", type=positive_int, default=2000, help="demo export size")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--size", type=positive_int, default=256, help="clean image size (px)")
    parser.add_argument("--epochs", type=positive_int, default=15)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--trainable-layers", default="1", help="0..5 or all")
    parser.add_argument("--model-name", default="marketplace-classifier")
    parser.add_argument(
        "--index-kind", default="auto", help="search index kind: auto, flat, hnsw or ivfpq"
    )
    parser.add_argument(
        "--text-encoder",
        default="none",
        help="text models' encoder: none (TF-IDF) or a Hugging Face model name or folder",
    )
    parser.add_argument("--baselines", type=str_to_bool, default=True, help="run the baselines")
    parser.add_argument(
        "--promote", type=str_to_bool, default=True, help="promote the trained version"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    import mlflow
    from mlflow.tracking import MlflowClient

    code = code_digest()
    with start_run(pipeline_run_name(args)) as run:
        log_params(vars(args))
        parent, experiment = run.info.run_id, run.info.experiment_id
        client = MlflowClient()
        env_manager = env_manager_of(client, parent)
        log.info("the steps run with --env-manager %s, as this pipeline does", env_manager)
        run_ids: dict[str, str] = {}
        for step in plan(args):
            run_ids[step.entry_point] = run_step(step, parent, experiment, code, env_manager)
        version = registered_version(client, args.model_name, run_ids["train"])
        if version is not None:
            index = index_step(args, version)
            run_ids["index"] = run_step(index, parent, experiment, code, env_manager)
        run_ids["train_text"] = run_step(text_step(args), parent, experiment, code, env_manager)
        trained = {
            args.model_name: version,
            TEXT_MODEL_NAME: registered_version(client, TEXT_MODEL_NAME, run_ids["train_text"]),
        }
        if version is not None:
            combined = combined_step(args, version)
            run_ids["train_combined"] = run_step(combined, parent, experiment, code, env_manager)
            trained[LISTING_MODEL_NAME] = registered_version(
                client, LISTING_MODEL_NAME, run_ids["train_combined"]
            )
        mlflow.log_dict(run_ids, "pipeline_runs.json")
        trained_by = {
            args.model_name: run_ids["train"],
            TEXT_MODEL_NAME: run_ids["train_text"],
            LISTING_MODEL_NAME: run_ids.get("train_combined"),
        }
        for model_name, trained_version in trained.items():
            if trained_version is None:
                log.warning("training registered no version of %s: nothing to promote", model_name)
            elif not ran_here(client, trained_by[model_name], parent):
                log.info(
                    "%s version %s comes from a skipped training: not proposed for promotion "
                    "(only a version this run trained is)",
                    model_name,
                    trained_version,
                )
            elif not args.promote:
                log.info(
                    "trained %s version %s (not promoted: --promote false)",
                    model_name,
                    trained_version,
                )
            else:
                promote_trained(
                    client, model_name, trained_version, args, parent, experiment, code, env_manager
                )


def promote_trained(
    client,
    model_name: str,
    version: str,
    args: argparse.Namespace,
    parent: str,
    experiment: str,
    code: str,
    env_manager: str,
) -> None:
    """Run the promote step for ``version`` of ``model_name`` (a proposal: see the module
    docstring) unless it holds production; a refusal is logged, never raised (production
    stays as it was)."""
    if _holds_production(client, model_name, version):
        log.info("%s version %s already holds the production alias", model_name, version)
        return
    promote = Step(
        "promote",
        {
            "model_name": model_name,
            "version": version,
            "clean": str(args.clean),
            "reason": f"trained by pipeline run {parent}",
            "proposal": "true",
        },
        cacheable=False,
    )
    try:
        run_step(promote, parent, experiment, code, env_manager)
    except StepError:
        log.warning(
            "version %s of %s was not promoted (see the reason above); production is unchanged",
            version,
            model_name,
        )
        return
    log.info(
        "done: %s version %s holds the production alias. Browse the runs: make ui (store %s)",
        model_name,
        version,
        tracking_uri(),
    )


run = cli(main)

if __name__ == "__main__":
    run()
