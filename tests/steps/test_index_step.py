"""The ``index`` step: a registered version's search index as one MLflow run.

A tiny classifier (resnet18 with random weights at 32 px, registered as a version in a
throwaway store) embeds the cleaned demo export (``demo_clean``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from search import index as search_index
from search import text as text_search
from search.index import SearchIndex, load_index_for_version
from steps import index as index_step
from tests.helpers.demo import DEMO_CLEAN_SIZE, register_tiny_version
from tests.helpers.mlflow_run import mlflow_run, project_env

NAME = "marketplace-classifier"
ROOT = Path(__file__).resolve().parents[2]


def args(clean: Path, *extra: str) -> list[str]:
    return ["--clean", str(clean), "--clean-size", str(DEMO_CLEAN_SIZE), *extra]


def index_runs(client) -> list:
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'index'")
    return sorted(runs, key=lambda r: r.info.start_time)


@pytest.mark.slow
def test_index_step_logs_the_index_tags_the_version_and_reuses_it(
    demo_clean: Path, tracking: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = register_tiny_version(demo_clean)
    client = mlflow.MlflowClient()

    run_id = index_step.main(args(demo_clean))  # model_uri empty: the newest version

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[search_index.MODEL_NAME_TAG] == NAME
    assert tags[search_index.MODEL_VERSION_TAG] == str(version)
    assert tags[search_index.MODEL_URI_TAG] == f"models:/{NAME}/{version}"
    assert tags["search_index.kind"] == "flat", "the demo catalogue is below auto's threshold"
    assert client.get_model_version(NAME, version).tags[search_index.INDEX_RUN_TAG] == run_id
    stored = {a.path for a in client.list_artifacts(run_id, search_index.ARTIFACT_PATH)}
    text = f"{search_index.ARTIFACT_PATH}/{text_search.TEXT_DIR}"
    assert stored == {f"{search_index.ARTIFACT_PATH}/{name}" for name in search_index.FILES} | {
        text
    }
    assert {a.path for a in client.list_artifacts(run_id, text)} == {
        f"{text}/{name}" for name in text_search.FILES
    }, "the text search, in the same run"
    for way in ("text", "photo", "both"):
        assert 0 <= run.data.metrics[f"{way}_ndcg_at_10"] <= 1
        assert 0 <= run.data.metrics[f"{way}_precision_at_10"] <= 1

    images = pd.read_parquet(demo_clean / "images.parquet")
    metrics = run.data.metrics
    assert metrics["vectors"] == len(images) and metrics["dim"] == 512
    assert metrics["products"] == images["product_id"].nunique()
    assert metrics["bytes_per_vector"] >= 512 * 4
    assert metrics["build_seconds"] >= 0 and metrics["images_per_second"] > 0
    test_photos = int((images["split"] == "test").sum())
    assert metrics["eval_queries"] == test_photos
    assert metrics["eval_vectors"] == len(images) - test_photos
    for k in (1, 5, 10):
        assert 0.0 <= metrics[f"precision_at_{k}"] <= 1.0
    assert 0.0 < metrics["majority_share"] < 1.0
    assert "recall_at_10" not in metrics, "exact search needs no recall"
    assert "index of models:/marketplace-classifier/1: run" in capsys.readouterr().out

    # What the service does: the version's index, from the tracking store alone.
    index = load_index_for_version(client, NAME, version, tmp_path / "cache")
    assert (len(index), index.kind, index.model_version) == (len(images), "flat", int(version))
    assert index.categories == json.loads((demo_clean / "categories.json").read_text())
    photo = images.iloc[0]
    raw = (demo_clean / "images" / str(DEMO_CLEAN_SIZE) / f"{photo.image_id}.jpg").read_bytes()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").unwrap_python_model()
    [results] = index.search(model.embed([raw]), k=5)
    assert results[0].product_id == str(photo.product_id)
    assert results[0].score == pytest.approx(1.0, abs=1e-3)
    products = pd.read_parquet(demo_clean / "products.parquet").set_index("product_id")
    listing = products.loc[photo.product_id]
    assert results[0].name == listing["name"] and results[0].category == listing["root_category"]
    thumbnail = index.thumbnail_path(results[0].image_id)
    assert thumbnail is not None and max(Image.open(thumbnail).size) <= 128
    similar = index.similar_to_listing(str(photo.product_id), k=3)
    assert len(similar) == 3 and str(photo.product_id) not in {r.product_id for r in similar}

    # Unchanged version over unchanged data: reused, no second index.
    assert index_step.main(args(demo_clean)) == run_id
    runs = index_runs(client)
    assert runs[-1].data.tags[index_step.OUTCOME_TAG] == "reused"
    assert runs[-1].data.tags[index_step.REUSED_RUN_TAG] == run_id
    assert "reused" in capsys.readouterr().out
    assert index_step.main(args(demo_clean, "--model-uri", f"models:/{NAME}/{version}")) == run_id

    # Another kind is another index, with its recall against exact search.
    hnsw_run = index_step.main(args(demo_clean, "--kind", "hnsw"))
    assert hnsw_run != run_id
    hnsw = client.get_run(hnsw_run).data
    assert hnsw.tags["search_index.kind"] == "hnsw"
    assert 0.9 <= hnsw.metrics["recall_at_10"] <= 1.0
    assert client.get_model_version(NAME, version).tags[search_index.INDEX_RUN_TAG] == hnsw_run
    assert SearchIndex.load(search_index.download_index(hnsw_run, tmp_path / "c2")).kind == "hnsw"


@pytest.mark.slow
def test_changed_clean_data_or_force_rebuilds(
    demo_clean: Path, tracking: str, tmp_path: Path
) -> None:
    import shutil

    clean = tmp_path / "clean"
    shutil.copytree(demo_clean, clean)
    register_tiny_version(clean)
    first = index_step.main(args(clean))
    assert index_step.main(args(clean, "--force", "true")) != first
    photo = next((clean / "images" / str(DEMO_CLEAN_SIZE)).glob("*.jpg"))
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = index_step.main(args(clean))
    assert third not in (first,)
    assert index_step.main(args(clean)) == third


# ---------------------------------------------------------------------- bad input


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        index_step.run(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_missing_clean_folder_says_which_steps_to_run(tmp_path, tracking, capsys) -> None:
    message = one_line_error(capsys, ["--clean", str(tmp_path / "nothing")])
    assert "clean_tabular" in message and "clean_images" in message


def test_missing_image_size_names_the_sizes_there(demo_clean, tracking, capsys) -> None:
    message = one_line_error(capsys, ["--clean", str(demo_clean), "--clean-size", "999"])
    assert f"found: {DEMO_CLEAN_SIZE}" in message


def test_unknown_kind(demo_clean, tracking, capsys) -> None:
    message = one_line_error(capsys, [*args(demo_clean), "--kind", "annoy"])
    assert "--kind" in message and "hnsw" in message


def test_no_registered_model_says_to_train_one(demo_clean, tracking, capsys) -> None:
    mlflow.set_experiment("tests")  # creates the store: an empty registry, not a missing one
    message = one_line_error(capsys, args(demo_clean))
    assert "no registered model named 'marketplace-classifier'" in message


@pytest.mark.slow
def test_bad_model_uri_exits_2_with_one_line_in_a_real_process(demo_clean, tracking) -> None:
    register_tiny_version(demo_clean)
    for uri, expected in (
        (f"models:/{NAME}/7", "has no version 7"),
        ("/no/such/model", "no model at /no/such/model"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "steps.index", *args(demo_clean), "--model-uri", uri],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
        )
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_catalogue_is_every_split_with_root_categories(demo_clean) -> None:
    catalogue = index_step.load_catalogue(demo_clean, DEMO_CLEAN_SIZE)
    images = pd.read_parquet(demo_clean / "images.parquet")
    assert set(catalogue.images["split"]) == {"train", "val", "test"}
    assert len(catalogue.images) == len(images)
    assert set(catalogue.listings["product_id"]) == set(images["product_id"].astype(str))
    assert set(catalogue.listings["category"]) <= set(catalogue.categories)
    assert list(catalogue.listings.columns) == list(search_index.LISTING_COLUMNS)
    assert np.all([path.is_file() for path in catalogue.images["path"]])


@pytest.mark.slow
def test_index_entry_point_reads_whatever_single_size_was_cleaned(
    demo_clean: Path, tracking: str, tmp_path: Path
) -> None:
    """`mlflow run . -e index` with no clean_size (MLproject's `auto`) after cleaning at one
    size only (the demo data has just images/64/): it indexes from that size."""
    version = register_tiny_version(demo_clean)
    # MLFLOW_EXPERIMENT_ID, set by mlflow.set_experiment, is dropped: the name decides.
    env = project_env(MLFLOW_EXPERIMENT_NAME="tests")
    done = mlflow_run("index", {"clean": demo_clean}, cwd=tmp_path, env=env, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient()
    run = index_runs(client)[-1]
    assert run.data.params["clean_size"] == "auto"
    assert run.data.params["clean_size_used"] == str(DEMO_CLEAN_SIZE)
    assert client.get_model_version(NAME, version).tags[search_index.INDEX_RUN_TAG] == (
        run.info.run_id
    )
