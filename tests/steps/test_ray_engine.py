"""engine=ray (steps/ray_engine.py): clean_images and index on Ray Data give the local path's
results on the demo catalogue; the index is built from embedding shards.

The Ray tests start a local Ray (the machine's cores) through ``mlflow run`` and are few.
Tolerances: cleaned JPEGs are byte-identical (the same normalisation function writes them);
embeddings agree to 1e-5 (the same model, the same bytes, batched differently); the exact
index then answers every test photo with the same listings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from search import index as search_index
from steps import ray_engine
from tests.helpers.demo import DEMO_CLEAN_SIZE
from tests.helpers.mlflow_run import mlflow_run, project_env

EMBEDDING_ATOL = 1e-5
RUN_TIMEOUT_S = 900  # generous: a busy CI machine


def ray_step_env(tracking: str) -> dict[str, str]:
    """A local Ray (none inherited); the experiment is the one `mlflow run` names."""
    return project_env(tracking=tracking, drop=("RAY_ADDRESS", "MLFLOW_EXPERIMENT_NAME"))


def runs_named(prefix: str) -> list:
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in runs if run.info.run_name.startswith(prefix)]


@pytest.mark.slow
def test_clean_images_on_ray_writes_the_local_paths_files(
    demo_raw: Path, tracking: str, tmp_path: Path
) -> None:
    env = ray_step_env(tracking)
    for engine in ("local", "ray"):
        params = {"raw": demo_raw, "out": tmp_path / engine, "size": 32, "engine": engine}
        mlflow_run(
            "clean_images", params, cwd=tmp_path, env=env, experiment="tests", timeout=RUN_TIMEOUT_S
        )

    local, ray = (tmp_path / engine / "images" / "32" for engine in ("local", "ray"))
    names = sorted(p.name for p in local.iterdir())
    assert names and names == sorted(p.name for p in ray.iterdir())
    assert all((local / n).read_bytes() == (ray / n).read_bytes() for n in names)
    local_run, ray_run = runs_named("clean_images")
    assert ray_run.data.params["engine"] == "ray"
    assert int(ray_run.data.params["ray_cpus"]) >= 1
    for key in ("done", "failed", "skipped", "total"):
        assert ray_run.data.metrics[key] == local_run.data.metrics[key], key
    shared = set(local_run.data.params) - {"processes", "engine", "out"}
    assert shared and {k: ray_run.data.params[k] for k in shared} == {
        k: local_run.data.params[k] for k in shared
    }


def _load(run_id: str, folder: Path) -> search_index.SearchIndex:
    return search_index.SearchIndex.load(search_index.download_index(run_id, folder))


def _vectors(searcher: search_index.SearchIndex) -> pd.DataFrame:
    """The index's vectors by image id (an exact index stores them as given)."""
    vectors = searcher.index.reconstruct_n(0, searcher.index.ntotal)
    return pd.DataFrame(vectors, index=searcher._image_ids).sort_index()


@pytest.mark.slow
def test_index_on_ray_gives_the_local_paths_embeddings_and_answers(
    demo_clean: Path, tracking: str, tmp_path: Path
) -> None:
    from tests.helpers.demo import register_tiny_version

    version = register_tiny_version(demo_clean)
    common = {"clean": demo_clean, "clean_size": DEMO_CLEAN_SIZE, "kind": "flat", "force": "true"}
    model_uri = f"models:/marketplace-classifier/{version}"
    env = ray_step_env(tracking)
    for engine in ("local", "ray"):
        params = {"model_uri": model_uri, "engine": engine, **common}
        mlflow_run(
            "index", params, cwd=tmp_path, env=env, experiment="tests", timeout=RUN_TIMEOUT_S
        )

    local_run, ray_run = runs_named("index")
    assert ray_run.data.params["engine"] == "ray"
    assert ray_run.data.metrics["embedding_shards"] >= 1
    local, ray = (
        _load(local_run.info.run_id, tmp_path / "l"),
        _load(ray_run.info.run_id, tmp_path / "r"),
    )
    local_vectors, ray_vectors = _vectors(local), _vectors(ray)
    assert list(local_vectors.index) == list(ray_vectors.index), "the same photos"
    np.testing.assert_allclose(
        ray_vectors.to_numpy(), local_vectors.to_numpy(), atol=EMBEDDING_ATOL
    )
    queries = local_vectors.to_numpy()
    local_answers = [[r.product_id for r in hits] for hits in local.search(queries, k=5)]
    ray_answers = [[r.product_id for r in hits] for hits in ray.search(queries, k=5)]
    assert ray_answers == local_answers
    for metric in ("vectors", "products", "dim", "precision_at_1", "precision_at_10"):
        assert ray_run.data.metrics[metric] == pytest.approx(local_run.data.metrics[metric]), metric


# --------------------------------------------------------------------------- shards, no Ray


def _write_shards(folder: Path, vectors: np.ndarray, per_shard: int) -> list[Path]:
    folder.mkdir(parents=True)
    shards = []
    for number, start in enumerate(range(0, len(vectors), per_shard)):
        block = vectors[start : start + per_shard]
        frame = pd.DataFrame(
            {
                "image_id": [f"img{i}" for i in range(start, start + len(block))],
                ray_engine.EMBEDDING_COLUMN: list(block),
            }
        )
        path = folder / f"shard-{number:03d}.parquet"
        frame.to_parquet(path)
        shards.append(path)
    return shards


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(32, dim))
    return (centres[rng.integers(0, 32, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def test_an_exact_index_from_shards_is_the_one_built_from_all_vectors(tmp_path: Path) -> None:
    vectors = _clustered(1000, 16)
    shards = _write_shards(tmp_path / "shards", vectors, per_shard=128)

    index, ids = ray_engine.build_index_from_shards(shards, "flat")

    assert list(ids) == [f"img{i}" for i in range(len(vectors))]
    whole = search_index.build_index(vectors, "flat")
    queries = search_index.normalize(vectors[:50])
    assert (index.search(queries, 10)[1] == whole.search(queries, 10)[1]).all()


def test_ivfpq_from_shards_trains_on_a_sample_and_holds_every_vector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = _clustered(6000, 32)
    shards = _write_shards(tmp_path / "shards", vectors, per_shard=500)
    trained_on: list[int] = []
    original = search_index.build_index

    def spy(data, kind="auto", **kwargs):
        trained_on.append(len(data))
        return original(data, kind, **kwargs)

    monkeypatch.setattr(search_index, "build_index", spy)

    index, ids = ray_engine.build_index_from_shards(shards, "ivfpq", train_size=5000)

    assert trained_on == [5000], "trained on the sample, not the catalogue"
    assert index.ntotal == len(vectors) == len(ids)
    assert search_index.index_kind(index) == "ivfpq"
    assert index.nlist == search_index.default_nlist(len(vectors)), "lists for the catalogue"
    queries = search_index.normalize(vectors[:200])
    truth = original(vectors, "flat").search(queries, 10)[1]

    def recall(of) -> float:
        found = of.search(queries, 10)[1]
        return float(
            np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        )

    # As good as the local path's IVF-PQ trained on as many vectors (the codebooks' bits
    # follow the training points: at this sample size both have the same settings).
    local = original(vectors, "ivfpq", train_size=5000)
    assert recall(index) >= 0.8 * recall(local) > 0, (recall(index), recall(local))


def test_engine_ray_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if `.[scale]` were not installed
    with pytest.raises(UserError, match=r"pip install '\.\[scale\]'"), ray_engine.ray_session():
        pass


def test_cluster_params_name_the_engine_and_the_resources(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    resources = {"CPU": 8.0, "GPU": 2.0, "node:10.0.0.1": 1.0, "node:__internal_head__": 1.0}
    assert ray_engine.cluster_params(resources) == {
        "engine": "ray",
        "ray_address": "local",
        "ray_cpus": 8,
        "ray_gpus": 2,
        "ray_nodes": 1,
    }
