"""baselines: scikit-learn floors for price regression and image classification, in MLflow.

Every model is fitted on the train split of the clean data and scored on its test split (the
split the ResNet uses), so the deep model's gain over these floors is measured, not assumed.

* Price (products whose ``price_flag`` is ``ok``), target log price (``log1p`` of pounds):
  a median ``DummyRegressor``; ridge regression on TF-IDF of name and description plus
  one-hot root category, sub-category and county; a ``HistGradientBoostingRegressor`` on
  the same features (text capped to the commonest terms, dense). Each is one ``Pipeline``
  that takes the raw columns and predicts pounds.
* Images (root category): a most-frequent ``DummyClassifier``; logistic regression on
  :class:`marketplace_models.sklearn_features.ImageFeatures` (downsized pixels, colour
  histogram, coarse HOG). The pipeline takes a column ``image`` of JPEG/PNG bytes, as the
  deep model does.

Splits: images use ``images.parquet``'s ``split``. Products take the split of their images;
a product without images gets one from a hash of its id (SHA-256), with the split
fractions seen among products that have images, so it is the same on every run.

With ``--search true`` the ridge ``alpha`` and the logistic-regression ``C`` and feature
size are chosen on the validation split, each candidate a nested run of its model's run.

Metrics are named ``<split>/<name>`` (``val/rmse``, ``test/accuracy``; the classifiers' by
:mod:`steps.evaluation`), and the test metrics are tied to the test split's dataset.

Reads: ``<clean>/products.parquet``, ``images.parquet``, ``categories.json``,
``images/<image-size>/<image_id>.jpg``. Writes: one MLflow run ``baselines`` with a child
run per model (``price-ridge`` ...: params, val/test metrics, plots, the model logged with
``mlflow.sklearn`` under the run's name) and ``results.json`` / ``results.md`` on the parent
(``python -m steps.baselines_report`` prints the table again).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clean_data import (
    DATA_DIGEST_TAG,
    IMAGES_FILE,
    PRODUCTS_FILE,
    SPLITS,
    CleanData,
    choose_size,
    data_digest,
    load_clean,
)
from cli import UserError
from marketplace_models.pyfunc import PACKAGE_DIR, installed_lower_bounds
from marketplace_models.sklearn_features import HOG_SIZE
from registry.versions import metric_value
from steps import runtime
from steps.evaluation import (
    TOP_K,
    align_probabilities,
    classification_metrics,
    label_indices,
    log_classification_report,
    log_split_metrics,
    metric_key,
)
from steps.runtime import (
    auto_or_positive_int,
    cli,
    log_params,
    non_negative_int,
    positive_int,
    start_run,
    str_to_bool,
)

log = logging.getLogger(__name__)

PRICE_COLUMNS = ["name", "description", "root_category", "sub_category", "county"]
TEXT_COLUMNS = ["name", "description"]
CATEGORY_COLUMNS = ["root_category", "sub_category", "county"]
IMAGE_COLUMN = "image"

RIDGE_ALPHA = 1.0
RIDGE_ALPHA_GRID = (0.3, 1.0, 3.0, 10.0)
LOGREG_C = 0.01
LOGREG_C_GRID = (0.003, 0.01, 0.03)
LOGREG_MAX_ITER = 300
HGB_PARAMS = {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 31, "min_samples_leaf": 10}
HGB_MAX_TERMS = 100  # text terms per column for the (dense) gradient-boosted model
MIN_TRAIN_ROWS = 10
MIN_EVAL_ROWS = 1
MIN_CLASSES = 2
EXAMPLE_ROWS = 3

# Types that skops (the default sklearn serialisation in MLflow 3) must be told to trust:
# each is ours or a plain numpy/scikit-learn object.
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",
    "numpy.ravel",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "marketplace_models.sklearn_features.ImageFeatures",
]


@dataclass
class Candidate:
    """One fitted model with its hyperparameters and validation metrics."""

    params: dict[str, Any]
    model: Any
    val_metrics: dict[str, float]


@dataclass
class Result:
    """One logged baseline, as it goes into results.json."""

    task: str
    model: str
    run_id: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


# --- reading the clean data -----------------------------------------------------------------


def hash_split(key: str, val_frac: float, test_frac: float) -> str:
    """A split for ``key`` from its SHA-256: the same on every run and machine."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if position < test_frac:
        return "test"
    if position < test_frac + val_frac:
        return "val"
    return "train"


def split_fractions(clean: CleanData) -> tuple[float, float]:
    """(val, test) fractions: clean_tabular's, from report.json, else those seen in images."""
    params = clean.report.get("params", {}) if isinstance(clean.report, dict) else {}
    if "val_frac" in params and "test_frac" in params:
        return float(params["val_frac"]), float(params["test_frac"])
    seen = (
        clean.images.groupby("product_id", sort=False)["split"].first().value_counts(normalize=True)
    )
    return float(seen.get("val", 0.15)), float(seen.get("test", 0.15))


def product_splits(products: pd.DataFrame, clean: CleanData) -> pd.Series:
    """Each product's split: its images' split, else :func:`hash_split` (see module doc)."""
    from_images = clean.images.groupby("product_id", sort=False)["split"].first()
    val_frac, test_frac = split_fractions(clean)
    ids = products["product_id"].astype(str)
    known = ids.map(from_images)
    guessed = ids.map(lambda key: hash_split(key, val_frac, test_frac))
    return known.fillna(guessed).astype(str).rename("split")


def price_table(clean: CleanData) -> pd.DataFrame:
    """Products with a valid price: PRICE_COLUMNS, ``price`` (pounds) and ``split``."""
    products = clean.products
    valid = (
        (products["price_flag"] == "ok") & np.isfinite(products["price"]) & (products["price"] > 0)
    )
    table = products.loc[valid, ["product_id", *PRICE_COLUMNS, "price"]].copy()
    table["split"] = product_splits(table, clean).to_numpy()
    return table.reset_index(drop=True)


def image_table(clean: CleanData) -> pd.DataFrame:
    """Images with their cleaned JPEG bytes (at ``clean.size``) in column ``image``, plus
    label and split."""
    folder = clean.image_dir
    table = clean.images[["image_id", "product_id", "root_category", "split"]].copy()
    paths = clean.paths(table)
    present = np.array([path.is_file() for path in paths], dtype=bool)
    if not present.all():
        log.warning(
            "%d of %d images have no file in %s (clean_images not run on all?): left out",
            int((~present).sum()),
            len(paths),
            folder,
        )
    table = table.loc[present].reset_index(drop=True)
    table[IMAGE_COLUMN] = [path.read_bytes() for path, ok in zip(paths, present, strict=True) if ok]
    return table


def check_rows(table: pd.DataFrame, task: str, target: str | None = None) -> dict[str, int]:
    """Rows per split; a UserError when a split (or, with ``target``, the classes) is too small."""
    counts = {split: int((table["split"] == split).sum()) for split in SPLITS}
    needs = {"train": MIN_TRAIN_ROWS, "val": MIN_EVAL_ROWS, "test": MIN_EVAL_ROWS}
    short = [
        f"{split} has {counts[split]} (needs {needs[split]})"
        for split in SPLITS
        if counts[split] < needs[split]
    ]
    if short:
        raise UserError(
            f"too few rows for the {task} baselines: {'; '.join(short)}. Use a bigger export, "
            "or clean it again with larger --val-frac/--test-frac"
        )
    if target is not None:
        train = table.loc[table["split"] == "train", target]
        if train.nunique() < MIN_CLASSES:
            raise UserError(
                f"too few classes for the {task} baselines: the train split has "
                f"{train.nunique()} (needs {MIN_CLASSES}). Use a bigger export"
            )
        unseen = sorted(set(table[target]) - set(train))
        if unseen:
            log.warning("%s: no train rows for %s; those rows can never be right", task, unseen)
    return counts


# --- models ---------------------------------------------------------------------------------


def _text_features(max_features: int | None):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    # A missing description is empty text, whether it arrives as NaN (pandas' str dtype,
    # parquet) or as None (a one-row frame, JSON null): one imputer for each.
    return make_pipeline(
        SimpleImputer(strategy="constant", fill_value=""),
        SimpleImputer(missing_values=None, strategy="constant", fill_value=""),
        FunctionTransformer(np.ravel),  # (n, 1) -> (n,): TfidfVectorizer wants documents
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features),
    )


def price_features(max_terms: int | None = None, dense: bool = False):
    """TF-IDF of name and description, one-hot categories: raw columns -> features."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    return ColumnTransformer(
        [
            *((column, _text_features(max_terms), [column]) for column in TEXT_COLUMNS),
            ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORY_COLUMNS),
        ],
        sparse_threshold=0.0 if dense else 0.3,
    )


def _log_target(regressor):
    from sklearn.compose import TransformedTargetRegressor

    return TransformedTargetRegressor(regressor=regressor, func=np.log1p, inverse_func=np.expm1)


def build_price_model(kind: str, *, alpha: float = RIDGE_ALPHA, seed: int = 0):
    """A Pipeline from raw product columns to pounds, fitted on log price."""
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    if kind == "dummy":
        return Pipeline([("model", _log_target(DummyRegressor(strategy="median")))])
    if kind == "ridge":
        return Pipeline(
            [("features", price_features()), ("model", _log_target(Ridge(alpha=alpha)))]
        )
    if kind == "hgb":
        model = HistGradientBoostingRegressor(**HGB_PARAMS, random_state=seed)
        return Pipeline(
            [("features", price_features(HGB_MAX_TERMS, dense=True)), ("model", _log_target(model))]
        )
    raise ValueError(f"unknown price model {kind!r}")


def build_image_model(kind: str, *, feature_size: int = 16, C: float = LOGREG_C, seed: int = 0):
    """A Pipeline from a column of image bytes to a root category."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from marketplace_models.sklearn_features import ImageFeatures

    if kind == "dummy":
        return Pipeline([("model", DummyClassifier(strategy="most_frequent"))])
    if kind == "logreg":
        return Pipeline(
            [
                ("features", ImageFeatures(size=feature_size)),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(C=C, max_iter=LOGREG_MAX_ITER, random_state=seed)),
            ]
        )
    raise ValueError(f"unknown image model {kind!r}")


# --- metrics and plots ----------------------------------------------------------------------


def price_metrics(
    true_pounds: np.ndarray, predicted_pounds: np.ndarray, prefix: str
) -> dict[str, float]:
    """RMSE and MAE in pounds, R² on log price (``log1p``): ``<prefix>/rmse`` ..."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    true = np.asarray(true_pounds, dtype=float)
    predicted = np.clip(np.asarray(predicted_pounds, dtype=float), 0.0, None)
    return {
        metric_key(prefix, "rmse"): float(root_mean_squared_error(true, predicted)),
        metric_key(prefix, "mae"): float(mean_absolute_error(true, predicted)),
        metric_key(prefix, "r2_log"): float(r2_score(np.log1p(true), np.log1p(predicted))),
    }


def plot_predicted_vs_true(true_pounds: np.ndarray, predicted_pounds: np.ndarray, title: str):
    """Scatter of predicted against true price on log axes, with the y = x line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 6), dpi=100)
    axes = figure.subplots()
    true = np.asarray(true_pounds, dtype=float)
    predicted = np.clip(np.asarray(predicted_pounds, dtype=float), 0.01, None)
    axes.scatter(true, predicted, s=8, alpha=0.5)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    axes.set(xscale="log", yscale="log", xlabel="true price (£)", ylabel="predicted price (£)")
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure


# --- MLflow logging -------------------------------------------------------------------------


def pip_requirements(images: bool) -> list[str]:
    """Requirements of a logged baseline (given, so MLflow need not infer them): the installed
    versions as lower bounds, the policy every logged model follows."""
    packages = ["mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"]
    if images:
        packages.append("pillow")
    return installed_lower_bounds(packages)


def log_sklearn_model(model, example: pd.DataFrame, *, images: bool, name: str):
    """Log ``model`` as ``name`` (``price-ridge`` ...) with mlflow.sklearn: signature, input
    example, pinned requirements; MLflow's ``ModelInfo``."""
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example))
    # An image baseline pickles marketplace_models.sklearn_features.ImageFeatures: it carries
    # that package whole, like every logged model, so it loads where this repository is not.
    return mlflow.sklearn.log_model(
        model,
        name=name,
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(images),
        code_paths=[str(PACKAGE_DIR)] if images else None,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )


def log_datasets(table: pd.DataFrame, source: Path, name: str, target: str) -> dict[str, Any]:
    """Log each split of ``table`` (without image bytes) as an MLflow dataset input; the
    datasets by split (metrics of a split are logged against its dataset)."""
    import mlflow

    columns = [column for column in table.columns if column != IMAGE_COLUMN]
    datasets = {}
    for split in SPLITS:
        part = table.loc[table["split"] == split, columns].reset_index(drop=True)
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": harmless
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                part, source=str(source), name=f"{name}-{split}", targets=target
            )
        mlflow.log_input(dataset, context=split)
        datasets[split] = dataset
    return datasets


def _format_params(params: dict[str, Any]) -> str:
    return " ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    )


def search(
    name: str,
    grid: Sequence[dict[str, Any]],
    fit: Callable[[dict[str, Any]], Candidate],
    rank_metric: str,
    higher_is_better: bool,
) -> Candidate:
    """Fit every candidate of ``grid`` (each a nested run when there are several); the best."""
    import mlflow

    candidates = []
    for params in grid:
        if len(grid) == 1:
            candidates.append(fit(params))
            break
        with mlflow.start_run(run_name=f"{name} {_format_params(params)}", nested=True):
            mlflow.set_tags({"search": name, "rank_metric": rank_metric})
            candidate = fit(params)
            log_params(candidate.params)
            mlflow.log_metrics(candidate.val_metrics)
        candidates.append(candidate)
        log.info(
            "%s %s: %s=%.4f",
            name,
            _format_params(params),
            rank_metric,
            candidate.val_metrics[rank_metric],
        )
    sign = -1.0 if higher_is_better else 1.0
    best = min(candidates, key=lambda c: sign * c.val_metrics[rank_metric])  # first of ties
    if len(grid) > 1:
        log.info("%s: best on val %s", name, _format_params(best.params))
    return best


# --- the two tasks --------------------------------------------------------------------------


def _split(table: pd.DataFrame, split: str) -> pd.DataFrame:
    return table.loc[table["split"] == split].reset_index(drop=True)


def run_price_baselines(
    table: pd.DataFrame, source: Path, *, do_search: bool, seed: int
) -> list[Result]:
    """Fit, score and log the three price models, each in its own nested run."""
    import mlflow

    parts = {split: _split(table, split) for split in SPLITS}
    train = parts["train"]

    def fit(kind: str) -> Callable[[dict[str, Any]], Candidate]:
        def fit_one(params: dict[str, Any]) -> Candidate:
            model = build_price_model(kind, seed=seed, **params)
            model.fit(train[PRICE_COLUMNS], train["price"])
            predicted = model.predict(parts["val"][PRICE_COLUMNS])
            return Candidate(
                dict(params), model, price_metrics(parts["val"]["price"], predicted, "val")
            )

        return fit_one

    grids: dict[str, list[dict[str, Any]]] = {
        "dummy": [{}],
        "ridge": [{"alpha": a} for a in (RIDGE_ALPHA_GRID if do_search else (RIDGE_ALPHA,))],
        "hgb": [{}],
    }
    fixed = {
        "dummy": {"strategy": "median"},
        "ridge": {},
        "hgb": {**HGB_PARAMS, "max_terms": HGB_MAX_TERMS},
    }
    results = []
    for kind, grid in grids.items():
        run_name = f"price-{kind}"
        with mlflow.start_run(run_name=run_name, nested=True) as run:
            mlflow.set_tags({"task": "price", "model": kind})
            datasets = log_datasets(table, source, "products", "price")
            best = search(run_name, grid, fit(kind), "val/rmse", higher_is_better=False)
            params = {**fixed[kind], **best.params, "target": "log1p(price)"}
            log_params({**params, "search": len(grid) > 1})
            test = parts["test"]
            predicted = best.model.predict(test[PRICE_COLUMNS])
            tested = price_metrics(test["price"], predicted, "test")
            example = test[PRICE_COLUMNS].head(EXAMPLE_ROWS)
            info = log_sklearn_model(best.model, example, images=False, name=run_name)
            model_id = info.model_id  # metrics tied to the model and to their split's dataset
            log_split_metrics(best.val_metrics, datasets["val"], model_id)
            log_split_metrics(tested, datasets["test"], model_id)
            rows = split_rows(parts)
            for split in SPLITS:
                key = metric_key(split, "rows")
                log_split_metrics({key: rows[key]}, datasets[split], model_id)
            metrics = {**best.val_metrics, **tested, **rows}
            mlflow.log_figure(
                plot_predicted_vs_true(test["price"], predicted, f"{run_name}: test split"),
                "pred_vs_true.png",
            )
            log.info(
                "%s: test RMSE £%.2f, MAE £%.2f, R² (log) %.3f",
                run_name,
                metrics["test/rmse"],
                metrics["test/mae"],
                metrics["test/r2_log"],
            )
        results.append(Result("price", kind, run.info.run_id, params, metrics))
    return results


def split_rows(parts: dict[str, pd.DataFrame]) -> dict[str, float]:
    """``train/rows``, ``val/rows``, ``test/rows``."""
    return {metric_key(split, "rows"): float(len(parts[split])) for split in SPLITS}


def image_feature_cache(
    parts: dict[str, pd.DataFrame], sizes: Sequence[int]
) -> dict[int, dict[str, np.ndarray]]:
    """ImageFeatures of every split at every feature size, computed once for the search."""
    from marketplace_models.sklearn_features import ImageFeatures

    cache = {}
    for size in sizes:
        features = ImageFeatures(size=size)
        cache[size] = {
            split: features.transform(part[[IMAGE_COLUMN]]) for split, part in parts.items()
        }
        log.info("image features at size %d: %d numbers per image", size, features.n_features)
    return cache


@dataclass(frozen=True)
class ImageSplits:
    """The image table by split, with what every candidate reuses: the cached features, the
    category names and their label indices."""

    parts: dict[str, pd.DataFrame]
    cache: dict[int, dict[str, np.ndarray]]
    y: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    categories: list[str]


def fit_image_candidate(
    kind: str, params: dict[str, Any], data: ImageSplits, seed: int
) -> Candidate:
    """Fit one image model on the train split; its validation metrics."""
    model = build_image_model(kind, seed=seed, **params)
    if kind == "dummy":
        model.fit(data.parts["train"][[IMAGE_COLUMN]], data.y["train"])
        probabilities = model.predict_proba(data.parts["val"][[IMAGE_COLUMN]])
    else:  # the features are stateless: fit the rest of the pipeline on cached ones
        features = data.cache[params["feature_size"]]
        model[0].fit(None)
        model[1:].fit(features["train"], data.y["train"])
        probabilities = model[1:].predict_proba(features["val"])
    aligned = align_probabilities(probabilities, model.classes_, data.categories)
    metrics = classification_metrics(aligned, data.labels["val"], "val")
    return Candidate(dict(params), model, metrics)


def run_image_baselines(
    table: pd.DataFrame,
    categories: list[str],
    source: Path,
    *,
    feature_size: int,
    do_search: bool,
    seed: int,
) -> list[Result]:
    """Fit, score and log the two image models, each in its own nested run."""
    import mlflow

    parts = {split: _split(table, split) for split in SPLITS}
    sizes = sorted({max(4, feature_size // 2), feature_size}) if do_search else [feature_size]
    y = {split: part["root_category"].to_numpy(dtype=object) for split, part in parts.items()}
    data = ImageSplits(
        parts=parts,
        cache=image_feature_cache(parts, sizes),
        y=y,
        labels={split: label_indices(names, categories) for split, names in y.items()},
        categories=categories,
    )
    grids: dict[str, list[dict[str, Any]]] = {
        "dummy": [{}],
        "logreg": [
            {"feature_size": size, "C": c}
            for size in sizes
            for c in (LOGREG_C_GRID if do_search else (LOGREG_C,))
        ],
    }
    results = []
    for kind, grid in grids.items():
        run_name = f"image-{kind}"
        with mlflow.start_run(run_name=run_name, nested=True) as run:
            mlflow.set_tags({"task": "image", "model": kind})
            datasets = log_datasets(table, source, "images", "root_category")
            best = search(
                run_name,
                grid,
                partial(fit_image_candidate, kind, data=data, seed=seed),
                "val/accuracy",
                higher_is_better=True,
            )
            params = {"strategy": "most_frequent"} if kind == "dummy" else dict(best.params)
            log_params({**params, "search": len(grid) > 1})
            metrics = log_image_baseline(run_name, kind, best, params, data, datasets)
        results.append(Result("image", kind, run.info.run_id, params, metrics))
    return results


def log_image_baseline(run_name, kind, best: Candidate, params, data: ImageSplits, datasets):
    """Log the chosen image model in the active run, with its metrics tied to it and to
    their split's dataset, and its test report; its metrics."""
    if kind == "logreg":
        probabilities = best.model[1:].predict_proba(data.cache[params["feature_size"]]["test"])
    else:
        probabilities = best.model.predict_proba(data.parts["test"][[IMAGE_COLUMN]])
    example = data.parts["test"][[IMAGE_COLUMN]].head(EXAMPLE_ROWS)
    info = log_sklearn_model(best.model, example, images=True, name=run_name)
    model_id = info.model_id
    log_split_metrics(best.val_metrics, datasets["val"], model_id)
    rows = split_rows(data.parts)
    for split in SPLITS:
        key = metric_key(split, "rows")
        log_split_metrics({key: rows[key]}, datasets[split], model_id)
    metrics = {**best.val_metrics, **rows}
    metrics |= log_classification_report(
        align_probabilities(probabilities, best.model.classes_, data.categories),
        data.labels["test"],
        data.categories,
        title=f"{run_name}: test split",
        dataset=datasets["test"],
        model_id=model_id,
    )
    log.info(
        "%s: test accuracy %.3f, macro-F1 %.3f, top-%d %.3f",
        run_name,
        metrics["test/accuracy"],
        metrics["test/macro_f1"],
        TOP_K,
        metrics[f"test/top{TOP_K}_accuracy"],
    )
    return metrics


# --- the summary ----------------------------------------------------------------------------

PRICE_TABLE = (
    ("test/rmse", "test RMSE (£)", "{:.2f}"),
    ("test/mae", "test MAE (£)", "{:.2f}"),
    ("test/r2_log", "test R² (log price)", "{:.3f}"),
)
IMAGE_TABLE = (
    ("test/accuracy", "test accuracy", "{:.3f}"),
    ("test/macro_f1", "test macro-F1", "{:.3f}"),
    (f"test/top{TOP_K}_accuracy", f"test top-{TOP_K} accuracy", "{:.3f}"),
)
SUMMARY_METRICS = ("test/rmse", "test/r2_log", "test/accuracy", "test/macro_f1")
MODEL_NAMES = {
    ("price", "dummy"): "median (DummyRegressor)",
    ("price", "ridge"): "ridge on TF-IDF + one-hot",
    ("price", "hgb"): "HistGradientBoosting on TF-IDF + one-hot",
    ("image", "dummy"): "most frequent (DummyClassifier)",
    ("image", "logreg"): "logistic regression on pixels + colour + HOG",
}
TABLE_PARAMS = {"ridge": ("alpha",), "logreg": ("feature_size", "C")}


def summary(
    results: Sequence[Result],
    rows: dict[str, dict[str, int]],
    args: argparse.Namespace,
    image_size: int,
) -> dict[str, Any]:
    """What results.json holds: the settings, rows per split and every model's metrics."""
    return {
        "clean": str(args.clean),
        "image_size": image_size,
        "feature_size": args.feature_size,
        "search": args.search,
        "seed": args.seed,
        "rows": rows,
        "models": [
            {
                "task": r.task,
                "model": r.model,
                "run_id": r.run_id,
                "params": r.params,
                "metrics": r.metrics,
            }
            for r in results
        ],
    }


def results_markdown(results: dict[str, Any]) -> str:
    """The README's results tables from a results.json dict; the same input, the same text.

    Older results.json files name metrics the flat way (``test_rmse``): read either."""
    lines = []
    rows = results.get("rows", {})
    for task, columns, title in (
        ("price", PRICE_TABLE, "Price regression"),
        ("image", IMAGE_TABLE, "Image classification"),
    ):
        models = [m for m in results["models"] if m["task"] == task]
        if not models:
            continue
        counts = rows.get(task, {})
        sizes = ", ".join(f"{split} {counts[split]}" for split in SPLITS if split in counts)
        lines.append(f"**{title}** ({sizes} rows)\n")
        lines.append("| model | params | " + " | ".join(header for _, header, _ in columns) + " |")
        lines.append("|---|---|" + "---:|" * len(columns))
        for model in models:
            name = MODEL_NAMES.get((task, model["model"]), model["model"])
            keys = TABLE_PARAMS.get(model["model"], ())
            params = ", ".join(
                f"{k}={model['params'][k]:g}"
                if isinstance(model["params"][k], float)
                else f"{k}={model['params'][k]}"
                for k in keys
                if k in model["params"]
            )
            values = [metric_value(model["metrics"], key) for key, _, _ in columns]
            cells = [
                "" if value is None else fmt.format(value)
                for value, (_, _, fmt) in zip(values, columns, strict=True)
            ]
            lines.append(f"| {name} | {params or '-'} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --- the step -------------------------------------------------------------------------------


def one_blas_thread():
    """A context in which numpy/scipy BLAS runs on one thread.

    The matrices here are small: several BLAS threads gain little, and on a busy machine
    they fight for the cores and make logistic regression ten times slower.
    """
    import scipy.linalg  # noqa: F401 (load scipy's own BLAS so the limit reaches it too)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.baselines", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--clean", type=Path, default=Path("data/clean"), help="the clean data folder"
    )
    parser.add_argument(
        "--image-size",
        type=auto_or_positive_int,
        default="auto",
        help="which cleaned image size to read (images/<size>/); auto: the smallest at least "
        f"as large as the features need ({HOG_SIZE} px or --feature-size), else the largest",
    )
    parser.add_argument(
        "--feature-size",
        type=positive_int,
        default=16,
        help="side of the downsized image whose pixels are features",
    )
    parser.add_argument(
        "--search",
        type=str_to_bool,
        default=True,
        help="choose alpha, C and feature size on the val split (nested runs)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.feature_size < 4:
        raise UserError(f"--feature-size must be at least 4 pixels, got {args.feature_size}")
    clean = load_clean(args.clean, products=True)
    needed = max(args.feature_size, HOG_SIZE)
    clean = clean.at_size(choose_size(args.clean, needed, args.image_size, flag="--image-size"))
    prices = price_table(clean)
    images = image_table(clean)
    rows = {
        "price": check_rows(prices, "price"),
        "image": check_rows(images, "image", "root_category"),
    }

    import mlflow

    with one_blas_thread(), start_run("baselines"):
        # The test split's data, so that steps.learning_path sets these beside the deep models.
        mlflow.set_tags({"step": "baselines", DATA_DIGEST_TAG: data_digest(args.clean)})
        log_params(
            {
                "clean": str(args.clean),
                "image_size": "auto" if args.image_size is None else args.image_size,
                "image_size_used": clean.size,
                "feature_size": args.feature_size,
                "search": args.search,
                "seed": args.seed,
            },
        )
        results = run_price_baselines(
            prices, args.clean / PRODUCTS_FILE, do_search=args.search, seed=args.seed
        )
        results += run_image_baselines(
            images,
            clean.categories,
            args.clean / IMAGES_FILE,
            feature_size=args.feature_size,
            do_search=args.search,
            seed=args.seed,
        )
        report = summary(results, rows, args, clean.size)
        mlflow.log_dict(report, "results.json")
        table = results_markdown(report)
        mlflow.log_text(table, "results.md")
        for result in results:  # the parent's summary: test/price-ridge_rmse ...
            for key in SUMMARY_METRICS:
                if key in result.metrics:
                    name = key.removeprefix("test/")
                    mlflow.log_metric(
                        f"test/{result.task}-{result.model}_{name}", result.metrics[key]
                    )
    print(table)
    return report


run = cli(main)

if __name__ == "__main__":
    run()
