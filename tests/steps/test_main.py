"""The pipeline's skip-if-unchanged rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steps.main import CODE_FOLDERS, Step, cache_key, fingerprint
from tests.helpers.mlflow_run import NO_TRAINING, REPO, TINY_PIPELINE, mlflow_run, project_env


def _tree(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "Products.csv").write_text("a,b\n1,2\n")
    (root / "images" / "x.jpg").write_bytes(b"jpeg")
    return root


def test_fingerprint_changes_when_a_file_changes_appears_or_goes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "raw")
    before = fingerprint([root])
    assert fingerprint([root]) == before, "stable when nothing changed"
    (root / "images" / "y.jpg").write_bytes(b"jpeg")
    added = fingerprint([root])
    assert added != before
    (root / "images" / "y.jpg").unlink()
    assert fingerprint([root]) == before
    stat = (root / "Products.csv").stat()
    os.utime(root / "Products.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint([root]) != before, "a touched file counts as changed"


def test_missing_paths_have_their_own_fingerprint(tmp_path: Path) -> None:
    assert fingerprint([tmp_path / "nope"]) != fingerprint([tmp_path])


def test_cache_key_depends_on_parameters_inputs_and_code(tmp_path: Path) -> None:
    root = _tree(tmp_path / "raw")
    step = Step("clean_images", {"size": "64"}, inputs=[root])
    key = cache_key(step, code="v1")
    assert cache_key(Step("clean_images", {"size": "64"}, inputs=[root]), "v1") == key
    assert cache_key(Step("clean_images", {"size": "96"}, inputs=[root]), "v1") != key
    assert cache_key(step, code="v2") != key
    (root / "images" / "z.jpg").write_bytes(b"jpeg")
    assert cache_key(step, code="v1") != key


@pytest.mark.parametrize("manager", ["conda", "virtualenv", "uv", None])
def test_steps_run_with_the_env_manager_the_pipeline_was_given(
    tracking: str, monkeypatch: pytest.MonkeyPatch, manager: str | None
) -> None:
    import mlflow

    from steps import main as pipeline

    with mlflow.start_run() as run:
        if manager:  # what `mlflow run --env-manager <manager>` tags its run with
            mlflow.set_tag("mlflow.project.env", manager)
    client = mlflow.MlflowClient()
    expected = manager or "local"  # no tag: --env-manager local, or no `mlflow run` at all
    assert pipeline.env_manager_of(client, run.info.run_id) == expected

    class Submitted:
        run_id = run.info.run_id

    calls = []
    monkeypatch.setattr(mlflow.projects, "run", lambda *a, **kw: calls.append(kw) or Submitted)
    step = Step("clean_images", {"size": "8"}, cacheable=False)
    pipeline.run_step(step, run.info.run_id, run.info.experiment_id, "code", expected)
    assert calls[0]["env_manager"] == expected


@pytest.mark.slow
def test_main_runs_every_step_then_skips_them_all(tmp_path: Path, tracking: str) -> None:
    """`mlflow run . -e main` chains the steps, registers and promotes; a rerun skips them."""
    from mlflow.tracking import MlflowClient

    env = project_env(tracking=tracking, MLFLOW_EXPERIMENT_NAME="pipeline")
    params = {"raw": str(tmp_path / "raw"), "clean": str(tmp_path / "clean"), **TINY_PIPELINE}
    first = mlflow_run("main", params, cwd=tmp_path, env=env, check=False)
    assert first.returncode == 0, first.stderr[-3000:]

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("pipeline")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI: runs
    runs = client.search_runs([experiment.experiment_id])
    assert len({run.info.run_name for run in runs}) == len(runs), "the runs table tells them apart"
    production = client.get_model_version_by_alias("marketplace-classifier", "production")
    by_name = {run.info.run_name: run for run in runs}
    named = {
        "main": "pipeline resnet18 e1 32px",
        "demo_data": "demo_data",
        "clean_tabular": "clean_tabular",
        "clean_images": "clean_images 48px",
        "train": "train resnet18 e1 32px",
        "index": "index",
        "promote": f"promote v{production.version} -> production",
        "train_text": "train_text",
        "train_combined": "train_combined",
        "rank": "rank",
    }
    for step, name in named.items():
        assert by_name[name].data.tags["mlflow.project.entryPoint"] == step
    by_name = {step: by_name[name] for step, name in named.items()}
    for run in runs:  # no empty params, booleans spelt one way
        params = run.data.params
        assert "" not in params.values() and not {"True", "False"} & set(params.values()), params
    parent = by_name["main"].info.run_id
    for name in ("demo_data", "clean_tabular", "clean_images", "train", "index"):
        assert by_name[name].info.status == "FINISHED"
        assert by_name[name].data.tags["mlflow.parentRunId"] == parent
    assert production.run_id == by_name["train"].info.run_id
    assert by_name["promote"].data.tags["promotion.version"] == str(production.version)
    assert production.description.startswith("In production: test/accuracy")  # its status
    assert f"Reason: trained by pipeline run {parent}." in production.description
    for name, kind in [
        ("marketplace-text-classifier", "text"),
        ("marketplace-listing-classifier", "image+text"),
    ]:
        holder = client.get_model_version_by_alias(name, "production")
        assert holder.tags["input"] == kind, "every kind trained and promoted"
    combined = by_name["train_combined"]
    assert (
        combined.data.tags["image_model"] == f"models:/marketplace-classifier/{production.version}"
    )
    assert by_name["train_text"].data.tags["mlflow.parentRunId"] == parent
    index_run = by_name["index"]
    assert production.tags["search_index_run"] == index_run.info.run_id, "indexed, then promoted"
    assert index_run.data.tags["model_version"] == str(production.version)
    assert index_run.info.end_time <= by_name["promote"].info.start_time
    assert index_run.data.metrics["vectors"] > 0
    assert _step_statuses(tracking) == {
        **dict.fromkeys(["demo_data", "clean_tabular", "clean_images", "train"], "ran"),
        **dict.fromkeys(["index", "train_text", "train_combined", "rank", "promote"], "ran"),
    }
    rank = by_name["rank"]  # the ranker, over the production versions just promoted
    assert rank.data.tags["mlflow.parentRunId"] == parent
    assert (
        rank.data.params["image_model_uri"]
        == f"models:/marketplace-classifier/{production.version}"
    )
    assert rank.info.start_time >= by_name["promote"].info.end_time
    [ranker] = client.search_model_versions("name = 'marketplace-ranker'")
    assert ranker.tags["input"] == "ranking" and ranker.run_id == rank.info.run_id
    assert "Blend gate:" in ranker.description
    proposed = [r for r in runs if r.info.run_name.startswith("promote ranker")]
    assert len(proposed) == 1, "main proposes the ranker it trained (the gate decides)"

    second = mlflow_run("main", params, cwd=tmp_path, env=env, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("skipping") == 8, second.stderr[-3000:]
    assert set(_step_statuses(tracking).values()) == {"skipped"}, "the newest pipeline run"
    after = client.search_runs([experiment.experiment_id])
    assert len(after) == len(runs) + 1, "only a new main run"
    assert len(client.search_model_versions("name = 'marketplace-classifier'")) == 1
    for name in ("marketplace-text-classifier", "marketplace-listing-classifier"):
        assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert len(client.search_model_versions("name = 'marketplace-ranker'")) == 1


def _step_statuses(tracking: str) -> dict[str, str]:
    """step -> ran/skipped, as `python -m steps.step_times` prints them (each with a time);
    ``tracking`` is the store MLFLOW_TRACKING_URI names (the fixture sets it)."""
    import re

    from steps.step_times import main as step_times

    text = step_times(["--experiment", "pipeline"])
    rows = re.findall(r"^\| (\w+) \| \d+\.\d \| (ran|skipped) \|$", text, flags=re.M)
    return dict(rows)


def _pipeline_env(tracking: str) -> dict[str, str]:
    return project_env(tracking=tracking, MLFLOW_EXPERIMENT_NAME="pipeline")


def _ran(result) -> set[str]:
    """The steps a main run ran (not skipped), from its log."""
    import re

    return set(re.findall(r"__main__: running (\w+) ", result.stderr))


@pytest.mark.slow
def test_main_never_writes_demo_data_over_an_ingested_export(tmp_path: Path, tracking: str) -> None:
    """Demo first, then a real export ingested into the same folder: main trains on the real one."""
    from tests.helpers.servers import make_tiny_export

    env, raw = _pipeline_env(tracking), tmp_path / "raw"
    mlflow_run("demo_data", {"out": raw, "products": 10}, cwd=tmp_path, env=env)
    export = make_tiny_export(tmp_path / "export")
    mlflow_run("ingest", {"source": export, "out": raw}, cwd=tmp_path, env=env)

    params = {"raw": str(raw), "clean": str(tmp_path / "clean"), **NO_TRAINING}
    result = mlflow_run("main", params, cwd=tmp_path, env=env, check=False)

    assert (raw / "Products.csv").read_bytes() == (export / "Products.csv").read_bytes()
    assert "demo_data" not in _ran(result), result.stderr[-3000:]
    assert f"{raw} holds an ingested export" in result.stderr


@pytest.mark.slow
def test_a_changed_mlproject_default_reruns_the_steps(tmp_path: Path, tracking: str) -> None:
    """main leaves val_frac to MLproject: a new default there is a new clean_tabular run."""
    import shutil

    from mlflow.tracking import MlflowClient

    project = tmp_path / "project"
    for name in CODE_FOLDERS:
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("MLproject", "conda.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, project / name)
    env = _pipeline_env(tracking)
    params = {"raw": str(tmp_path / "raw"), "clean": str(tmp_path / "clean"), **NO_TRAINING}
    first = mlflow_run("main", params, cwd=tmp_path, env=env, project=project, check=False)
    assert {"demo_data", "clean_tabular", "clean_images"} <= _ran(first), first.stderr[-3000:]
    mlproject = project / "MLproject"
    text = mlproject.read_text()
    assert "val_frac: {type: float, default: 0.15}" in text
    mlproject.write_text(
        text.replace(
            "val_frac: {type: float, default: 0.15}", "val_frac: {type: float, default: 0.4}"
        )
    )

    second = mlflow_run("main", params, cwd=tmp_path, env=env, project=project, check=False)

    assert "clean_tabular" in _ran(second), second.stderr[-3000:]
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("pipeline").experiment_id
    [latest, *_] = client.search_runs(
        [experiment],
        "tags.`mlflow.project.entryPoint` = 'clean_tabular'",
        order_by=["attributes.start_time DESC"],
    )
    assert latest.data.params["val_frac"] == "0.4"


def test_the_code_digest_covers_project_files_and_installed_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib import metadata

    from steps import main as pipeline

    before = pipeline.code_digest()
    assert {"MLproject", "conda.yaml", "pyproject.toml"} <= {
        path.name for path in pipeline.code_files()
    }
    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "0.0.1" if name == "torch" else real(name)
    )
    assert pipeline.code_digest() != before, "another torch is another environment"


def test_mlproject_defaults_are_part_of_the_key() -> None:
    from steps import main as pipeline

    step = Step("clean_tabular", {"raw": "data/raw"})
    effective = pipeline.effective_parameters(step)
    assert effective["val_frac"] == "0.15" and effective["max_price"] == "100000"
    assert effective["raw"] == "data/raw"


@pytest.mark.slow
def test_main_started_from_another_folder_sees_what_changed(tmp_path: Path, tracking: str) -> None:
    """Relative paths are the project folder's, where MLflow runs each step."""
    import subprocess
    import sys

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    raw = os.path.relpath(tmp_path / "raw", REPO)  # relative to the project, not to elsewhere
    clean = os.path.relpath(tmp_path / "clean", REPO)
    argv = [sys.executable, "-m", "steps.main", "--raw", raw, "--clean", clean]
    for key, value in NO_TRAINING.items():
        argv += [f"--{key.replace('_', '-')}", value]

    def main_from_elsewhere():
        return subprocess.run(
            argv,
            cwd=elsewhere,
            env=_pipeline_env(tracking),
            capture_output=True,
            text=True,
            timeout=900,
        )

    first = main_from_elsewhere()
    assert {"clean_tabular", "clean_images"} <= _ran(first), first.stderr[-3000:]
    assert (tmp_path / "clean" / "images" / "48").is_dir()
    for image in (tmp_path / "clean" / "images" / "48").iterdir():
        image.unlink()
    (tmp_path / "clean" / "images" / "48").rmdir()

    second = main_from_elsewhere()

    assert "clean_images" in _ran(second), second.stderr[-3000:]
    assert "clean_tabular" not in _ran(second), "unchanged, so skipped"
    assert (tmp_path / "clean" / "images" / "48").is_dir()


@pytest.mark.slow
def test_a_skipped_train_whose_version_was_deleted_runs_again(
    tmp_path: Path, tracking: str
) -> None:
    from mlflow.tracking import MlflowClient

    env = _pipeline_env(tracking)
    params = {
        "raw": str(tmp_path / "raw"),
        "clean": str(tmp_path / "clean"),
        **TINY_PIPELINE,
        "promote": "false",
    }
    first = mlflow_run("main", params, cwd=tmp_path, env=env, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(tracking)
    [version] = client.search_model_versions("name = 'marketplace-classifier'")
    client.delete_model_version("marketplace-classifier", version.version)

    second = mlflow_run("main", params, cwd=tmp_path, env=env, check=False)

    assert second.returncode == 0, second.stderr[-3000:]
    assert {"train", "index"} <= _ran(second), second.stderr[-3000:]
    assert "clean_images" not in _ran(second)
    assert len(client.search_model_versions("name = 'marketplace-classifier'")) == 1
