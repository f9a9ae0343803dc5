"""Entry point ``index``: the search index of one model version, as one MLflow run.

Reads a model (``--model-uri``: any URI that ``registry.resolve.resolve_model`` accepts;
default the newest registered version of ``--model-name``) and the clean data in
``--clean``: ``products.parquet`` (name, price, location, category, url),
``images.parquet`` (image_id, product_id, root_category, split), ``categories.json`` and
the cleaned JPEGs in ``images/<clean_size>/``.

Embeds every catalogue photo with the model (``unwrap_python_model().embed``: the
penultimate layer, batched, with a progress bar), L2-normalises the embeddings and builds
a FAISS index (``--kind``: ``auto`` = exact up to
``search.index.AUTO_EXACT_MAX_FLOATS``, HNSW above; or ``flat``, ``hnsw``,
``ivfpq``). Writes, as artifacts of this run under ``search_index/`` (the layout is
``search/index.py``'s): the index, the id map, the listings' metadata and a JPEG
thumbnail of every photo, so that a service replica needs only the tracking server. Tags
the run with the model's name, version and URI, and the version with ``search_index_run``
(this run's id). Metrics: ``vectors``, ``products``, ``dim``, ``build_seconds``,
``index_bytes``, ``bytes_per_vector``, ``embed_seconds``, ``images_per_second``, and the
quality figures below.

Which photos: the served index holds every photo of every split (the catalogue is every
listing). The quality figures come from a second index of the same kind over the train and
validation photos only, queried by every test photo (whose listings are therefore not in
it): ``precision_at_1``, ``_5``, ``_10`` are the mean share of same-category listings
among a query's top 1, 5, 10 listings (one per listing, as the service answers), against
``majority_share``, the largest category's share of those listings (what always answering
that category would score); for an approximate kind, ``recall_at_10`` is the share of the
exact top 10 photos that the index returns for the same queries.

Reuse: a finished index run with the same model version, the same clean data (contents of
the tables, names, sizes and times of the JPEGs), the same settings and the same indexing
code is reused (``skipping index: ...``), and the version's tag names it; ``--force true``
rebuilds.

    mlflow run . -e index --env-manager local                        # the newest version
    mlflow run . -e index -P model_uri=models:/marketplace-classifier@production --env-manager local
    python -m steps.index --model-uri models:/marketplace-classifier/3 --kind hnsw
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clean_data import TABLE_FILES, choose_size
from cli import UserError
from registry.resolve import ResolvedModel, pinned, resolve_model
from registry.store import DEFAULT_MODEL_NAME, connect
from registry.versions import get_version
from search import index as search_index
from search.metrics import precision_at, recall_at
from steps import runtime
from steps.runtime import cli, log_params, positive_int, start_run, str_to_bool

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The code an index depends on: a change to any of these rebuilds instead of reusing.
INDEX_CODE = (
    "steps/index.py",
    "search/index.py",
    "marketplace_models/image.py",
    "marketplace_models/imaging.py",
    "search/text.py",
    "marketplace_models/text.py",
)
CACHE_KEY_TAG = "search_index.cache_key"
OUTCOME_TAG = "search_index.outcome"
REUSED_RUN_TAG = "search_index.reused_run"
PRECISION_KS = (1, 5, 10)
RECALL_K = 10
THUMBNAIL_QUALITY = 85
AUTO = "auto"
UNKNOWN_INPUT_SIZE = 10**6  # a model of no known input size reads the largest cleaned size


@dataclass(frozen=True)
class Catalogue:
    """The photos to index (one row each, with its file) and the listings they belong to."""

    images: pd.DataFrame  # image_id, product_id, category, split, path
    listings: pd.DataFrame  # search.index.LISTING_COLUMNS
    categories: list[str]
    folder: Path
    image_dir: Path


# ---------------------------------------------------------------------- inputs


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.index",
        description="Embed every catalogue photo with a model version and log its FAISS "
        "search index (index, id map, listings, thumbnails) as one MLflow run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-uri",
        type=runtime.optional_text,
        default="",
        help="the model to embed with: models:/<name>/<version>, models:/<name>@<alias>, "
        "runs:/..., a folder (none: the newest version of --model-name)",
    )
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="registered model")
    parser.add_argument("--clean", type=Path, default=Path("data/clean"), help="clean data")
    parser.add_argument(
        "--clean-size",
        type=runtime.auto_or_positive_int,
        default=AUTO,
        help="which images/<size>/ to read (auto: the smallest at least the model's input "
        "size, else the largest)",
    )
    parser.add_argument(
        "--kind", choices=search_index.KINDS, default="auto", help="FAISS index kind"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="photos per batch")
    parser.add_argument(
        "--thumbnail-size", type=positive_int, default=128, help="thumbnail side (px)"
    )
    parser.add_argument(
        "--force", type=str_to_bool, default=False, help="rebuild even when nothing changed"
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: embed in this process; ray: a Ray Data pipeline (steps/ray_engine.py), "
        "a local Ray or the cluster at RAY_ADDRESS",
    )
    return parser


def resolve(model_uri: str, model_name: str) -> ResolvedModel:
    """The model to embed with, pinned to a version when it is a registered one."""
    client = connect()
    if model_uri.strip():
        return resolve_model(model_uri, client)
    return pinned(f"models:/{model_name}/latest", get_version(client, model_name, "latest"))


def model_input_size(model: ResolvedModel) -> int:
    """The image size the model was trained at (its run's ``image_size``), so ``auto`` reads
    cleaned photos at least that large; unknown (no run), the largest folder is read."""
    from mlflow.exceptions import MlflowException

    if model.run_id is None:
        return UNKNOWN_INPUT_SIZE
    try:
        return int(float(connect().get_run(model.run_id).data.params["image_size"]))
    except (MlflowException, KeyError, ValueError):  # no such run or param
        return UNKNOWN_INPUT_SIZE


def require_tables(clean: Path) -> None:
    """:class:`UserError` saying which steps to run when the clean tables are not there."""
    if not all((Path(clean) / name).is_file() for name in TABLE_FILES):
        raise UserError(
            f"no cleaned data in {clean} ({', '.join(TABLE_FILES)}): run "
            "`mlflow run . -e clean_tabular --env-manager local` and `-e clean_images` "
            "first, or pass --clean with the folder they wrote"
        )


def load_catalogue(clean: Path, clean_size: int) -> Catalogue:
    """The photos and listings of the clean data; :class:`UserError` when it is missing."""
    clean = Path(clean)
    require_tables(clean)
    image_dir = clean / "images" / str(clean_size)
    if not image_dir.is_dir():
        folder = clean / "images"
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        raise UserError(
            f"no cleaned images in {image_dir}: run clean_images with --size {clean_size}, or "
            f"pass --clean-size with a size that exists (found: {', '.join(found) or 'none'})"
        )
    categories = json.loads((clean / "categories.json").read_text(encoding="utf-8"))
    images = pd.read_parquet(
        clean / "images.parquet", columns=["image_id", "product_id", "root_category", "split"]
    ).rename(columns={"root_category": "category"})
    products = pd.read_parquet(clean / "products.parquet")
    for frame in (images, products):
        frame["product_id"] = frame["product_id"].astype(str)
    images["image_id"] = images["image_id"].astype(str)
    images["path"] = [image_dir / f"{image_id}.jpg" for image_id in images["image_id"]]
    present = images["path"].map(Path.is_file)
    if not present.all():
        log.warning(
            "%d of %d photos have no cleaned JPEG in %s; indexing without them",
            int((~present).sum()),
            len(images),
            image_dir,
        )
    images = images[present & images["product_id"].isin(products["product_id"])]
    if images.empty:
        raise UserError(
            f"no photo of {clean / 'images.parquet'} has a cleaned JPEG in {image_dir}: "
            f"run clean_images with --size {clean_size}"
        )
    listings = products.rename(columns={"category": "category_path", "root_category": "category"})
    listings = listings[listings["product_id"].isin(images["product_id"])]
    listings = listings.reindex(columns=list(search_index.LISTING_COLUMNS))
    return Catalogue(
        images=images.reset_index(drop=True),
        listings=listings.reset_index(drop=True),
        categories=list(categories),
        folder=clean,
        image_dir=image_dir,
    )


# ---------------------------------------------------------------------- reuse


def data_digest(catalogue: Catalogue) -> str:
    """The clean tables' contents, and every indexed JPEG's name, size and time."""
    digest = hashlib.sha256()
    for name in ("products.parquet", "images.parquet", "categories.json"):
        digest.update(name.encode())
        digest.update((catalogue.folder / name).read_bytes())
    for path in catalogue.images["path"]:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def code_digest() -> str:
    digest = hashlib.sha256()
    for name in INDEX_CODE:
        digest.update(name.encode())
        digest.update((PROJECT_ROOT / name).read_bytes())
    return digest.hexdigest()


def cache_key(model: ResolvedModel, data: str, args: argparse.Namespace) -> str:
    """What an index depends on: the model version, the data, the settings, the code."""
    payload = {
        "model": model.load_uri,
        "model_run": model.run_id,
        "data": data,
        "kind": args.kind,
        "clean_size": args.clean_size,
        "thumbnail_size": args.thumbnail_size,
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_reusable_run(client, model: ResolvedModel, experiment_id: str, key: str) -> str | None:
    """A finished index run with ``key`` whose artifacts are there (the version's own first)."""
    candidates = []
    if model.name and model.version is not None:
        tagged = search_index.index_run_for_version(client, model.name, model.version)
        if tagged:
            candidates.append(tagged)
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    candidates += [run.info.run_id for run in runs]
    for run_id in candidates:
        try:
            run = client.get_run(run_id)
        except Exception:  # a deleted run the tag still names
            continue
        if run.info.status != "FINISHED" or run.data.tags.get(CACHE_KEY_TAG) != key:
            continue
        files = {
            Path(a.path).name for a in client.list_artifacts(run_id, search_index.ARTIFACT_PATH)
        }
        if set(search_index.FILES) <= files:
            return run_id
    return None


# ---------------------------------------------------------------------- work


def load_embedder(model: ResolvedModel):
    """The pyfunc's Python model, which has ``embed(images) -> (N, D)``."""
    import mlflow

    try:
        loaded = mlflow.pyfunc.load_model(model.load_uri)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise UserError(
            f"cannot load {model.uri} ({type(exc).__name__}: {first}): give a model URI "
            "that `python -m registry list` shows, e.g. models:/marketplace-classifier/1"
        ) from None
    python_model = loaded.unwrap_python_model()
    if not callable(getattr(python_model, "embed", None)):
        raise UserError(
            f"{model.uri} is not a marketplace classifier: its model has no embed() method"
        )
    return python_model


def embed_photos(embedder, paths: Sequence[Path], batch_size: int) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of the JPEG files, ``batch_size`` at a time."""
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(paths), unit="img", desc="index: embedding", disable=None) as bar:
        for start in range(0, len(paths), batch_size):
            batch = [path.read_bytes() for path in paths[start : start + batch_size]]
            try:
                parts.append(np.asarray(embedder.embed(batch), dtype=np.float32))
            except ValueError as exc:
                raise UserError(f"{exc} in {paths[start].parent}: re-run clean_images") from None
            bar.update(len(batch))
    return np.concatenate(parts)


def make_thumbnails(images: pd.DataFrame, out: Path, size: int) -> dict[str, Path]:
    """A ``size`` px JPEG of every photo in ``out``; image id -> file."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, Path]) -> tuple[str, Path]:
        image_id, source = item
        target = out / f"{image_id}.jpg"
        with Image.open(source) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            image.save(target, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        return image_id, target

    items = list(zip(images["image_id"], images["path"], strict=True))
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, items))


def evaluate(vectors: np.ndarray, catalogue: Catalogue, kind: str) -> dict[str, float]:
    """Precision of same-category listings for test photos against train + val (see top)."""
    images = catalogue.images
    served = images["split"].isin(["train", "val"]).to_numpy()
    test = (images["split"] == "test").to_numpy()
    if not served.any() or not test.any():
        log.warning("no train/val or no test photos: precision metrics left out")
        return {}
    index = search_index.build_index(vectors[served], kind)
    listings = catalogue.listings[
        catalogue.listings["product_id"].isin(images["product_id"][served])
    ]
    searcher = search_index.SearchIndex(
        index,
        images.loc[served, ["image_id", "product_id"]].reset_index(drop=True),
        listings,
        {"search": search_index.search_settings(index), "categories": catalogue.categories},
    )
    queries = vectors[test]
    precision = precision_at(searcher, queries, images.loc[test, "category"].tolist(), PRECISION_KS)
    metrics = {f"precision_at_{k}": value for k, value in precision.items()}
    shares = listings["category"].value_counts(normalize=True)
    metrics["majority_share"] = float(shares.iloc[0]) if len(shares) else float("nan")
    metrics["eval_queries"] = int(test.sum())
    metrics["eval_vectors"] = int(served.sum())
    if kind != "flat":
        exact = search_index.build_index(vectors[served], "flat")
        normalized = search_index.normalize(queries)
        _, truth = exact.search(normalized, RECALL_K)
        _, found = index.search(normalized, RECALL_K)
        metrics[f"recall_at_{RECALL_K}"] = recall_at(found, truth, RECALL_K)
    return metrics


def catalogue_texts(catalogue: Catalogue) -> pd.DataFrame:
    """The catalogue's listings with their descriptions (for the text search)."""
    products = pd.read_parquet(
        catalogue.folder / "products.parquet", columns=["product_id", "description"]
    )
    products["product_id"] = products["product_id"].astype(str)
    return catalogue.listings.merge(products, on="product_id", how="left")


def evaluate_text_search(vectors: np.ndarray, catalogue: Catalogue) -> dict[str, float]:
    """NDCG@10 and precision@10 of same-category listings for the test listings as queries
    (their own title), against the train + validation listings: by the text, by the photo
    (the listing's first photo), and by both (``search.text``; no category boost,
    which needs the text model)."""
    from search.metrics import EVAL_K, ndcg_at, precision_of
    from search.text import TextSearch

    images = catalogue.images
    served = images["split"].isin(["train", "val"]).to_numpy()
    listings = catalogue_texts(catalogue)
    split_of = images.drop_duplicates("product_id").set_index("product_id")["split"]
    listings = listings.assign(split=listings["product_id"].map(split_of))
    catalogue_listings = listings[listings["split"].isin(["train", "val"])].reset_index(drop=True)
    queries = listings[listings["split"] == "test"].reset_index(drop=True)
    if catalogue_listings.empty or queries.empty:
        return {}
    search = TextSearch.build(catalogue_listings)
    counts = catalogue_listings["category"].value_counts()
    served_vectors = vectors[served]
    served_products = images.loc[served, "product_id"].to_numpy()
    first_photo = {pid: row for row, pid in reversed(list(enumerate(images["product_id"])))}
    sums = {way: [0.0, 0.0] for way in ("text", "photo", "both")}
    for query in queries.itertuples(index=False):
        similarity = served_vectors @ vectors[first_photo[query.product_id]]  # (n_served,)
        best = pd.Series(similarity).groupby(served_products).max()
        photo = best.to_dict()
        ranked = {
            "text": search.rank(str(query.name), EVAL_K),
            "photo": search.rank("", EVAL_K, photo_scores=photo, photo_weight=1.0),
            "both": search.rank(str(query.name), EVAL_K, photo_scores=photo),
        }
        total = int(counts.get(query.category, 0))
        for way, results in ranked.items():
            hits = [search.category_of(pid) == query.category for pid, _ in results]
            sums[way][0] += ndcg_at(hits, EVAL_K, total)
            sums[way][1] += precision_of(hits, EVAL_K)
    metrics: dict[str, float] = {"text_eval_queries": len(queries)}
    for way, (ndcg, precision) in sums.items():
        metrics[f"{way}_ndcg_at_{EVAL_K}"] = ndcg / len(queries)
        metrics[f"{way}_precision_at_{EVAL_K}"] = precision / len(queries)
    return metrics


def build_and_log(
    args: argparse.Namespace, model: ResolvedModel, catalogue: Catalogue, run_id: str
) -> dict[str, float]:
    """Embed, build, evaluate, write and log the index; returns the metrics logged."""
    import mlflow

    embedder = load_embedder(model)
    paths = list(catalogue.images["path"])
    started = time.perf_counter()
    vectors = search_index.normalize(embed_photos(embedder, paths, args.batch_size), copy=False)
    embed_seconds = time.perf_counter() - started
    kind = search_index.resolve_kind(args.kind, *vectors.shape)
    log.info("building a %s index of %d x %d", kind, *vectors.shape)
    started = time.perf_counter()
    index = search_index.build_index(vectors, kind)
    build_seconds = time.perf_counter() - started
    metrics: dict[str, float] = {
        "vectors": len(vectors),
        "products": int(catalogue.images["product_id"].nunique()),
        "dim": vectors.shape[1],
        "build_seconds": build_seconds,
        "embed_seconds": embed_seconds,
        "images_per_second": len(vectors) / max(embed_seconds, 1e-9),
    }
    log.info("evaluating: test photos against a train + val index")
    metrics.update(evaluate(vectors, catalogue, kind))
    log.info("evaluating the text search: test listings' titles against train + val listings")
    metrics.update(evaluate_text_search(vectors, catalogue))
    metrics.update(save_and_log(args, model, catalogue, run_id, index))
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
    mlflow.set_tag("search_index.kind", kind)
    return metrics


def save_and_log(
    args: argparse.Namespace, model, catalogue, run_id: str, index, engine: str = "local"
) -> dict[str, float]:
    """Write the index folder (search/index.py's layout: the index, ids, listings, thumbnails
    and the text search beside them) and log it in the active run; its sizes as metrics."""
    import mlflow

    from search.text import TEXT_DIR, TextSearch

    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="index-") as tmp:
        thumbnails = make_thumbnails(catalogue.images, Path(tmp) / "thumbs", args.thumbnail_size)
        folder = search_index.save_index(
            Path(tmp) / search_index.ARTIFACT_PATH,
            index,
            catalogue.images[["image_id", "product_id"]],
            catalogue.listings,
            thumbnails,
            categories=catalogue.categories,
            extra={
                "model_name": model.name,
                "model_version": model.version,
                "model_uri": model.load_uri,
                "run_id": run_id,
                "clean_size": args.clean_size,
                "thumbnail_size": args.thumbnail_size,
                "engine": engine,
            },
        )
        started = time.perf_counter()
        TextSearch.build(catalogue_texts(catalogue)).save(folder / TEXT_DIR)
        metrics["text_build_seconds"] = time.perf_counter() - started
        size = (folder / search_index.INDEX_FILE).stat().st_size
        metrics["index_bytes"] = size
        metrics["bytes_per_vector"] = size / max(index.ntotal, 1)
        metrics["thumbnail_bytes"] = (folder / search_index.THUMBNAILS_FILE).stat().st_size
        mlflow.log_artifacts(str(folder), artifact_path=search_index.ARTIFACT_PATH)
    return metrics


def _log_input(catalogue: Catalogue) -> None:
    import warnings

    import mlflow

    frame = catalogue.images.drop(columns=["path"])
    with warnings.catch_warnings():  # MLflow's hints about source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame, source=str((catalogue.folder / "images.parquet").resolve()), name="catalogue"
        )
        mlflow.log_input(dataset, context="catalogue")


def _tag_version(client, model: ResolvedModel, run_id: str) -> None:
    if model.name is None or model.version is None:
        log.warning(
            "%s is not a registered version: no version tag names this index run", model.uri
        )
        return
    client.set_model_version_tag(model.name, str(model.version), search_index.INDEX_RUN_TAG, run_id)


def main(argv: Sequence[str] | None = None) -> str:
    """Build (or reuse) the index; returns the id of the run that holds it."""
    args = get_args_parser().parse_args(argv)
    import mlflow

    require_tables(args.clean)
    asked = args.clean_size
    if asked is not None:  # a size that is not there fails before anything is downloaded
        choose_size(args.clean, asked, asked, flag="--clean-size")
    model = resolve(args.model_uri, args.model_name)
    args.clean_size = choose_size(args.clean, model_input_size(model), asked, flag="--clean-size")
    catalogue = load_catalogue(args.clean, args.clean_size)
    key = cache_key(model, data_digest(catalogue), args)
    with start_run("index") as run:
        client = mlflow.MlflowClient()
        log_params(
            {
                "model_uri": args.model_uri,
                "model_name": args.model_name,
                "clean": str(args.clean),
                "clean_size": AUTO if asked is None else asked,
                "clean_size_used": args.clean_size,
                "kind": args.kind,
                "batch_size": args.batch_size,
                "thumbnail_size": args.thumbnail_size,
                "force": str(args.force).lower(),
            }
        )
        tags = {search_index.MODEL_URI_TAG: model.load_uri}
        if model.name is not None:
            tags[search_index.MODEL_NAME_TAG] = model.name
            tags[search_index.MODEL_VERSION_TAG] = str(model.version)
        mlflow.set_tags(tags)
        reused = None
        if not args.force:
            reused = find_reusable_run(client, model, run.info.experiment_id, key)
        if reused is not None:
            mlflow.set_tags({OUTCOME_TAG: "reused", REUSED_RUN_TAG: reused})
            _tag_version(client, model, reused)
            log.info(
                "skipping index: %s over unchanged clean data already has index run %s",
                model.load_uri,
                reused,
            )
            print(f"index of {model.load_uri}: run {reused} (reused)")
            return reused
        _log_input(catalogue)
        if args.engine == "ray":
            from steps import ray_engine

            local = ray_engine.LocalIndexing(evaluate, evaluate_text_search, save_and_log)
            metrics = ray_engine.build_and_log(args, model, catalogue, run.info.run_id, local)
        else:
            metrics = build_and_log(args, model, catalogue, run.info.run_id)
        mlflow.set_tags({CACHE_KEY_TAG: key, OUTCOME_TAG: "built"})
        _tag_version(client, model, run.info.run_id)
    summary = ", ".join(
        f"{name} {metrics[name]:.3f}"
        for name in ("precision_at_10", "majority_share", "recall_at_10")
        if name in metrics
    )
    print(
        f"index of {model.load_uri}: run {run.info.run_id}, {metrics['vectors']} photos of "
        f"{metrics['products']} listings, {metrics['dim']} dims"
        + (f"; {summary}" if summary else "")
    )
    return run.info.run_id


run = cli(main)

if __name__ == "__main__":
    run()
