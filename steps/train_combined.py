"""Train the combined photo + text classifier (MLproject entry point ``train_combined``).

Reads a registered image model (``--image-model-uri``; default the version of
``marketplace-classifier`` that holds ``production``, else its newest), the clean data's
``images.parquet``, ``products.parquet``, ``categories.json`` and the cleaned JPEGs in
``images/<clean_size>/``.

One row per photo, as the service receives a listing (a photo and its listing's text):

* the photo's embedding by the image model: ``unwrap_python_model().embed``, batched by
  the index step's own :func:`steps.index.embed_photos`;
* the listing text's class probabilities by a text classifier fitted here on the train
  listings (``steps.train_text``: the same encoder, ``C`` chosen on validation);
* the head (``marketplace_models.listing.FusionHead``: the L2-normalised embedding and the
  text probabilities side by side, one hidden layer) trained with AdamW, per-epoch metrics
  with ``step=epoch`` (``train/...`` on the photos it fits on, ``val/...`` on those it
  early-stops on), early-stopped on that loss (``--patience``), the best epoch kept.

Which photos the head learns from (``--head-data``) is what decides how far it trusts each
half. Its features must be as honest as the ones it will get on a new listing: from an
image model and a text model that never fitted that listing. The train photos are not: the
image model was fitted to them (it classifies them far better than new photos), so a head
trained there learns to over-trust the photo. Hence the default, ``val``: the head fits on
the validation photos, whose embeddings the image model never fitted (it only chose its
epoch on them), and whose text probabilities come from the text model fitted on train;
``--head-stop-fraction`` of the validation *listings* (all of a listing's photos on one
side) are held back for the head's own early stopping. This is cheaper than cross-fitting
K image models (K trainings of the network) and honest on both halves at once; what it
costs is data (the head learns from a few hundred photos instead of a few thousand).
``--train-weight`` adds the train photos at a lower weight (their text
probabilities then out-of-fold: ``--folds`` folds by listing, each from a classifier that
did not see it). ``--head-data train`` is the old way (fit on train, stop on all of
validation), kept so the leak stays measurable. The head's photos are recorded: counts per
split (``head_fit_photos/<split>``, ``head_stop_photos/<split>``), their ids
(``head/photos.json``), the two tables as inputs (``head_fit``, ``head_stop``), the image
model alone on them (``head_fit_image_only/...``) and the fit's time
(``head_fit_seconds``).

Reported on the test photos like the image model (steps.evaluation: accuracy, top-3,
macro-F1, loss, confusion matrix, per-class report), and on the same photos, for the
side-by-side: the image model alone (``test_image_only/...``) and the text alone
(``test_text_only/...``).

Writes one MLflow run: parameters, the photos table per split as inputs, the metrics, the
pyfunc model ``model`` (``image`` and ``text`` in; it carries the image network, the text
classifier and the head: ``marketplace_models/listing.py``) and with ``--register true`` a new
version of ``--model-name`` tagged ``input=image+text`` and ``image_model`` (never its
``production`` alias).

    python -m steps.train_combined
    mlflow run . -e train_combined -P image_model_uri=models:/marketplace-classifier/3 \\
        --env-manager local
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clean_data import (
    DATA_DIGEST_TAG,
    IMAGES_FILE,
    SPLITS,
    choose_size,
    data_digest,
    image_folder,
    load_clean,
)
from cli import UserError
from marketplace_models.kinds import IMAGE_TEXT
from marketplace_models.listing import (
    FusionConfig,
    FusionHead,
    fusion_features,
    head_probabilities,
    log_listing_classifier,
)
from registry.descriptions import model_description, registration_note
from registry.kinds import INPUT_TAG, LISTING_MODEL_NAME
from registry.promotion import DEFAULT_METRIC
from registry.register import register_described
from registry.resolve import ResolvedModel, pinned
from registry.store import DEFAULT_MODEL_NAME, PRODUCTION, connect
from registry.versions import alias_holder, get_version
from steps import runtime
from steps.evaluation import classification_metrics, log_classification_report
from steps.index import embed_photos, load_embedder
from steps.train_text import (
    DEFAULT_C_VALUES,
    Listings,
    build_encoder,
    fit_head,
    load_listings,
    metric_value,
    parse_c_values,
    select_and_fit,
)
from steps.training.loop import EarlyStopping

log = logging.getLogger(__name__)

RUN_NAME = "train_combined"
EVALUATION_DIR = "evaluation"
IMAGE_MODEL_TAG = "image_model"
HEAD_DATA = ("val", "train")
HEAD_PHOTOS_FILE = "head/photos.json"


# --------------------------------------------------------------------------- inputs


def resolve_image_model(uri: str, model_name: str = DEFAULT_MODEL_NAME) -> ResolvedModel:
    """The image model: ``uri`` pinned to its version, or ``model_name``'s production version
    (its newest when none holds production)."""
    from registry.resolve import resolve_model

    client = connect()
    if uri.strip():
        return resolve_model(uri.strip(), client)
    _require_image_model(client, model_name)
    holder = alias_holder(client, model_name, PRODUCTION)
    version = holder or get_version(client, model_name, "latest")
    how = f"@{PRODUCTION}" if holder else "/latest"
    return pinned(f"models:/{model_name}{how}", version)


def _require_image_model(client, name: str) -> None:
    from registry.versions import require_model

    try:
        require_model(client, name)
    except UserError:
        raise UserError(
            f"no registered image model {name!r} to embed photos with: train one first "
            "(`mlflow run . -e train --env-manager local`), or pass image_model_uri"
        ) from None


@dataclass(frozen=True)
class Photos:
    """One row per photo with a split: ``image_id``, ``product_id``, ``label``, ``split``,
    ``path`` and its listing's ``text``."""

    frame: pd.DataFrame
    categories: list[str]

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def load_photos(listings: Listings, clean: Path, clean_size: int | None, needed: int) -> Photos:
    """The photos of the listings, at ``images/<clean_size>/`` (auto: at least ``needed`` px)."""
    size = choose_size(clean, needed, clean_size, flag="--clean-size")
    data = load_clean(clean, columns=("image_id", "product_id", "label", "split"))
    frame = data.images[data.images["split"].isin(SPLITS)].copy()
    frame["product_id"] = frame["product_id"].astype(str)
    text_of = listings.frame.set_index("product_id")["text"]
    frame = frame[frame["product_id"].isin(text_of.index)]
    folder = image_folder(clean, size)
    frame["path"] = [folder / f"{image_id}.jpg" for image_id in frame["image_id"]]
    present = frame["path"].map(Path.is_file)
    if not present.all():
        log.warning("%d photos have no cleaned JPEG in %s: left out", int((~present).sum()), folder)
    frame = frame[present].reset_index(drop=True)
    if frame.empty:
        raise UserError(f"no cleaned photo in {folder}: run clean_images with --size {size}")
    frame["text"] = frame["product_id"].map(text_of).to_numpy()
    return Photos(frame, listings.categories)


# --------------------------------------------------------------------------- text


def out_of_fold_probabilities(
    train: pd.DataFrame,
    text_encoder: str,
    c: float,
    min_df: int,
    num_classes: int,
    folds: int,
    seed: int,
) -> np.ndarray:
    """Class probabilities ``(N, C)`` of each train listing by a text classifier fitted on
    the other folds (same encoder settings and ``C``)."""
    from marketplace_models.text import TextClassifier, TextConfig

    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(train)) % max(2, folds)
    texts = train["text"].tolist()
    labels = train["label"].to_numpy()
    probabilities = np.zeros((len(train), num_classes))
    shared = build_encoder(text_encoder, texts, min_df) if text_encoder.strip() else None
    for fold in np.unique(fold_of):
        held = fold_of == fold
        fitted = [t for t, h in zip(texts, held, strict=True) if not h]
        encoder = shared or build_encoder("", fitted, min_df)
        features = encoder.transform(fitted)
        coef, intercept = fit_head(features, labels[~held], num_classes, c, seed)
        classifier = TextClassifier(
            TextConfig(categories=[str(i) for i in range(num_classes)]), encoder, coef, intercept
        )
        probabilities[held] = classifier.predict_proba(
            [t for t, h in zip(texts, held, strict=True) if h]
        )
    return probabilities


# --------------------------------------------------------------------------- head


@dataclass(frozen=True)
class HeadRows:
    """Which photos (masks over :attr:`Photos.frame`) the head fits on, with what weight
    each, and which it early-stops on."""

    fit: np.ndarray
    stop: np.ndarray
    weight: np.ndarray

    def fit_weights(self) -> np.ndarray:
        return self.weight[self.fit]


def head_rows(
    frame: pd.DataFrame, head_data: str, stop_fraction: float, train_weight: float, seed: int
) -> HeadRows:
    """The head's fit and early-stopping photos for ``--head-data``.

    ``val``: the validation listings, ``stop_fraction`` of them (drawn by listing, so a
    listing's photos stay on one side) held back for early stopping, the rest to fit on;
    with ``train_weight`` > 0 the train photos join the fit rows at that weight.
    ``train``: the train photos, early-stopped on all the validation photos.
    """
    split = frame["split"].to_numpy()
    weight = np.ones(len(frame))
    if head_data == "train":
        return HeadRows(split == "train", split == "val", weight)
    if head_data not in HEAD_DATA:
        raise UserError(f"head_data must be one of {', '.join(HEAD_DATA)}, got {head_data!r}")
    listings = np.sort(frame.loc[split == "val", "product_id"].unique())
    if len(listings) < 2:
        raise UserError(
            f"head_data val needs at least 2 validation listings (to fit and to stop on), "
            f"found {len(listings)}: use more data, or --head-data train"
        )
    held = max(1, min(len(listings) - 1, round(stop_fraction * len(listings))))
    stop_ids = np.random.default_rng(seed).permutation(listings)[:held]
    stop = (split == "val") & frame["product_id"].isin(stop_ids).to_numpy()
    fit = (split == "val") & ~stop
    if train_weight > 0:
        fit = fit | (split == "train")
        weight[split == "train"] = train_weight
    return HeadRows(fit, stop, weight)


@dataclass
class HeadOutcome:
    head: FusionHead
    best_epoch: int
    records: list[dict[str, float]] = field(default_factory=list)


def train_head(
    config: FusionConfig,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    epochs: int,
    patience: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    on_epoch=None,
    sample_weight: np.ndarray | None = None,
) -> HeadOutcome:
    """Train the fusion head; keep the weights of the epoch with the best validation loss.

    ``on_epoch(record, epoch)`` gets each epoch's train and validation metrics;
    ``sample_weight`` (one per train row, default all 1) scales each row's loss.
    """
    torch.manual_seed(seed)
    head = FusionHead(config)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    x = torch.from_numpy(train_x.astype(np.float32))
    y = torch.from_numpy(train_y.astype(np.int64))
    w = torch.ones(len(x)) if sample_weight is None else torch.from_numpy(sample_weight).float()
    generator = torch.Generator().manual_seed(seed)
    stopper = EarlyStopping(patience)
    best_state, records = None, []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        head.train()
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            weight = w[batch]
            losses = criterion(head(x[batch]), y[batch]) * weight
            loss = losses.sum() / weight.sum().clamp_min(1e-12)
            loss.backward()
            optimizer.step()
        record = classification_metrics(head_probabilities(head, train_x), train_y, "train")
        val_metrics = classification_metrics(head_probabilities(head, val_x), val_y, "val")
        record.update(val_metrics)
        record["epoch_seconds"] = time.perf_counter() - started
        records.append(record)
        if stopper.update(metric_value(val_metrics, "loss"), epoch):
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if on_epoch is not None:
            on_epoch(record, epoch)
        if stopper.should_stop:
            log.info("early stop after epoch %d (best %d)", epoch, stopper.best_epoch)
            break
    head.load_state_dict(best_state)
    head.eval()
    return HeadOutcome(head, stopper.best_epoch, records)


# --------------------------------------------------------------------------- the run


@dataclass
class CombinedOutcome:
    run_id: str
    best_epoch: int
    test_metrics: dict[str, float]
    reference_metrics: dict[str, float]
    model_uri: str | None = None
    model_version: str | None = None


def _image_probabilities(python_model, embeddings: np.ndarray) -> np.ndarray:
    """The image model's own answer from its embeddings: its ``fc`` layer, softmaxed."""
    with torch.inference_mode():
        logits = python_model.net.fc(torch.from_numpy(embeddings).to(python_model.device))
        return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)


def _log_inputs(photos: Photos, clean: Path) -> None:
    import mlflow

    source = str((Path(clean) / IMAGES_FILE).resolve())
    for split in SPLITS:
        frame = photos.split(split).drop(columns=["path"])
        if frame.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name="photos", targets="label")
            mlflow.log_input(dataset, context=split)


def describe_model(categories: list[str]) -> str:
    """The photo + text model's description in the registry (with its first version)."""
    return model_description(
        what=f"Classifies a Marketplace listing from its photo and its text together into one "
        f"of its {len(categories)} root categories (a registered image model's embedding and "
        f"a text model's probabilities, fused by a small MLP; categories: "
        f"{', '.join(categories)}).",
        input_text="columns `image` (JPEG or PNG bytes) and `text` (title and description); "
        "the model prepares both itself, as training did.",
        output_text="`category`, `probability` and `probabilities` per listing photo.",
        metric=DEFAULT_METRIC,
    )


def describe_version(result: CombinedOutcome, image_model_uri: str, digest: str) -> str:
    """A new photo + text version's description: its image model, its epochs, its figures."""
    return registration_note(
        summary="**photo + text** classifier",
        run_id=result.run_id,
        run_name=RUN_NAME,
        data_digest=digest,
        metrics=result.test_metrics,
        details=[
            f"Photos embedded by `{image_model_uri}`; best epoch {result.best_epoch} of the "
            "fusion head."
        ],
    )


def train_combined(args: argparse.Namespace) -> CombinedOutcome:
    import mlflow

    image = resolve_image_model(args.image_model_uri, args.image_model_name)
    listings = load_listings(args.clean)
    with runtime.start_run(RUN_NAME) as run:
        runtime.log_params(
            {
                key: (str(value).lower() if isinstance(value, bool) else value)
                for key, value in vars(args).items()
            }
        )
        digest = data_digest(args.clean)
        mlflow.set_tags(
            {INPUT_TAG: IMAGE_TEXT, IMAGE_MODEL_TAG: image.load_uri, DATA_DIGEST_TAG: digest}
        )
        embedder = load_embedder(image)
        photos = load_photos(listings, args.clean, args.clean_size, embedder.config.image_size)
        mlflow.log_param("clean_size_used", photos.frame["path"].iloc[0].parent.name)
        _log_inputs(photos, args.clean)

        log.info("embedding %d photos with %s", len(photos.frame), image.load_uri)
        embeddings = embed_photos(embedder, list(photos.frame["path"]), args.batch_size)
        by_split = {s: (photos.frame["split"] == s).to_numpy() for s in SPLITS}
        if not by_split["val"].any():
            raise UserError("the validation split has no photos: early stopping needs some")
        rows = head_rows(
            photos.frame, args.head_data, args.head_stop_fraction, args.train_weight, args.seed
        )
        text, text_probabilities = fit_text_side(
            args, listings, photos, rows.fit & by_split["train"]
        )
        features = fusion_features(embeddings, text_probabilities)
        labels = photos.frame["label"].to_numpy()

        config = FusionConfig(
            categories=listings.categories,
            image_dim=embeddings.shape[1],
            text_dim=len(listings.categories),
            hidden=args.hidden,
            dropout=args.dropout,
            image_model_uri=image.load_uri,
            extra={"head_data": args.head_data},
        )
        outcome = fit_fusion_head(args, config, features, labels, rows, photos)
        log_head_fit_image_accuracy(embedder, embeddings, labels, rows)
        mlflow.log_metric("best_epoch", outcome.best_epoch)

        test = by_split["test"]
        test_metrics, reference = {}, {}
        if test.any():
            test_metrics, reference = evaluate_on_test(
                outcome.head,
                features[test],
                labels[test],
                _image_probabilities(embedder, embeddings[test]),
                text_probabilities[test],
                listings.categories,
            )
        result = CombinedOutcome(run.info.run_id, outcome.best_epoch, test_metrics, reference)
        log_and_register(args, result, embedder, text, outcome, config, photos, image, digest)
    print(json.dumps({"run_id": result.run_id, "version": result.model_version, **test_metrics}))
    return result


def fit_fusion_head(args, config, features, labels, rows: HeadRows, photos: Photos):
    """Train the head on ``rows`` (per-epoch ``train/...`` on its fit photos, ``val/...`` on
    its early-stopping photos), log what it saw and how long it took."""
    import mlflow

    log.info(
        "fusion head on %s photos: %d to fit (%d of them train-split), %d to stop on",
        args.head_data,
        int(rows.fit.sum()),
        int((rows.fit & (photos.frame["split"] == "train").to_numpy()).sum()),
        int(rows.stop.sum()),
    )
    started = time.perf_counter()
    outcome = train_head(
        config,
        features[rows.fit],
        labels[rows.fit],
        features[rows.stop],
        labels[rows.stop],
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
        on_epoch=lambda record, epoch: mlflow.log_metrics(record, step=epoch),
        sample_weight=rows.fit_weights(),
    )
    mlflow.log_metric("head_fit_seconds", time.perf_counter() - started)
    _log_head_photos(photos, rows, str((Path(args.clean) / IMAGES_FILE).resolve()))
    return outcome


def _log_head_photos(photos: Photos, rows: HeadRows, source: str) -> None:
    """The head's photos: counts by split as metrics, ``head/photos.json`` (image ids by
    role) and the two tables as inputs (contexts ``head_fit``, ``head_stop``)."""
    import mlflow

    split = photos.frame["split"].to_numpy()
    for role, mask in (("fit", rows.fit), ("stop", rows.stop)):
        for name in SPLITS:
            mlflow.log_metric(f"head_{role}_photos/{name}", int((mask & (split == name)).sum()))
    mlflow.log_dict(
        {
            role: {
                "image_id": photos.frame.loc[mask, "image_id"].astype(str).tolist(),
                "weight": rows.weight[mask].tolist(),
            }
            for role, mask in (("fit", rows.fit), ("stop", rows.stop))
        },
        HEAD_PHOTOS_FILE,
    )
    frame = photos.frame.drop(columns=["path"])
    for role, mask in (("head_fit", rows.fit), ("head_stop", rows.stop)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                frame[mask], source=source, name="photos", targets="label"
            )
            mlflow.log_input(dataset, context=role)


def log_head_fit_image_accuracy(embedder, embeddings, labels, rows: HeadRows) -> None:
    """``head_fit_image_only/...``: the image model alone on the head's fit photos; far
    above its test figure, it says the head learns from photos the image model fitted."""
    import mlflow

    mlflow.log_metrics(
        classification_metrics(
            _image_probabilities(embedder, embeddings[rows.fit]),
            labels[rows.fit],
            "head_fit_image_only",
        )
    )


def fit_text_side(args: argparse.Namespace, listings, photos, train: np.ndarray):
    """The text classifier (C chosen on validation) and each photo's text probabilities,
    out-of-fold for the ``train`` photos (the train-split photos the head fits on), so the
    head never learns from the text model's fit to the very listings it was trained on.
    Without such photos (``--head-data val``) no out-of-fold model is fitted."""
    import mlflow

    log.info("text classifier: C chosen on validation")
    text = select_and_fit(
        listings, args.text_encoder, parse_c_values(args.c_values), args.min_df, args.seed
    )
    mlflow.log_params({"text_C": text.c, "text_encoder_kind": text.classifier.config.encoder})
    probabilities = text.classifier.predict_proba(photos.frame["text"].tolist())
    if not train.any():
        return text, probabilities
    log.info("out-of-fold text probabilities for the %d train photos", int(train.sum()))
    started = time.perf_counter()
    train_listings = listings.split("train")
    oof = out_of_fold_probabilities(
        train_listings,
        args.text_encoder,
        text.c,
        args.min_df,
        len(listings.categories),
        args.folds,
        args.seed,
    )
    row_of = {pid: i for i, pid in enumerate(train_listings["product_id"])}
    train_rows = np.flatnonzero(train)
    probabilities[train_rows] = oof[
        [row_of[pid] for pid in photos.frame["product_id"].iloc[train_rows]]
    ]
    mlflow.log_metric("text_oof_seconds", time.perf_counter() - started)
    return text, probabilities


def evaluate_on_test(
    head, features, labels, image_probabilities, text_probabilities, categories
) -> tuple[dict[str, float], dict[str, float]]:
    """The combined model's test report, and the image and text models alone on the same
    test photos (``test_image_only/...``, ``test_text_only/...``), all logged."""
    import mlflow

    test_metrics = log_classification_report(
        head_probabilities(head, features),
        labels,
        categories,
        artifact_dir=EVALUATION_DIR,
        title="photo + text model, test photos",
    )
    reference = {
        **classification_metrics(image_probabilities, labels, "test_image_only"),
        **classification_metrics(text_probabilities, labels, "test_text_only"),
    }
    mlflow.log_metrics(reference)
    log.info(
        "test photos: combined %.3f, image alone %.3f, text alone %.3f (accuracy)",
        metric_value(test_metrics, "accuracy"),
        metric_value({k: v for k, v in reference.items() if "image" in k}, "accuracy"),
        metric_value({k: v for k, v in reference.items() if "text" in k}, "accuracy"),
    )
    return test_metrics, reference


def log_and_register(args, result, embedder, text, outcome, config, photos, image, digest):
    """Log the photo + text model in the active run and, with ``--register``, register it
    described; ``result`` gets the model URI and the version."""
    has_test = bool(result.test_metrics)
    first = photos.split("test") if has_test else photos.split("val")
    info = log_listing_classifier(
        embedder.net.cpu().eval(),
        embedder.config,
        text.classifier,
        outcome.head,
        config,
        example_image=Path(first["path"].iloc[0]).read_bytes(),
        example_text=str(first["text"].iloc[0]),
    )
    result.model_uri = info.model_uri
    if not args.register:
        return
    tags = {
        **result.test_metrics,
        INPUT_TAG: IMAGE_TEXT,
        IMAGE_MODEL_TAG: image.load_uri,
        DATA_DIGEST_TAG: digest,
        "best_epoch": outcome.best_epoch,
    }
    version = register_described(
        info.model_uri,
        model_name=args.model_name,
        tags=tags,
        model_text=describe_model(config.categories),
        version_text=describe_version(result, image.load_uri, digest),
    )
    result.model_version = str(version.version)
    log.info("registered %s version %s", args.model_name, version.version)


def head_data(value: str) -> str:
    """argparse type: ``val`` or ``train``."""
    text = str(value).strip().lower()
    if text not in HEAD_DATA:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(HEAD_DATA)} (the photos the head fits on), got {value!r}"
        )
    return text


def open_fraction(value: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    number = runtime.fraction(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {value}")
    return number


def weight(value: str) -> float:
    """argparse type: a loss weight in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a weight in [0, 1], got {value}")
    return number


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.train_combined",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clean", type=Path, default=Path("data/clean"), help="clean data")
    parser.add_argument(
        "--image-model-uri",
        type=runtime.optional_text,
        default="",
        help="the image model to embed photos with (models:/<name>/<version>, "
        "models:/<name>@<alias>, ...); empty: --image-model-name's production version, "
        "else its newest",
    )
    parser.add_argument("--image-model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument(
        "--clean-size",
        type=runtime.auto_or_positive_int,
        default="auto",
        help="which images/<size>/ to read; auto: the smallest at least the model's image size",
    )
    parser.add_argument(
        "--text-encoder",
        type=runtime.optional_text,
        default="",
        help="none: TF-IDF; else a Hugging Face model or folder",
    )
    parser.add_argument("--c-values", default=DEFAULT_C_VALUES, help="text head C candidates")
    parser.add_argument("--min-df", type=runtime.positive_int, default=2)
    parser.add_argument(
        "--folds", type=runtime.positive_int, default=5, help="out-of-fold text probabilities"
    )
    parser.add_argument(
        "--head-data",
        type=head_data,
        default="val",
        help="the photos the head fits on: val (the validation photos, which the image model "
        "never fitted; --head-stop-fraction of their listings held back to early-stop on) or "
        "train (the train photos, early-stopped on validation: the image side leaks)",
    )
    parser.add_argument(
        "--head-stop-fraction",
        type=open_fraction,
        default=0.25,
        help="with --head-data val: the share of validation listings held back to early-stop on",
    )
    parser.add_argument(
        "--train-weight",
        type=weight,
        default=0.0,
        help="with --head-data val: the train photos join the head's fit at this loss weight "
        "(0: left out; their image features are ones the image model fitted)",
    )
    parser.add_argument(
        "--epochs",
        type=runtime.positive_int,
        default=200,
        help="the most epochs (early stopping ends sooner: a validation-sized fit needs more)",
    )
    parser.add_argument(
        "--patience",
        type=runtime.non_negative_int,
        default=8,
        help="early stopping: epochs without a better val loss (0 = never stop early)",
    )
    parser.add_argument("--hidden", type=runtime.positive_int, default=128)
    parser.add_argument("--dropout", type=runtime.fraction, default=0.3)
    parser.add_argument("--lr", type=runtime.positive_float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=runtime.positive_int, default=64)
    parser.add_argument("--seed", type=runtime.non_negative_int, default=0)
    parser.add_argument("--register", type=runtime.str_to_bool, default=True)
    parser.add_argument("--model-name", default=LISTING_MODEL_NAME, help="registered model")
    return parser


@runtime.cli
def main(argv: Sequence[str] | None = None) -> None:
    train_combined(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    main()
