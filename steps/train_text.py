"""Train the text classifier of a listing's category (MLproject entry point ``train_text``).

Reads ``<clean>/products.parquet`` (name, description, root_category, split) and
``<clean>/categories.json``: one row per listing that has photos (so the split is the
image model's, decided per product); the text is the title, a new line, the description
(``marketplace_models.text.listing_text``).

The encoder (``--text-encoder``): empty (the default, offline) for TF-IDF of words and of
character n-grams (``marketplace_models.text.TfidfEncoder``); a Hugging Face model name or a
folder saved with ``save_pretrained`` for a frozen, mean-pooled transformer. The head is a
multinomial logistic regression; its ``C`` is chosen on the validation split among
``--c-values`` (by validation log loss), then it is refit on the train split with that ``C``.

Writes one MLflow run: the parameters, the listings table per split as inputs, each
candidate's validation metrics (``step`` = its position in ``--c-values``) and
``model_selection.json``, the test metrics and ``evaluation/`` artifacts (steps.evaluation:
confusion matrix, per-class report), the pyfunc model ``model`` (``text`` in; see
``marketplace_models/text.py``) and with ``--register true`` a new version of
``--model-name`` tagged ``input=text`` (never its ``production`` alias).

    python -m steps.train_text
    mlflow run . -e train_text --env-manager local
    mlflow run . -e train_text -P text_encoder=sentence-transformers/all-MiniLM-L6-v2 \\
        --env-manager local
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clean_data import DATA_DIGEST_TAG, PRODUCTS_FILE, SPLITS, data_digest, load_clean
from cli import UserError
from marketplace_models.kinds import TEXT
from marketplace_models.text import (
    TFIDF,
    TRANSFORMER,
    TextClassifier,
    TextConfig,
    TfidfEncoder,
    TfidfSettings,
    TransformerEncoder,
    listing_text,
    log_text_classifier,
)
from registry.descriptions import model_description, registration_note
from registry.kinds import INPUT_TAG, TEXT_MODEL_NAME
from registry.promotion import DEFAULT_METRIC
from registry.register import register_described
from steps import runtime
from steps.evaluation import classification_metrics, log_classification_report

log = logging.getLogger(__name__)

RUN_NAME = "train_text"
EVALUATION_DIR = "evaluation"
DEFAULT_C_VALUES = "0.3,1,3,10"
MAX_ITER = 3000
MISSING_CLASS_LOGIT = -30.0  # a category with no train listing: never predicted
EXAMPLE_ROWS = 3


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Listings:
    """The listings with a split: ``product_id``, ``text``, ``label``, ``split``."""

    frame: pd.DataFrame
    categories: list[str]
    folder: Path

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def load_listings(clean: Path) -> Listings:
    """Every listing of the clean data that has a split, with its text and label."""
    data = load_clean(clean, products=True)
    products = data.products
    label_of = {name: index for index, name in enumerate(data.categories)}
    products = products[products["split"].isin(SPLITS)]
    products = products[products["root_category"].isin(label_of)]
    if products.empty:
        raise UserError(
            f"no listing of {Path(clean) / PRODUCTS_FILE} has a split (only listings with "
            "photos get one): run clean_tabular on an export with images"
        )
    frame = pd.DataFrame(
        {
            "product_id": products["product_id"].astype(str).to_numpy(),
            "text": [
                listing_text(name, description)
                for name, description in zip(products["name"], products["description"], strict=True)
            ],
            "label": products["root_category"].map(label_of).astype("int64").to_numpy(),
            "split": products["split"].astype(str).to_numpy(),
        }
    )
    return Listings(frame, list(data.categories), Path(clean))


# --------------------------------------------------------------------------- model


def build_encoder(text_encoder: str, texts: Sequence[str], min_df: int):
    """The encoder, fitted on ``texts`` (TF-IDF) or loaded (a transformer)."""
    if text_encoder.strip():
        return TransformerEncoder.from_pretrained(text_encoder.strip())
    return TfidfEncoder(TfidfSettings(min_df=min_df)).fit(list(texts))


def fit_head(features, labels: np.ndarray, num_classes: int, c: float, seed: int = 0):
    """A multinomial logistic regression's (coef ``(C, F)``, intercept ``(C,)``) in label order.

    A class absent from ``labels`` gets zero weights and a very low intercept.
    """
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    if len(present) < 2:
        raise UserError(
            f"the train split has listings of {len(present)} category: at least 2 are needed"
        )
    model = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's notes on the solver
        model.fit(features, labels)
    coef = np.zeros((num_classes, features.shape[1]))
    intercept = np.full(num_classes, MISSING_CLASS_LOGIT)
    coef[model.classes_] = model.coef_
    intercept[model.classes_] = model.intercept_
    return coef, intercept


def parse_c_values(text: str) -> list[float]:
    try:
        values = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--c-values must be numbers separated by commas, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise UserError(f"--c-values must be numbers above 0, got {text!r}")
    return values


@dataclass
class TextOutcome:
    """What a finished text training produced."""

    classifier: TextClassifier
    c: float
    selection: list[dict[str, float]] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    model_uri: str | None = None
    model_version: str | None = None


def select_and_fit(
    listings: Listings,
    text_encoder: str = "",
    c_values: Sequence[float] = (0.3, 1.0, 3.0, 10.0),
    min_df: int = 2,
    seed: int = 0,
) -> TextOutcome:
    """Fit the encoder and a head per ``C`` on train, keep the best on val (by val loss)."""
    train, val = listings.split("train"), listings.split("val")
    if train.empty:
        raise UserError("the train split has no listings: use a bigger export")
    encoder = build_encoder(text_encoder, train["text"], min_df)
    config = TextConfig(
        categories=listings.categories,
        encoder=TRANSFORMER if text_encoder.strip() else TFIDF,
        encoder_name=text_encoder.strip(),
    )
    train_x = encoder.transform(train["text"].tolist())
    val_x = encoder.transform(val["text"].tolist()) if len(val) else None
    selection, best = [], None
    for c in c_values:
        coef, intercept = fit_head(
            train_x, train["label"].to_numpy(), len(config.categories), c, seed
        )
        classifier = TextClassifier(config, encoder, coef, intercept)
        if val_x is None:  # no validation split: the first candidate it is
            return TextOutcome(classifier, c)
        probabilities = classifier.predict_proba(val["text"].tolist())
        metrics = classification_metrics(probabilities, val["label"].to_numpy(), "val")
        loss = metric_value(metrics, "loss")
        selection.append({"C": c, **metrics})
        if best is None or loss < best[0]:
            best = (loss, c, classifier)
    _, c, classifier = best
    return TextOutcome(classifier, c, selection)


def metric_value(metrics: dict[str, float], suffix: str) -> float:
    """The value of the metric whose name ends in ``suffix`` (``accuracy``, ``loss``), without
    repeating steps.evaluation's naming here."""
    matches = [
        key
        for key in metrics
        if key.endswith(suffix) and not key.removesuffix(suffix).endswith(("top3_", "top3/"))
    ]
    if len(matches) != 1:
        raise KeyError(f"no single metric ending in {suffix!r} among {sorted(metrics)}")
    return metrics[matches[0]]


# --------------------------------------------------------------------------- the run


def _log_inputs(listings: Listings) -> None:
    import mlflow

    source = str((listings.folder / PRODUCTS_FILE).resolve())
    for split in SPLITS:
        frame = listings.split(split)
        if frame.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                frame, source=source, name="listings", targets="label"
            )
            mlflow.log_input(dataset, context=split)


def evaluate_test(outcome: TextOutcome, listings: Listings) -> dict[str, float]:
    test = listings.split("test")
    if test.empty:
        log.warning("the test split is empty: no test metrics")
        return {}
    probabilities = outcome.classifier.predict_proba(test["text"].tolist())
    metrics = log_classification_report(
        probabilities,
        test["label"].to_numpy(),
        listings.categories,
        artifact_dir=EVALUATION_DIR,
        title="text model, test listings",
    )
    log.info(
        "test: accuracy %.3f on %d listings (text only)",
        metric_value(metrics, "accuracy"),
        len(test),
    )
    return metrics


def describe_model(listings: Listings) -> str:
    """The text model's description in the registry (written with its first version)."""
    categories = listings.categories
    return model_description(
        what=f"Classifies a Marketplace listing's text (its title, a new line, its "
        f"description) into one of its {len(categories)} root categories "
        f"(categories: {', '.join(categories)}).",
        input_text="a column `text` of strings; the model tokenises and encodes them itself "
        "(TF-IDF of words and character n-grams, or a frozen transformer).",
        output_text="`category`, `probability` and `probabilities` per text.",
        metric=DEFAULT_METRIC,
    )


def describe_version(outcome: TextOutcome, run, digest: str) -> str:
    """A new text version's description: the encoder, the chosen C, the test figures."""
    config = outcome.classifier.config
    encoder = config.encoder_name or "TF-IDF of words and character n-grams"
    return registration_note(
        summary=f"**{config.encoder}** text classifier ({encoder})",
        run_id=run.info.run_id,
        run_name=RUN_NAME,
        data_digest=digest,
        metrics=outcome.test_metrics,
        details=[f"Logistic regression head, C {outcome.c:g} chosen on the validation split."],
    )


def train_text(args: argparse.Namespace) -> TextOutcome:
    """Train, evaluate and log (and register) the text classifier as one MLflow run."""
    import mlflow

    listings = load_listings(args.clean)
    c_values = parse_c_values(args.c_values)
    with runtime.start_run(RUN_NAME) as run:
        runtime.log_params(
            {
                "clean": str(args.clean),
                "text_encoder": args.text_encoder,
                "c_values": args.c_values,
                "min_df": args.min_df,
                "seed": args.seed,
                "register": str(args.register).lower(),
                "model_name": args.model_name,
            }
        )
        digest = data_digest(args.clean)
        mlflow.set_tags({INPUT_TAG: TEXT, DATA_DIGEST_TAG: digest})
        _log_inputs(listings)
        outcome = select_and_fit(listings, args.text_encoder, c_values, args.min_df, args.seed)
        outcome.run_id = run.info.run_id
        for step, row in enumerate(outcome.selection):
            mlflow.log_metrics({k: v for k, v in row.items() if k != "C"}, step=step)
        mlflow.log_dict(
            {"chosen_C": outcome.c, "candidates": outcome.selection}, "model_selection.json"
        )
        mlflow.log_params({"C_chosen": outcome.c, "encoder": outcome.classifier.config.encoder})
        outcome.test_metrics = evaluate_test(outcome, listings)
        examples = listings.split("test")["text"].head(EXAMPLE_ROWS).tolist() or ["sofa"]
        info = log_text_classifier(outcome.classifier, example_texts=examples)
        outcome.model_uri = info.model_uri
        if args.register:
            tags = {
                **outcome.test_metrics,
                INPUT_TAG: TEXT,
                DATA_DIGEST_TAG: digest,
                "encoder": outcome.classifier.config.encoder,
                "text_encoder": args.text_encoder,
            }
            version = register_described(
                info.model_uri,
                model_name=args.model_name,
                tags=tags,
                model_text=describe_model(listings),
                version_text=describe_version(outcome, run, digest),
            )
            outcome.model_version = str(version.version)
            log.info("registered %s version %s", args.model_name, version.version)
    print(
        json.dumps(
            {"run_id": outcome.run_id, "version": outcome.model_version, **outcome.test_metrics}
        )
    )
    return outcome


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.train_text",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clean", type=Path, default=Path("data/clean"), help="clean data")
    parser.add_argument(
        "--text-encoder",
        type=runtime.optional_text,
        default="",
        help="empty: TF-IDF of words and character n-grams; else a Hugging Face model name "
        "or a save_pretrained folder (a frozen, mean-pooled transformer)",
    )
    parser.add_argument(
        "--c-values",
        default=DEFAULT_C_VALUES,
        help="logistic-regression C candidates, chosen on the validation split",
    )
    parser.add_argument(
        "--min-df",
        type=runtime.positive_int,
        default=2,
        help="TF-IDF: keep terms in at least this many train listings",
    )
    parser.add_argument("--seed", type=runtime.non_negative_int, default=0)
    parser.add_argument("--register", type=runtime.str_to_bool, default=True)
    parser.add_argument("--model-name", default=TEXT_MODEL_NAME, help="registered model")
    return parser


@runtime.cli
def main(argv: Sequence[str] | None = None) -> None:
    train_text(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
