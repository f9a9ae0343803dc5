"""Entry point ``rank``: the learned search ranker (LightGBM lambdarank), as one MLflow run.

Reads the production versions the service serves: the image model's search index (its
``search_index_run`` tag: the FAISS index, the listings and the text search logged under
``search_index/text/``) and the text model (``P(category | query)``; without one in
production that feature is NaN). ``--image-model-uri`` / ``--text-model-uri`` pin other
versions (``main`` pins the ones it just promoted). Reads ``<clean>/products.parquet`` for
each listing's split and category path.

Queries: every validation and test listing's own title, asked twice: as text alone, and as
text with the listing's first photo (its similarity to every listing is the best of that
listing's photos, from the index's stored embeddings). A query's candidates are the union of
the text search's and the photo search's top ``--candidates`` with its own listing left out,
each a row of :data:`search.ranking.FEATURES` from :func:`search.ranking.feature_table` (the
function the service calls). A candidate's label is :func:`search.ranking.graded_relevance`:
how many leading levels of the category path it shares with the query's listing (0 to
:data:`search.ranking.MAX_GRADE`).

Leak avoidance: the image model and the text model were fitted on the TRAIN split, so their
scores are over-confident for train listings (the image model classifies its own training
photos far better than new ones); a ranker fitted on train queries would learn to trust
those scores more than they deserve on a buyer's query. So the ranker is fitted on
VALIDATION queries only, split by listing (a seeded hash, ``--fit-share`` of them to fit,
the rest for early stopping), and measured on TEST queries, which no model here was fitted
on. ``--train-queries true`` adds the train listings' queries to the fit part (an
experiment: docs/ranking.md says what it does to the test figures).

Logged: the params; ``train/ndcg_at_10``, ``train/ndcg_at_5`` (the fit part) and
``val/ndcg_at_10``, ``val/ndcg_at_5`` (the early-stopping part) per boosting round; on the
test queries, graded NDCG@10 and @5 and precision@10 (the share of the top 10 in the
query's root category) of the ranker (``test/ndcg_at_10`` ...), of the hand blend
(``test/blend_...``), of the text relevance alone (``test/text_...``) and of the photo
similarity alone (``test/photo_...``, photo queries only), each also split by query mode
(``..._text_queries``, ``..._photo_queries``); the feature importances (gain) as
``feature_importance.png`` and ``.json``; the query tables as inputs (``fit``,
``early_stop``, ``test``); and the model (``marketplace_models.ranker``). With
``--register true`` it becomes a version of ``--model-name`` tagged ``input=ranking``,
whose description states the blend gate (promotion needs its test NDCG@10 at least the
blend's).

    mlflow run . -e rank --env-manager local
    python -m steps.rank --clean data/clean --candidates 50
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clean_data import DATA_DIGEST_TAG, PRODUCTS_FILE, data_digest
from cli import UserError
from marketplace_models.kinds import RANKING
from registry.descriptions import registration_note, set_model_description_if_empty
from registry.kinds import (
    BLEND_GATE,
    INPUT_TAG,
    RANKER_MODEL_NAME,
    TEXT_MODEL_NAME,
)
from registry.resolve import ResolvedModel, resolve_model
from registry.store import DEFAULT_MODEL_NAME, PRODUCTION, connect
from search import index as search_index
from search.ranking import FEATURES, RankingCatalogue, feature_table, graded_relevance, ndcg_graded
from search.text import TEXT_DIR, TextSearch
from steps import runtime

log = logging.getLogger(__name__)

RUN_NAME = "rank"
TEXT_QUERY, PHOTO_QUERY = "text", "photo+text"
MODES = (TEXT_QUERY, PHOTO_QUERY)
FIT, EARLY_STOP, TEST = "fit", "early_stop", "test"
EVAL_AT = (10, 5)  # the first decides early stopping
K = 10
MIN_FIT_QUERIES = 2


# --------------------------------------------------------------------------- sources


@dataclass
class Sources:
    """What the features are computed from: the production versions and their index."""

    image: ResolvedModel
    index_run: str
    catalogue: RankingCatalogue
    vectors: np.ndarray  # (photos, D), L2-normalised, the index's rows
    photo_products: np.ndarray  # product id of each row of ``vectors``
    text_model: Any | None
    text_uri: str | None


def production_uri(uri: str, name: str) -> str:
    """``uri``, or the production alias of ``name`` when ``uri`` is unset."""
    return uri.strip() or f"models:/{name}@{PRODUCTION}"


def load_index_folder(image: ResolvedModel, cache: Path) -> tuple[str, Path]:
    """The index run of the image version and its downloaded ``search_index/`` folder."""
    client = connect()
    command = "mlflow run . -e index -P model_uri=models:/<name>@production --env-manager local"
    if image.name is None or image.version is None:
        raise UserError(f"{image.uri} is not a registered version: give models:/<name>/<n>")
    run_id = search_index.index_run_for_version(client, image.name, image.version)
    if run_id is None:
        command = search_index.build_command(image.name, image.version)
        raise UserError(
            f"version {image.version} of {image.name} has no search index: run index first: "
            f"`{command}`"
        )
    folder = search_index.download_index(run_id, cache, client)
    if not (folder / TEXT_DIR).is_dir():
        raise UserError(
            f"the index run {run_id} has no text search ({search_index.ARTIFACT_PATH}/"
            f"{TEXT_DIR}/): rebuild it with `{command}` and -P force=true"
        )
    return run_id, folder


def load_sources(args: argparse.Namespace, clean: pd.DataFrame, cache: Path) -> Sources:
    """The image version's index (vectors, listings, text search) and the text model."""
    import mlflow

    try:
        image = resolve_model(production_uri(args.image_model_uri, args.image_model_name))
    except UserError as exc:
        raise UserError(
            f"{exc} (the ranker's candidates come from the production image model's index: "
            "run `mlflow run . -e main --env-manager local`, or train, index and promote one)"
        ) from None
    run_id, folder = load_index_folder(image, cache)
    index = search_index.SearchIndex.load(folder)
    ids = pd.read_parquet(folder / search_index.IDS_FILE).sort_values("row")
    listings = pd.read_parquet(folder / search_index.LISTINGS_FILE)
    listings["product_id"] = listings["product_id"].astype(str)
    paths = clean.set_index("product_id")["category_path"]
    listings["category_path"] = listings["product_id"].map(paths).fillna(listings["category_path"])
    counts = ids["product_id"].astype(str).value_counts()
    listings["photo_count"] = listings["product_id"].map(counts).fillna(0)
    text_search = TextSearch.load(folder / TEXT_DIR)
    vectors = search_index.normalize(index.index.reconstruct_n(0, len(index)))
    text_model, text_uri = None, None
    try:
        text = resolve_model(production_uri(args.text_model_uri, args.text_model_name))
        text_model = mlflow.pyfunc.load_model(text.load_uri).unwrap_python_model()
        text_uri = text.load_uri
    except UserError as exc:
        log.warning("no text model (%s): query_category_probability is NaN", exc)
    return Sources(
        image=image,
        index_run=run_id,
        catalogue=RankingCatalogue(text_search, listings),
        vectors=vectors,
        photo_products=ids["product_id"].astype(str).to_numpy(),
        text_model=text_model,
        text_uri=text_uri,
    )


def load_clean_listings(clean: Path) -> pd.DataFrame:
    """product_id, split and category_path of the clean listings; UserError without them."""
    path = Path(clean) / PRODUCTS_FILE
    if not path.is_file():
        raise UserError(
            f"no cleaned listings in {path}: run `mlflow run . -e clean_tabular --env-manager "
            "local` first, or pass --clean with the folder it wrote"
        )
    products = pd.read_parquet(path, columns=["product_id", "name", "category", "split"])
    products["product_id"] = products["product_id"].astype(str)
    return products.rename(columns={"category": "category_path"})


# --------------------------------------------------------------------------- queries


def share_point(product_id: str, seed: int) -> float:
    """A listing's seeded point in [0, 1): below ``--fit-share`` it is fitted on."""
    digest = hashlib.sha256(f"{seed}:{product_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_parts(product_ids: Sequence[str], seed: int, fit_share: float) -> dict[str, str]:
    """``fit`` or ``early_stop`` for each validation listing, by :func:`share_point`; with
    two listings or more, neither part is left empty (the extreme listing moves over)."""
    points = {pid: share_point(pid, seed) for pid in product_ids}
    parts = {pid: FIT if point < fit_share else EARLY_STOP for pid, point in points.items()}
    if len(parts) >= 2 and len(set(parts.values())) == 1:
        if FIT in parts.values():
            parts[max(points, key=points.__getitem__)] = EARLY_STOP
        else:
            parts[min(points, key=points.__getitem__)] = FIT
    return parts


def query_table(
    clean: pd.DataFrame, catalogue: RankingCatalogue, args: argparse.Namespace
) -> pd.DataFrame:
    """One row per query: query_id, product_id, split, part, mode, name, category_path.

    Validation listings are split into fit and early_stop (:func:`validation_parts`), test
    listings are ``test``, train listings join ``fit`` only with ``--train-queries``."""
    indexed = set(catalogue.product_ids)
    listings = clean[clean["product_id"].isin(indexed) & clean["name"].notna()]
    wanted = {"val", "test", "train"} if args.train_queries else {"val", "test"}
    listings = listings[listings["split"].isin(wanted)]
    val = listings.loc[listings["split"] == "val", "product_id"].tolist()
    parts = validation_parts(val, args.seed, args.fit_share)
    frame = pd.DataFrame(
        {
            "product_id": listings["product_id"].to_numpy(),
            "split": listings["split"].to_numpy(),
            "part": [
                parts.get(pid, TEST if split == "test" else FIT)
                for pid, split in zip(listings["product_id"], listings["split"], strict=True)
            ],
            "name": listings["name"].astype(str).to_numpy(),
            "category_path": listings["category_path"].astype(str).to_numpy(),
        }
    )
    frame = frame.merge(pd.DataFrame({"mode": list(MODES)}), how="cross")
    frame.insert(0, "query_id", frame["product_id"] + ":" + frame["mode"])
    return frame


@dataclass
class Group:
    """The queries of one part with their candidates: features, grades and sizes."""

    queries: pd.DataFrame
    features: pd.DataFrame
    grades: np.ndarray
    sizes: np.ndarray  # candidates per query, in the order of ``queries``
    candidates: pd.DataFrame  # query_id, product_id of each row

    def per_query(self):
        """``(query row, features, grades)`` of each query."""
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        for i, query in enumerate(self.queries.itertuples(index=False)):
            rows = slice(starts[i], starts[i + 1])
            yield query, self.features.iloc[rows], self.grades[rows]


def photo_scores(sources: Sources, product_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """For each listing, its first photo's best cosine with each listing's photos."""
    catalogue_ids = sources.photo_products
    order = np.argsort(catalogue_ids, kind="stable")
    products, starts = np.unique(catalogue_ids[order], return_index=True)
    first = {pid: int(order[start]) for pid, start in zip(products, starts, strict=True)}
    out: dict[str, dict[str, float]] = {}
    wanted = [pid for pid in product_ids if pid in first]
    for begin in range(0, len(wanted), 256):
        batch = wanted[begin : begin + 256]
        similarity = sources.vectors[[first[pid] for pid in batch]] @ sources.vectors[order].T
        best = np.maximum.reduceat(similarity, starts, axis=1)
        for pid, row in zip(batch, best, strict=True):
            out[pid] = dict(zip(products.tolist(), row.tolist(), strict=True))
    return out


def category_answers(sources: Sources, titles: Sequence[str]) -> list[dict[str, float] | None]:
    """The text model's P(category | title) for each title (None without a text model)."""
    if sources.text_model is None:
        return [None] * len(titles)
    probabilities = np.asarray(sources.text_model.predict_proba(list(titles)), dtype=float)
    names = list(sources.text_model.categories)
    return [dict(zip(names, row.tolist(), strict=True)) for row in probabilities]


def build_group(sources: Sources, queries: pd.DataFrame, n: int) -> Group:
    """Every query's candidates (its own listing left out), their features and grades."""
    catalogue = sources.catalogue
    photos = photo_scores(sources, queries["product_id"].unique().tolist())
    answers = category_answers(sources, queries["name"].tolist())
    features, grades, sizes, candidates = [], [], [], []
    for query, probabilities in zip(queries.itertuples(index=False), answers, strict=True):
        candidate = feature_table(
            catalogue,
            query.name,
            n=n,
            photo_scores=photos.get(query.product_id) if query.mode == PHOTO_QUERY else None,
            category_probabilities=probabilities,
            exclude=query.product_id,
        )
        features.append(candidate.features)
        grades.append(
            graded_relevance(query.category_path, catalogue.category_paths[candidate.rows])
        )
        sizes.append(len(candidate.rows))
        candidates.append(
            pd.DataFrame({"query_id": query.query_id, "product_id": candidate.product_ids})
        )
    empty = pd.DataFrame(columns=list(FEATURES), dtype=float)
    return Group(
        queries=queries.reset_index(drop=True),
        features=pd.concat(features, ignore_index=True) if features else empty,
        grades=np.concatenate(grades) if grades else np.zeros(0, dtype=np.int32),
        sizes=np.asarray(sizes, dtype=np.int64),
        candidates=pd.concat(candidates, ignore_index=True) if candidates else pd.DataFrame(),
    )


# --------------------------------------------------------------------------- training


def fit_ranker(args: argparse.Namespace, fit: Group, stop: Group):
    """LGBMRanker (lambdarank) early-stopped on ``stop``; returns it and the per-round
    NDCG of both parts (``{"train": {"ndcg@10": [...]}, "val": {...}}``)."""
    import lightgbm

    ranker = lightgbm.LGBMRanker(
        objective="lambdarank",
        n_estimators=args.n_estimators,
        learning_rate=args.learning_rate,
        num_leaves=args.num_leaves,
        min_child_samples=args.min_child_samples,
        random_state=args.seed,
        deterministic=True,
        force_row_wise=True,
        n_jobs=2,
        verbose=-1,
    )
    history: dict[str, dict[str, list[float]]] = {}
    x_fit, y_fit = fit.features, fit.grades
    evals = [(x_fit, y_fit), (stop.features, stop.grades)]
    if "eval_X" in inspect.signature(ranker.fit).parameters:  # LightGBM 4.6 renamed eval_set
        eval_data = {"eval_X": tuple(x for x, _ in evals), "eval_y": tuple(y for _, y in evals)}
    else:
        eval_data = {"eval_set": evals}
    ranker.fit(
        x_fit,
        y_fit,
        group=fit.sizes,
        **eval_data,
        eval_group=[fit.sizes, stop.sizes],
        eval_names=["train", "val"],
        eval_at=list(EVAL_AT),
        callbacks=[
            lightgbm.early_stopping(
                args.early_stopping_rounds, first_metric_only=True, verbose=False
            ),
            lightgbm.record_evaluation(history),
        ],
    )
    return ranker, history


def log_history(history: dict[str, dict[str, list[float]]]) -> None:
    """``train/ndcg_at_10`` ... per boosting round (step = round, from 1)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{part}/{name.replace('ndcg@', 'ndcg_at_')}", float(value), now, step + 1)
        for part, curves in history.items()
        for name, values in curves.items()
        for step, value in enumerate(values)
    ]
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    for begin in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[begin : begin + 1000])


def ranked_grades(scores: np.ndarray, blend: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """The grades in the order ``scores`` ranks them (ties: the blend), as Candidates does."""
    order = np.lexsort((-blend, -np.asarray(scores, dtype=float)))
    return grades[order]


def evaluate(group: Group, scores: np.ndarray) -> dict[str, float]:
    """Graded NDCG@10/@5 and precision@10 of the ranker, blend, text and photo orders."""
    sums: dict[str, list[float]] = {}
    starts = np.concatenate([[0], np.cumsum(group.sizes)])
    for i, (query, features, grades) in enumerate(group.per_query()):
        blend = features["blend_score"].to_numpy()
        orders = {
            "": scores[starts[i] : starts[i + 1]],
            "blend_": blend,
            "text_": features["text_relevance"].to_numpy(),
        }
        if query.mode == PHOTO_QUERY:
            orders["photo_"] = features["photo_similarity"].to_numpy()
        suffix = "_text_queries" if query.mode == TEXT_QUERY else "_photo_queries"
        for way, order_by in orders.items():
            ranked = ranked_grades(order_by, blend, grades)
            values = {
                f"ndcg_at_{K}": ndcg_graded(ranked, grades, K),
                "ndcg_at_5": ndcg_graded(ranked, grades, 5),
                f"precision_at_{K}": float(np.mean(ranked[:K] >= 1)) if len(ranked) else 0.0,
            }
            for name, value in values.items():
                for key in (f"{way}{name}", f"{way}{name}{suffix}"):
                    sums.setdefault(key, []).append(value)
    metrics = {f"{TEST}/{key}": float(np.mean(values)) for key, values in sums.items()}
    metrics[f"{TEST}/queries"] = float(len(group.queries))
    metrics[f"{TEST}/candidates_per_query"] = float(np.mean(group.sizes)) if len(group.sizes) else 0
    blend = metrics.get(BLEND_GATE[1])
    if blend:
        metrics[f"{TEST}/ndcg_at_{K}_vs_blend"] = metrics[BLEND_GATE[0]] / blend
    return metrics


# --------------------------------------------------------------------------- logging


def log_importances(booster) -> dict[str, float]:
    """The features' gain as ``feature_importance.json`` and a bar chart ``.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    gains = booster.feature_importance(importance_type="gain")
    names = booster.feature_name()
    importance = dict(sorted(zip(names, map(float, gains), strict=True), key=lambda x: x[1]))
    figure, axes = plt.subplots(figsize=(7, 0.35 * len(importance) + 1.2))
    axes.barh(list(importance), list(importance.values()), color="#3b6ea5")
    axes.set_xlabel("total gain (LightGBM)")
    axes.set_title("Ranker feature importance (gain)")
    figure.tight_layout()
    mlflow.log_figure(figure, "feature_importance.png")
    plt.close(figure)
    mlflow.log_dict(dict(reversed(importance.items())), "feature_importance.json")
    return importance


def log_inputs(queries: pd.DataFrame, clean: Path) -> None:
    """The query tables of the fit, early-stop and test parts, as the run's inputs."""
    import mlflow

    source = str((Path(clean) / PRODUCTS_FILE).resolve())
    for part in (FIT, EARLY_STOP, TEST):
        frame = queries[queries["part"] == part]
        if frame.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=f"ranking-queries-{part}")
            mlflow.log_input(dataset, context=part)


def gate_line(metrics: dict[str, float]) -> str:
    """The blend gate as the version's description states it."""
    mine, blend = (metrics.get(name) for name in BLEND_GATE)
    if mine is None or blend is None:
        return "Blend gate: no test queries, so `promote` refuses it (no test/ndcg_at_10)."
    verdict = "passes" if mine >= blend else "fails: `promote` refuses it"
    return (
        f"Blend gate: test NDCG@10 {mine:.4f} vs the hand blend's {blend:.4f} on the same "
        f"{int(metrics.get('test/queries', 0))} test queries and candidates ({verdict})."
    )


def describe_model() -> str:
    """The registered ranker's description (written with its first version)."""
    return (
        "Ranks a search query's candidate listings (the union of the text search's and the "
        "photo index's top N) by a LightGBM lambdarank model over the features of "
        "`search.ranking.FEATURES` (docs/ranking.md).\n\n"
        f"**Input**: the feature table, one row per candidate, columns {', '.join(FEATURES)} "
        "(NaN where a feature does not apply).  \n**Output**: `score` per row, higher first.\n\n"
        "**How a version reaches production.** `rank` registers every version and never moves "
        f"an alias. `promote` moves `{PRODUCTION}` to a version when it loads, takes exactly "
        "those features and scores its input example to finite numbers (the smoke check), its "
        "`test/ndcg_at_10` is at least the production version's, and it is at least the hand "
        "blend's `test/blend_ndcg_at_10` on the same test queries (the blend gate); `--force` "
        "with a `--reason` skips the rules, never the smoke check."
    )


def register(info, args, run, metrics: dict[str, float], sources: Sources, digest: str):
    """Register the logged ranker as a version of ``--model-name`` (input=ranking)."""
    from registry.register import register_described

    tags = {
        **metrics,
        INPUT_TAG: RANKING,
        DATA_DIGEST_TAG: digest,
        "image_model": sources.image.load_uri,
        "text_model": sources.text_uri or "none",
        "search_index_run": sources.index_run,
        "candidates": args.candidates,
    }
    note = registration_note(
        summary="**LightGBM lambdarank** search ranker",
        run_id=run.info.run_id,
        run_name=RUN_NAME,
        data_digest=digest,
        metrics={k: v for k, v in metrics.items() if k.count("_") <= 3 and "quer" not in k},
        details=[
            gate_line(metrics),
            f"Candidates: text and photo top {args.candidates} of {sources.image.load_uri}'s "
            f"index (run {sources.index_run[:8]}); text model {sources.text_uri or 'none'}.",
        ],
    )
    version = register_described(
        info.model_uri,
        model_name=args.model_name,
        tags=tags,
        model_text=describe_model(),
        version_text=note,
    )
    set_model_description_if_empty(connect(), args.model_name, describe_model())
    return version


# --------------------------------------------------------------------------- the step


def check_parts(queries: pd.DataFrame) -> None:
    """UserError when a part the ranker needs has no queries."""
    counts = queries["part"].value_counts()
    for part, what in ((FIT, "fit"), (EARLY_STOP, "early-stop")):
        if counts.get(part, 0) < MIN_FIT_QUERIES:
            raise UserError(
                f"only {counts.get(part, 0)} {what} queries: the validation split is too small "
                "to fit the ranker; clean with a larger --val-frac, or pass --train-queries true"
            )


def rank(args: argparse.Namespace) -> dict[str, Any]:
    """Build the queries, fit, evaluate, log (and register) the ranker; returns a summary."""
    import mlflow

    from marketplace_models.ranker import log_ranker

    clean = load_clean_listings(args.clean)
    with tempfile.TemporaryDirectory(prefix="rank-") as tmp:
        sources = load_sources(args, clean, Path(tmp))
    queries = query_table(clean, sources.catalogue, args)
    check_parts(queries)
    with runtime.start_run(RUN_NAME) as run:
        runtime.log_params({key: value for key, value in vars(args).items() if key != "clean"})
        runtime.log_params({"clean": str(args.clean), "features": ",".join(FEATURES)})
        digest = data_digest(args.clean)
        mlflow.set_tags(
            {INPUT_TAG: RANKING, DATA_DIGEST_TAG: digest, "image_model": sources.image.load_uri}
        )
        log_inputs(queries, args.clean)
        groups = {
            part: build_group(sources, queries[queries["part"] == part], args.candidates)
            for part in (FIT, EARLY_STOP, TEST)
        }
        ranker, history = fit_ranker(args, groups[FIT], groups[EARLY_STOP])
        log_history(history)
        booster = ranker.booster_
        best = int(ranker.best_iteration_ or booster.current_iteration())
        scores = booster.predict(groups[TEST].features.to_numpy(dtype=float), num_iteration=best)
        metrics = evaluate(groups[TEST], scores) if len(groups[TEST].queries) else {}
        counts = {f"{part}_queries": float(len(g.queries)) for part, g in groups.items()}
        mlflow.log_metrics({**metrics, **counts, "best_iteration": float(best)})
        importance = log_importances(booster)
        info = log_ranker(booster, FEATURES, groups[TEST].features.head(5))
        version = None
        if args.register:
            version = register(info, args, run, metrics, sources, digest).version
    summary = {"run_id": run.info.run_id, "version": version, "best_iteration": best}
    summary.update({k: round(v, 4) for k, v in metrics.items() if k.count("_") <= 3})
    summary["top_features"] = list(reversed(importance))[:3]
    print(json.dumps(summary))
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.rank",
        description="Fit the learned search ranker (LightGBM lambdarank) on validation "
        "queries, measure it on test queries against the hand blend, log and register it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clean", type=Path, default=Path("data/clean"), help="clean data")
    text = runtime.optional_text
    parser.add_argument(
        "--image-model-uri",
        type=text,
        default="",
        help="the image version whose index gives the candidates (none: its production)",
    )
    parser.add_argument("--image-model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument(
        "--text-model-uri", type=text, default="", help="none: production of --text-model-name"
    )
    parser.add_argument("--text-model-name", default=TEXT_MODEL_NAME)
    positive = runtime.positive_int
    parser.add_argument("--candidates", type=positive, default=100, help="top N of each search")
    parser.add_argument("--n-estimators", type=positive, default=500, help="boosting rounds")
    parser.add_argument("--learning-rate", type=runtime.positive_float, default=0.05)
    parser.add_argument("--num-leaves", type=positive, default=15)
    parser.add_argument("--min-child-samples", type=positive, default=20)
    parser.add_argument("--early-stopping-rounds", type=positive, default=50)
    parser.add_argument(
        "--fit-share", type=runtime.fraction, default=0.7, help="validation listings to fit on"
    )
    parser.add_argument(
        "--train-queries",
        type=runtime.str_to_bool,
        default=False,
        help="also fit on train listings' queries (whose model scores are over-confident)",
    )
    parser.add_argument("--seed", type=runtime.non_negative_int, default=0)
    parser.add_argument("--register", type=runtime.str_to_bool, default=True)
    parser.add_argument("--model-name", default=RANKER_MODEL_NAME, help="registered ranker")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` and run the step; returns its summary (what it printed)."""
    return rank(get_args_parser().parse_args(argv))


run = runtime.cli(main)

if __name__ == "__main__":
    run()
