"""The ``rank`` step: the learned ranker fitted on validation queries, measured on test ones,
logged, registered, and promoted only past the blend gate.

One tiny store per module (``demo_clean``: production image version with its index,
production TF-IDF text version) and one rank run over it; tests that change the registry
work on a copy of its database (the artifacts are shared, read-only).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from cli import UserError
from marketplace_models.ranker import log_ranker
from registry.kinds import INPUT_TAG
from registry.promotion import PromotionRefused, promote, rollback
from registry.smoke import SmokeCheckError, check_version
from search.ranking import FEATURES
from steps import rank as rank_step
from tests.helpers.ranking import RANKER_NAME, make_ranking_store, rank_args

ROOT = Path(__file__).resolve().parents[2]
CURVES = ("train/ndcg_at_10", "train/ndcg_at_5", "val/ndcg_at_10", "val/ndcg_at_5")
TEST_METRICS = (
    "test/ndcg_at_10",
    "test/ndcg_at_5",
    "test/precision_at_10",
    "test/blend_ndcg_at_10",
    "test/blend_precision_at_10",
    "test/text_ndcg_at_10",
    "test/photo_ndcg_at_10",
    "test/ndcg_at_10_text_queries",
    "test/ndcg_at_10_photo_queries",
)


@pytest.fixture(scope="module")
def ranked(demo_clean: Path, tmp_path_factory: pytest.TempPathFactory):
    """A store with the production versions and one rank run: (folder, uri, summary)."""
    folder = tmp_path_factory.mktemp("rank-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
        for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            patch.setenv(variable, "")
            patch.delenv(variable)
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment("tests", artifact_location=str(folder / "artifacts"))
        mlflow.tracking.fluent._active_experiment_id = None
        store = make_ranking_store(demo_clean)
        summary = rank_step.main(rank_args(demo_clean))
    return folder, store, summary


@pytest.fixture
def store(ranked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    """A private copy of the ranked store's database, as the current tracking store."""
    folder, _, _ = ranked
    shutil.copy2(folder / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    mlflow.set_tracking_uri(uri)
    mlflow.tracking.fluent._active_experiment_id = None
    yield mlflow.MlflowClient(tracking_uri=uri)
    while mlflow.active_run():
        mlflow.end_run()


def test_rank_logs_curves_test_figures_importances_inputs_and_a_ranking_version(
    ranked, store: mlflow.MlflowClient
) -> None:
    _, built, summary = ranked
    run = store.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    for curve in CURVES:  # one point per boosting round
        history = store.get_metric_history(run.info.run_id, curve)
        assert len(history) >= summary["best_iteration"], curve
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert all(0.0 <= m.value <= 1.0 for m in history)
    metrics = run.data.metrics
    for name in TEST_METRICS:
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["test/queries"] > 0 and metrics["fit_queries"] > 0
    assert metrics["early_stop_queries"] > 0
    artifacts = {a.path for a in store.list_artifacts(run.info.run_id)}
    assert {"feature_importance.png", "feature_importance.json"} <= artifacts
    importance = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feature_importance.json")
    assert set(importance) == set(FEATURES)
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"fit", "early_stop", "test"}
    assert run.data.params["candidates"] == "100" and run.data.tags[INPUT_TAG] == "ranking"
    [version] = store.search_model_versions(f"name = '{RANKER_NAME}'")
    assert version.tags[INPUT_TAG] == "ranking"
    assert version.tags["image_model"] == f"models:/marketplace-classifier/{built.image_version}"
    assert version.tags["search_index_run"] == built.index_run
    assert "Blend gate: test NDCG@10" in version.description
    model = mlflow.pyfunc.load_model(f"models:/{RANKER_NAME}/{version.version}")
    assert tuple(model.unwrap_python_model().features) == FEATURES


def _args(clean: Path, *extra: str):
    return rank_step.get_args_parser().parse_args(rank_args(clean, *extra))


def test_queries_never_fit_on_test_listings_and_leave_their_own_listing_out(
    ranked, store: mlflow.MlflowClient, demo_clean: Path, tmp_path: Path
) -> None:
    args = _args(demo_clean)
    clean = rank_step.load_clean_listings(demo_clean)
    sources = rank_step.load_sources(args, clean, tmp_path / "cache")
    queries = rank_step.query_table(clean, sources.catalogue, args)
    split_of = clean.set_index("product_id")["split"]
    fitted = queries[queries["part"].isin(["fit", "early_stop"])]
    assert set(fitted["product_id"].map(split_of)) == {"val"}, "fitted on validation only"
    assert set(queries.loc[queries["part"] == "test", "product_id"].map(split_of)) == {"test"}
    assert not set(fitted["product_id"]) & set(queries.loc[queries.part == "test", "product_id"])
    fit = set(queries.loc[queries.part == "fit", "product_id"])
    assert not fit & set(queries.loc[queries.part == "early_stop", "product_id"]), "by listing"
    assert set(queries["mode"]) == {"text", "photo+text"}
    group = rank_step.build_group(sources, queries, args.candidates)
    assert len(group.candidates) == len(group.features) == len(group.grades)
    own = group.candidates["query_id"].str.split(":").str[0]
    assert not (own == group.candidates["product_id"]).any(), "a query's own listing is left out"
    with_train = rank_step.query_table(
        clean, sources.catalogue, _args(demo_clean, "--train-queries", "true")
    )
    assert "train" in set(with_train.loc[with_train.part == "fit", "split"])
    assert set(with_train.loc[with_train.part == "test", "split"]) == {"test"}


def _ranker_version(client, metrics: dict[str, float], features=FEATURES) -> str:
    """A ranker version (the fixture's booster) whose run logged ``metrics``."""
    from registry.register import register_classifier

    [first] = client.search_model_versions(f"name = '{RANKER_NAME}' and version_number = 1")
    booster = mlflow.pyfunc.load_model(first.source).unwrap_python_model().booster
    example = pd.DataFrame(np.linspace(0, 1, 5 * len(FEATURES)).reshape(5, -1), columns=FEATURES)
    example.columns = list(features)
    with mlflow.start_run():
        mlflow.log_metrics(metrics)
        info = log_ranker(booster, features, example)
    return register_classifier(
        info.model_uri, model_name=RANKER_NAME, tags={INPUT_TAG: "ranking"}
    ).version


def test_the_blend_gate_refuses_a_ranker_below_the_blend_and_promotes_one_at_least_as_good(
    store: mlflow.MlflowClient,
) -> None:
    worse = _ranker_version(store, {"test/ndcg_at_10": 0.50, "test/blend_ndcg_at_10": 0.60})
    with pytest.raises(PromotionRefused, match=r"below the hand blend's test/blend_ndcg_at_10"):
        promote(RANKER_NAME, worse, client=store, reason="try")
    refused = store.get_model_version(RANKER_NAME, worse)
    assert refused.description.startswith("Refused: version")
    assert "(the blend gate)" in refused.description
    assert "promotion.refused" in refused.tags

    good = _ranker_version(store, {"test/ndcg_at_10": 0.66, "test/blend_ndcg_at_10": 0.60})
    decision = promote(RANKER_NAME, good, client=store)  # the metric: test/ndcg_at_10
    assert decision.metric == "test/ndcg_at_10" and decision.action == "promote"
    promoted = store.get_model_version(RANKER_NAME, good)
    assert "production" in promoted.aliases
    assert "blend gate passed: test/ndcg_at_10 0.6600 >= test/blend_ndcg_at_10 0.6000" in (
        promoted.description
    )
    forced = promote(RANKER_NAME, worse, client=store, force=True, reason="hotfix")
    assert forced.gate == "blend gate skipped (forced)"
    back = rollback(RANKER_NAME, client=store, reason="the blend was better")
    assert back.version == int(good)


def test_the_smoke_check_refuses_a_ranker_whose_features_differ(
    store: mlflow.MlflowClient,
) -> None:
    renamed = (*FEATURES[:-1], "seller_rating")
    version = _ranker_version(
        store, {"test/ndcg_at_10": 0.9, "test/blend_ndcg_at_10": 0.6}, renamed
    )
    with pytest.raises(SmokeCheckError, match="takes the features .*seller_rating"):
        check_version(store, RANKER_NAME, version)
    passed = check_version(store, RANKER_NAME, "1")
    assert passed.kind == "ranking" and passed.images > 0
    assert "candidates from the model's input example" in passed.summary()


def test_registry_lists_the_ranker_by_its_metric(store: mlflow.MlflowClient, capsys) -> None:
    from registry.__main__ import main as registry

    registry(["list", "--model-name", RANKER_NAME])
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header[:4] == ["version", "aliases", "stage", "test/ndcg_at_10"]
    registry(["show", "--model-name", RANKER_NAME, "1"])
    assert re.search(r"^\s+input\s+ranking$", capsys.readouterr().out, re.M)


def test_rank_says_what_to_run_without_an_index_or_clean_data(
    tracking: str, demo_clean: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="no cleaned listings in .*clean_tabular"):
        rank_step.main(rank_args(tmp_path / "nothing"))
    with pytest.raises(UserError, match=r"production image model's index: run `mlflow run \. -e"):
        rank_step.main(rank_args(demo_clean))
    from tests.helpers.demo import register_tiny_version

    version = register_tiny_version(demo_clean)
    uri = f"models:/marketplace-classifier/{version}"
    with pytest.raises(UserError, match="has no search index: run index first: `mlflow run"):
        rank_step.main(rank_args(demo_clean, "--image-model-uri", uri))


@pytest.mark.slow
def test_mlflow_run_rank_trains_and_registers(ranked, store, demo_clean: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID",)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "rank"]
    argv += ["--env-manager", "local", "--experiment-name", "tests"]
    for key, value in {"clean": demo_clean, "n_estimators": 20, "min_child_samples": 5}.items():
        argv += ["-P", f"{key}={value}"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    versions = store.search_model_versions(f"name = '{RANKER_NAME}'")
    newest = max(versions, key=lambda v: int(v.version))
    assert newest.tags[INPUT_TAG] == "ranking" and int(newest.version) == 2
    run = store.get_run(newest.run_id)
    assert run.data.tags["mlflow.project.entryPoint"] == "rank"
    assert math.isfinite(run.data.metrics["test/ndcg_at_10"])
