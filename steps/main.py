"""main: the whole pipeline, each step its own MLflow run under this one.

Order: ``ingest`` (when ``--source`` is given) or ``demo_data`` (when the raw folder has no
export yet, or holds one demo_data wrote; never over an ingested export or any other real
one) -> ``clean_tabular`` -> ``clean_images`` -> ``baselines`` -> ``train`` ->
``index`` (the search index of the version this pipeline trained) -> ``train_text`` ->
``train_combined`` (over the image version this pipeline trained) -> ``promote``, once per
kind (the image version, so a promoted version always has its index; then the text and
the combined versions), each through the same rules -> ``rank`` (the learned ranker, over
the index of the image version in production and the text version in production, both
pinned, so a change of either retrains it) -> ``promote`` of the ranker (by
``test/ndcg_at_10`` and the blend gate). Only a version trained by this
pipeline run is proposed: a skipped training proposes nothing (production stays where a
person or an earlier rule put it), and the promote step is told it is a proposal, so a
version once rolled back, refused or replaced by a person is never put back by ``main``.

A step is skipped when a finished run of it exists with the same key and outputs that are
still as that run left them. The key covers the step's effective parameters (MLproject's
defaults for those this pipeline does not pass), its inputs (every file's name, size, mtime
and SHA-256: content decides, mtimes can lie), the code (every file of the project's
packages, :data:`CODE_FOLDERS`, and MLproject, conda.yaml, pyproject.toml) and the
installed versions of the project's dependencies. What a skipped step made is checked too:
its output files, the version a training step registered, and an index step's index (still
the one its version names, with its files); anything gone runs the step again. Relative
paths are resolved against the project folder, where MLflow runs every step, whatever
folder ``main`` was started from. Each step's run is tagged with its key
(``pipeline.cache_key``) and nested under this run in the MLflow UI. This run is tagged
``pipeline.role = main`` and logs which run each step used (``pipeline_runs.json``) and how
long each step took (``pipeline_seconds.json``): ``python -m steps.step_times`` prints them.

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
import platform
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clean_data import TABLE_FILES, image_folder
from cli import UserError
from registry.kinds import LISTING_MODEL_NAME, RANKER_MODEL_NAME, TEXT_MODEL_NAME
from steps import runtime
from steps.runtime import (
    cli,
    file_sha256,
    log_params,
    non_negative_int,
    positive_int,
    start_run,
    str_to_bool,
    tracking_uri,
)
from steps.step_times import PIPELINE_ROLE, PIPELINE_TAG, RUNS_ARTIFACT, SECONDS_ARTIFACT
from steps.training.config import AUTO, PRECISIONS

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("steps", "registry", "marketplace_models", "search", "clean_data", "cli")
# Beside the code, what decides a step's output: its command and defaults, its environment.
PROJECT_FILES = ("MLproject", "conda.yaml", "pyproject.toml")
CACHE_KEY_TAG = "pipeline.cache_key"
OUTPUT_DIGEST_TAG = "pipeline.output_digest"
PARENT_RUN_TAG = "mlflow.parentRunId"
# `mlflow run --env-manager conda|virtualenv|uv` tags its run with the manager; local sets none.
PROJECT_ENV_TAG = "mlflow.project.env"
ENV_MANAGERS = ("local", "conda", "virtualenv", "uv")


@dataclass
class Step:
    """One entry point to run: its parameters, the paths it reads and the paths it writes,
    and the registered model it makes (``registers``), checked when the step is skipped."""

    entry_point: str
    parameters: dict[str, str]
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    cacheable: bool = True
    registers: str | None = None


def project_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as the steps see it: MLflow runs each step in the project folder, so a
    relative path is relative to :data:`PROJECT_ROOT`, whatever folder main started in."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


_DIGESTS: dict[tuple, str] = {}


def content_digest(path: Path, stat: os.stat_result) -> str:
    """The SHA-256 of ``path``, computed once per state of the file in this process (the
    ctime and inode change on every write, whatever the mtime says)."""
    state = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if state not in _DIGESTS:
        _DIGESTS[state] = file_sha256(path)
    return _DIGESTS[state]


def fingerprint(paths: Iterable[Path]) -> str:
    """A digest of every file under ``paths``: relative name, size, mtime and content.

    The content's SHA-256 decides (a file rewritten with its old size and mtime counts as
    changed); a touched file counts as changed too. Missing paths count as absent, so a
    deleted output changes the fingerprint. Relative paths are the project folder's.
    """
    digest = hashlib.sha256()
    for root in paths:
        root = project_path(root)
        digest.update(f"<{root}>".encode())
        if root.is_file():
            stat = root.stat()
            digest.update(
                f"{stat.st_size}:{stat.st_mtime_ns}:{content_digest(root, stat)}".encode()
            )
            continue
        if not root.is_dir():
            digest.update(b"missing")
            continue
        entries = []
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                stat = path.stat()
                entries.append(
                    f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}:"
                    f"{content_digest(path, stat)}"
                )
        for entry in sorted(entries):
            digest.update(entry.encode())
    return digest.hexdigest()


def code_files() -> list[Path]:
    """The files whose content decides what the steps do: everything in
    :data:`CODE_FOLDERS` (compiled caches aside) and :data:`PROJECT_FILES`."""
    files = [PROJECT_ROOT / name for name in PROJECT_FILES if (PROJECT_ROOT / name).is_file()]
    for folder in CODE_FOLDERS:
        files += [
            path
            for path in (PROJECT_ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        ]
    return sorted(files)


def dependency_names() -> list[str]:
    """The distributions pyproject.toml names for running the project: its ``dependencies``
    and every extra but ``dev`` (the steps run with ``train``'s torch, for one)."""
    import tomllib

    try:
        project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, ValueError):
        return []
    specs = list(project.get("dependencies", []))
    for extra, extra_specs in project.get("optional-dependencies", {}).items():
        if extra != "dev":
            specs += extra_specs
    names = {re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0] for spec in specs}
    return sorted(names - {project.get("name", "")})


def installed_versions() -> dict[str, str]:
    """Python's version and each dependency's installed version (``absent`` if none)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in dependency_names():
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def code_digest() -> str:
    """A digest of the code the steps run and the environment they run in: a change to any
    file of :func:`code_files` or to an installed dependency's version reruns the steps."""
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    digest.update(json.dumps(installed_versions(), sort_keys=True).encode())
    return digest.hexdigest()


def mlproject_defaults(entry_point: str) -> dict[str, str]:
    """The defaults MLproject gives ``entry_point``'s parameters, as ``mlflow run`` passes
    them (text); empty when the entry point is not there."""
    import yaml

    project = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    parameters = (project.get("entry_points", {}).get(entry_point) or {}).get("parameters", {})
    return {
        name: str(spec["default"])
        for name, spec in parameters.items()
        if isinstance(spec, dict) and spec.get("default") is not None
    }


def effective_parameters(step: Step) -> dict[str, str]:
    """What the step runs with: MLproject's defaults, overridden by the step's parameters."""
    return {
        **mlproject_defaults(step.entry_point),
        **{k: str(v) for k, v in step.parameters.items()},
    }


def cache_key(step: Step, code: str) -> str:
    payload = {
        "entry_point": step.entry_point,
        "parameters": effective_parameters(step),
        "inputs": fingerprint(step.inputs),
        "code": code,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_cached_run(client, experiment_id: str, step: Step, key: str):
    """The latest finished run of ``step`` with ``key`` whose outputs are unchanged and
    still there (:func:`made_still_there`), or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    outputs = fingerprint(step.outputs)
    for run in runs:
        if run.data.tags.get(OUTPUT_DIGEST_TAG) != outputs:
            continue
        missing = made_still_there(client, step, run)
        if missing:
            log.info("not skipping %s: %s", step.entry_point, missing)
            continue
        return run
    return None


def made_still_there(client, step: Step, run) -> str:
    """What of the registry entries ``run`` made is gone ('' when nothing): the version a
    training step registered, or the index an index step built or reused."""
    run_id = run.info.run_id
    if step.registers and registered_version(client, step.registers, run_id) is None:
        return f"the version of {step.registers} that run {run_id} registered is gone"
    if step.entry_point == "index":
        return index_gone(client, step, run)
    return ""


def index_gone(client, step: Step, run) -> str:
    """'' when the version ``step`` indexes still exists and names the index ``run`` built
    or reused, whose files are still there; else what is wrong."""
    from mlflow.exceptions import MlflowException

    from search.index import ARTIFACT_PATH, INDEX_RUN_TAG

    index_run = run.data.tags.get("search_index.reused_run") or run.info.run_id
    name, _, version = step.parameters["model_uri"].removeprefix("models:/").rpartition("/")
    try:
        tags = client.get_model_version(name, version).tags or {}
        files = client.list_artifacts(index_run, ARTIFACT_PATH)
    except MlflowException as exc:
        return f"cannot check the index of {name} version {version} ({exc})"
    if tags.get(INDEX_RUN_TAG) != index_run:
        return f"{name} version {version} no longer names index run {index_run}"
    if not files:
        return f"the files of index run {index_run} are gone"
    return ""


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
        raise UserError(f"step {step.entry_point} failed ({exc}); see its message above") from None
    run_id = submitted.run_id
    client.set_tag(run_id, PARENT_RUN_TAG, parent_run_id)
    client.set_tag(run_id, CACHE_KEY_TAG, key)
    client.set_tag(run_id, OUTPUT_DIGEST_TAG, fingerprint(step.outputs))
    return run_id


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps to run, in order, with their parameters, inputs and outputs (the paths as
    the steps see them: :func:`project_path`)."""
    raw, clean = project_path(args.raw), project_path(args.clean)
    images = image_folder(clean, args.size)
    tables = [clean / name for name in TABLE_FILES]
    raw_param, clean_param = str(Path(args.raw)), str(Path(args.clean))
    steps: list[Step] = []
    if args.source:
        steps.append(
            Step(
                "ingest", {"source": args.source, "out": raw_param}, outputs=[raw], cacheable=False
            )
        )
    elif wants_demo_data(raw):
        steps.append(
            Step(
                "demo_data",
                {"out": raw_param, "products": str(args.products), "seed": str(args.seed)},
                outputs=[raw],
            )
        )
    steps += [
        Step(
            "clean_tabular",
            {"raw": raw_param, "out": clean_param, "seed": str(args.seed)},
            inputs=[raw / "Products.csv", raw / "Images.csv", raw / "images"],
            outputs=tables,
        ),
        Step(
            "clean_images",
            {"raw": raw_param, "out": clean_param, "size": str(args.size)},
            inputs=[raw / "images"],
            outputs=[images],
        ),
    ]
    if args.baselines:
        steps.append(
            Step(
                "baselines",
                {"clean": clean_param, "image_size": str(args.size), "seed": str(args.seed)},
                inputs=[*tables, images],
            )
        )
    steps.append(
        Step(
            "train",
            {
                "clean": clean_param,
                "epochs": str(args.epochs),
                "arch": args.arch,
                "weights": args.weights,
                "image_size": str(args.image_size),
                "clean_size": str(args.size),
                "batch_size": str(args.batch_size),
                "lr": str(args.lr),
                "trainable_layers": str(args.trainable_layers),
                "precision": args.precision,
                "seed": str(args.seed),
                "model_name": args.model_name,
            },
            inputs=[*tables, images],
            registers=args.model_name,
        )
    )
    return steps


def index_step(args: argparse.Namespace, version: str) -> Step:
    """The search index of ``version``, over the clean data training read."""
    clean = project_path(args.clean)
    return Step(
        "index",
        {
            "model_uri": f"models:/{args.model_name}/{version}",
            "model_name": args.model_name,
            "clean": str(Path(args.clean)),
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
    clean = project_path(args.clean)
    return Step(
        "train_text",
        {
            "clean": str(Path(args.clean)),
            "text_encoder": args.text_encoder,
            "seed": str(args.seed),
            "model_name": TEXT_MODEL_NAME,
        },
        inputs=[clean / name for name in TABLE_FILES],
        registers=TEXT_MODEL_NAME,
    )


def combined_step(args: argparse.Namespace, image_version: str) -> Step:
    """The photo + text classifier over ``image_version`` (the one this pipeline trained)."""
    clean = project_path(args.clean)
    return Step(
        "train_combined",
        {
            "clean": str(Path(args.clean)),
            "image_model_uri": f"models:/{args.model_name}/{image_version}",
            "image_model_name": args.model_name,
            "clean_size": str(args.size),
            "text_encoder": args.text_encoder,
            "seed": str(args.seed),
            "model_name": LISTING_MODEL_NAME,
        },
        inputs=[*(clean / name for name in TABLE_FILES), image_folder(clean, args.size)],
        registers=LISTING_MODEL_NAME,
    )


def rank_step(client, args: argparse.Namespace) -> Step | None:
    """The learned ranker over the production image version's index and the production
    text version (pinned); None, with a warning, when no image version with an index is in
    production."""
    from search.index import INDEX_RUN_TAG

    image = _production_version(client, args.model_name)
    if image is None or not (image.tags or {}).get(INDEX_RUN_TAG):
        log.warning(
            "no version of %s with a search index holds production: the ranker is not trained",
            args.model_name,
        )
        return None
    text = _production_version(client, TEXT_MODEL_NAME)
    clean = project_path(args.clean)
    return Step(
        "rank",
        {
            "clean": str(Path(args.clean)),
            "image_model_uri": f"models:/{args.model_name}/{image.version}",
            "image_model_name": args.model_name,
            "text_model_uri": "none"
            if text is None
            else f"models:/{TEXT_MODEL_NAME}/{text.version}",
            "text_model_name": TEXT_MODEL_NAME,
            "seed": str(args.seed),
            "model_name": RANKER_MODEL_NAME,
        },
        inputs=[clean / name for name in TABLE_FILES],
        registers=RANKER_MODEL_NAME,
    )


def _production_version(client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, "production")
    except MlflowException:
        return None


def wants_demo_data(raw: Path) -> bool:
    """True when ``raw`` has no export yet, or holds one demo_data wrote (so demo_data may
    refresh it). An ingested export, or any export demo_data did not write, is never
    replaced: main reads it as it is (a message says so) or, when the ingest is unfinished,
    stops."""
    from steps.raw_export import DEMO_MARKER, INGEST_MARKER

    if (raw / INGEST_MARKER).exists():
        if not (raw / "Products.csv").exists():
            raise UserError(
                f"{raw} holds an unfinished ingest (no Products.csv): run ingest again, with "
                "--source; main never writes a synthetic export over an ingested folder"
            )
        log.info("%s holds an ingested export: using it (no demo_data over it)", raw)
        return False
    if not (raw / "Products.csv").exists():
        return True
    return (raw / DEMO_MARKER).exists()


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
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=AUTO, help="train's autocast dtype"
    )
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
        mlflow.set_tag(PIPELINE_TAG, PIPELINE_ROLE)  # steps.step_times finds this run by it
        run_ids: dict[str, str] = {}
        seconds: dict[str, float] = {}

        def timed(step: Step) -> None:
            began = time.perf_counter()
            run_ids[step.entry_point] = run_step(step, parent, experiment, code, env_manager)
            seconds[step.entry_point] = round(time.perf_counter() - began, 3)

        for step in plan(args):
            timed(step)
        version = registered_version(client, args.model_name, run_ids["train"])
        if version is not None:
            timed(index_step(args, version))
        timed(text_step(args))
        trained = {
            args.model_name: version,
            TEXT_MODEL_NAME: registered_version(client, TEXT_MODEL_NAME, run_ids["train_text"]),
        }
        if version is not None:
            timed(combined_step(args, version))
            trained[LISTING_MODEL_NAME] = registered_version(
                client, LISTING_MODEL_NAME, run_ids["train_combined"]
            )
        trained_by = {
            args.model_name: run_ids["train"],
            TEXT_MODEL_NAME: run_ids["train_text"],
            LISTING_MODEL_NAME: run_ids.get("train_combined"),
        }
        context = (parent, experiment, code, env_manager)
        propose_trained(client, args, trained, trained_by, context)
        ranker = rank_step(client, args)
        if ranker is not None:
            timed(ranker)
            version = registered_version(client, RANKER_MODEL_NAME, run_ids["rank"])
            propose_trained(
                client,
                args,
                {RANKER_MODEL_NAME: version},
                {RANKER_MODEL_NAME: run_ids["rank"]},
                context,
            )
        mlflow.log_dict(run_ids, RUNS_ARTIFACT)
        mlflow.log_dict(seconds, SECONDS_ARTIFACT)  # read by steps.step_times


def propose_trained(
    client,
    args: argparse.Namespace,
    trained: dict[str, str | None],
    trained_by: dict[str, str | None],
    context: tuple[str, str, str, str],
) -> None:
    """Propose each version this pipeline run trained for promotion (see the module
    docstring); ``context`` is (parent run, experiment, code digest, env manager)."""
    parent = context[0]
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
            promote_trained(client, model_name, trained_version, args, *context)


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
    except UserError:
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
