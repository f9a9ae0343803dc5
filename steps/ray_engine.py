"""``engine=ray``: clean_images and index as Ray Data pipelines, on a local Ray or a cluster.

``RAY_ADDRESS`` unset starts a local Ray on this machine's cores; set, the steps join that
cluster (its nodes need this project installed, and reach the same folders or bucket).

* clean_images: the photos still to do (planned by ``steps.clean_images`` exactly as for the
  local path: content keys, the manifest, the completion marker) become a dataset of
  (id, source, target) rows; CPU tasks normalise them with the local path's worker function
  (``steps.clean_images.normalize_chunk``) and write the JPEGs to the output folder; the
  outcomes come back to ``steps.clean_images`` for the manifest, the counts and the report.
* index: a map step reads the photos (Ray Data fuses it into the actors' when it can),
  model actors (one per GPU where there are GPUs, else CPU actors) embed them, and the
  embeddings are written as parquet shards with their ``image_id`` under the run's work
  folder. The FAISS index is then built shard by shard
  (:func:`build_index_from_shards`): exact and HNSW add each shard as it is read; IVF-PQ is
  trained on a sample drawn from the shards, then filled shard by shard, so building needs
  the index's memory, not the catalogue's. The quality figures (as the local path's) read
  the embeddings back.

The MLflow run logs what the local path logs, plus ``engine`` and the cluster's resources.
Progress is shown as Ray Data shows it.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cli import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("local", "ray")
EMBEDDING_COLUMN = "embedding"
READ_BATCH = 64  # photos per read task
BLOCK_BATCHES = 4  # batches per input block: blocks spread over the workers, no shuffle


@dataclass(frozen=True)
class LocalIndexing:
    """What the Ray path of index shares with the local one (steps/index.py passes these)."""

    evaluate: Callable
    evaluate_text_search: Callable
    save_and_log: Callable


@contextmanager
def ray_session() -> Iterator[dict[str, float]]:
    """A connected Ray (local, or the cluster at RAY_ADDRESS); yields its resources."""
    try:
        import ray
    except ImportError:
        raise UserError("engine=ray needs Ray Data: pip install '.[scale]'") from None
    address = os.environ.get("RAY_ADDRESS") or None
    env_vars = {}
    if address is None:  # a cluster's nodes have the project installed; a local Ray, this checkout
        env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), _pythonpath()]))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            runtime_env={"env_vars": env_vars},
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield {key: float(value) for key, value in ray.cluster_resources().items()}
    finally:
        if started_here:
            ray.shutdown()


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


def blocks(frame: pd.DataFrame, rows: int) -> list[pd.DataFrame]:
    """``frame`` cut into blocks of ``rows`` (Ray Data's unit of parallel work), in order."""
    return [frame.iloc[start : start + rows] for start in range(0, max(len(frame), 1), rows)]


def cluster_params(resources: dict[str, float]) -> dict[str, Any]:
    """What the run logs about the cluster: its CPUs, GPUs, nodes and where it is."""
    nodes = sum(1 for key in resources if key.startswith("node:") and "internal" not in key)
    return {
        "engine": "ray",
        "ray_address": os.environ.get("RAY_ADDRESS") or "local",
        "ray_cpus": int(resources.get("CPU", 0)),
        "ray_gpus": int(resources.get("GPU", 0)),
        "ray_nodes": nodes,
    }


# --------------------------------------------------------------------------- clean_images


def _normalize_batch(batch: pd.DataFrame, size: int, normalize_chunk: Callable) -> pd.DataFrame:
    """A Ray task: normalise a batch of photos with the local path's worker function."""
    jobs = list(zip(batch["image_id"], batch["source"], batch["target"], strict=True))
    outcomes = normalize_chunk(jobs, size)
    return pd.DataFrame(
        {
            "image_id": [image_id for image_id, _ in outcomes],
            "error": [error or "" for _, error in outcomes],
        }
    )


def normalize_jobs(
    jobs: list[tuple[str, str, str]], size: int, normalize_chunk: Callable, chunk: int
) -> Iterator[tuple[str, str | None]]:
    """Normalise ``jobs`` (image id, source, target) in Ray tasks with the local path's
    worker function; yields (image_id, error or None) as they finish."""
    import ray.data

    if not jobs:
        return
    frame = pd.DataFrame(jobs, columns=["image_id", "source", "target"])
    dataset = ray.data.from_pandas(blocks(frame, BLOCK_BATCHES * chunk))
    outcomes = dataset.map_batches(
        _normalize_batch,
        fn_kwargs={"size": size, "normalize_chunk": normalize_chunk},
        batch_size=chunk,
        batch_format="pandas",
    )
    for batch in outcomes.iter_batches(batch_format="pandas", batch_size=None):
        for image_id, error in zip(batch["image_id"], batch["error"], strict=True):
            yield str(image_id), (error or None)


# --------------------------------------------------------------------------- index: embedding


def _read_batch(batch: pd.DataFrame) -> pd.DataFrame:
    """A Ray task: the photos' bytes."""
    return pd.DataFrame(
        {
            "image_id": batch["image_id"],
            "image": [Path(path).read_bytes() for path in batch["path"]],
        }
    )


class Embedder:
    """A Ray actor holding one copy of the model; embeds batches of photo bytes."""

    def __init__(self, load_uri: str) -> None:
        import mlflow

        self.model = mlflow.pyfunc.load_model(load_uri).unwrap_python_model()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        vectors = np.asarray(self.model.embed(list(batch["image"])), dtype=np.float32)
        return pd.DataFrame({"image_id": batch["image_id"], EMBEDDING_COLUMN: list(vectors)})


def embed_to_shards(
    images: pd.DataFrame, load_uri: str, shards: Path, batch_size: int, resources: dict
) -> list[Path]:
    """Embed every photo (``image_id``, ``path``) into parquet shards; their paths, sorted."""
    import ray.data

    gpus = int(resources.get("GPU", 0))
    actors = gpus or max(1, int(resources.get("CPU", 1)) // 2)
    frame = images[["image_id", "path"]].astype({"path": str})
    dataset = ray.data.from_pandas(blocks(frame, BLOCK_BATCHES * READ_BATCH))
    dataset = dataset.map_batches(_read_batch, batch_size=READ_BATCH, batch_format="pandas")
    dataset = dataset.map_batches(
        Embedder,
        fn_constructor_kwargs={"load_uri": load_uri},
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
    )
    try:
        dataset.write_parquet(str(shards))
    except Exception as exc:  # a task's or an actor's error, wrapped by Ray
        cause = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the Ray pipeline could not embed the photos with {load_uri} ({cause}): check "
            "that the cluster's nodes reach the tracking server and the clean images"
        ) from None
    return sorted(shards.glob("*.parquet"))


def iter_shards(shards: list[Path]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image ids, normalised float32 vectors) of each shard, one shard in memory at a time."""
    import pyarrow.parquet as pq

    from search import index as search_index

    for shard in shards:
        table = pq.read_table(shard)
        ids = np.asarray(table.column("image_id").to_pylist(), dtype=object)
        vectors = np.asarray(table.column(EMBEDDING_COLUMN).to_pylist(), dtype=np.float32)
        if len(ids):
            yield ids, search_index.normalize(vectors, copy=False)


# --------------------------------------------------------------------------- index: building


def shard_dim_and_count(shards: list[Path]) -> tuple[int, int]:
    import pyarrow.parquet as pq

    count = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
    for _, vectors in iter_shards(shards):
        return vectors.shape[1], count
    raise UserError("no photo was embedded: check the clean images and the model")


def training_sample(shards: list[Path], count: int, size: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``size`` vectors drawn across the shards."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(count, dtype=bool)
    keep[rng.choice(count, min(size, count), replace=False)] = True
    parts, start = [], 0
    for _, vectors in iter_shards(shards):
        parts.append(vectors[keep[start : start + len(vectors)]])
        start += len(vectors)
    return np.concatenate(parts)


def build_index_from_shards(shards: list[Path], kind: str, train_size: int = 50_000):
    """The FAISS index over the shards' vectors and the image ids in its row order.

    ``kind`` is concrete (``flat``, ``hnsw`` or ``ivfpq``): the index is made empty (IVF-PQ
    trained on a sample, with the local path's settings) and each shard is added in turn.
    """
    from search import index as search_index

    dim, count = shard_dim_and_count(shards)
    if kind == "ivfpq":  # trained on a sample, with the lists the whole catalogue wants
        sample = training_sample(shards, count, train_size)
        nlist = search_index.default_nlist(count)
        index = search_index.build_index(sample, "ivfpq", nlist=nlist, train_size=train_size)
        index.reset()  # keeps the training; filled below, shard by shard
    else:
        index = search_index.build_index(np.zeros((0, dim), dtype=np.float32), kind)
    order: list[np.ndarray] = []
    for ids, vectors in iter_shards(shards):
        index.add(vectors)
        order.append(ids)
    if kind == "ivfpq":
        index.make_direct_map()
    return index, np.concatenate(order)


def read_vectors(shards: list[Path]) -> np.ndarray:
    """Every embedding, in the index's row order (for the quality figures only)."""
    return np.concatenate([vectors for _, vectors in iter_shards(shards)])


def build_and_log(
    args: argparse.Namespace, model, catalogue, run_id: str, local: LocalIndexing
) -> dict[str, float]:
    """``steps.index.build_and_log`` with the embedding on Ray and the index built from shards."""
    import mlflow

    from search import index as search_index

    with ray_session() as resources, tempfile.TemporaryDirectory(prefix="index-ray-") as tmp:
        mlflow.log_params(cluster_params(resources))
        started = time.perf_counter()
        shards = embed_to_shards(
            catalogue.images, model.load_uri, Path(tmp) / "shards", args.batch_size, resources
        )
        embed_seconds = time.perf_counter() - started
        dim, count = shard_dim_and_count(shards)
        kind = search_index.resolve_kind(args.kind, count, dim)
        log.info("building a %s index of %d x %d from %d shards", kind, count, dim, len(shards))
        started = time.perf_counter()
        index, ids = build_index_from_shards(shards, kind)
        build_seconds = time.perf_counter() - started
        vectors = read_vectors(shards)
        mlflow.log_metric("embedding_shards", len(shards))
    by_id = catalogue.images.set_index("image_id")
    images = by_id.loc[list(ids)].reset_index()  # the index's row order
    ordered = type(catalogue)(
        images=images,
        listings=catalogue.listings,
        categories=catalogue.categories,
        folder=catalogue.folder,
        image_dir=catalogue.image_dir,
    )
    metrics: dict[str, float] = {
        "vectors": count,
        "products": int(images["product_id"].nunique()),
        "dim": dim,
        "build_seconds": build_seconds,
        "embed_seconds": embed_seconds,
        "images_per_second": count / max(embed_seconds, 1e-9),
    }
    metrics.update(local.evaluate(vectors, ordered, kind))
    metrics.update(local.evaluate_text_search(vectors, ordered))
    metrics.update(local.save_and_log(args, model, ordered, run_id, index, engine="ray"))
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
    mlflow.set_tag("search_index.kind", kind)
    return metrics
