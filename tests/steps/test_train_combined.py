"""``train_combined``'s head data: by default the fusion head never sees a train-split photo.

The image model was fitted to the train photos, so their embeddings are ones it knows by
heart; a head trained on them learns to trust the photo more than it earns on new listings.
These tests check, on what the run records (its ``head/photos.json``, its head inputs and
its counts), that the default head fits and early-stops on validation photos only, by
listing; that ``--head-data train`` (the old way, kept to measure it) is still there; and
that bad values of the new options are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from steps import train_combined
from tests.helpers.demo import register_tiny_version


def _frame() -> pd.DataFrame:
    """40 listings of two photos each: 20 train, 10 val, 10 test."""
    splits = ["train"] * 20 + ["val"] * 10 + ["test"] * 10
    return pd.DataFrame(
        {
            "image_id": [f"{i}-{k}" for i in range(40) for k in range(2)],
            "product_id": [str(i) for i in range(40) for _ in range(2)],
            "split": [s for s in splits for _ in range(2)],
        }
    )


def test_the_default_head_rows_are_validation_photos_split_by_listing() -> None:
    frame = _frame()
    rows = train_combined.head_rows(frame, "val", 0.3, 0.0, seed=0)
    assert set(frame["split"][rows.fit]) == {"val"} and set(frame["split"][rows.stop]) == {"val"}
    fit_ids, stop_ids = set(frame["product_id"][rows.fit]), set(frame["product_id"][rows.stop])
    assert not fit_ids & stop_ids, "a listing's photos stay on one side"
    assert (len(fit_ids), len(stop_ids)) == (7, 3)
    assert (rows.fit | rows.stop).sum() == 20, "every validation photo is used"
    np.testing.assert_array_equal(rows.fit_weights(), np.ones(14))


def test_train_photos_join_the_val_head_only_at_their_weight() -> None:
    frame = _frame()
    rows = train_combined.head_rows(frame, "val", 0.3, 0.2, seed=0)
    train = (frame["split"] == "train").to_numpy()
    assert rows.fit[train].all() and not rows.stop[train].any()
    np.testing.assert_array_equal(rows.weight[train], 0.2)
    assert (rows.weight[~train] == 1.0).all()


def test_head_data_train_is_the_old_way() -> None:
    frame = _frame()
    rows = train_combined.head_rows(frame, "train", 0.3, 0.0, seed=0)
    np.testing.assert_array_equal(rows.fit, (frame["split"] == "train").to_numpy())
    np.testing.assert_array_equal(rows.stop, (frame["split"] == "val").to_numpy())


def test_too_few_validation_listings_is_a_clear_error() -> None:
    frame = _frame()
    frame = frame[(frame["split"] != "val") | (frame["product_id"] == "20")]
    with pytest.raises(train_combined.UserError, match="at least 2 validation listings"):
        train_combined.head_rows(frame.reset_index(drop=True), "val", 0.3, 0.0, seed=0)
    with pytest.raises(train_combined.UserError, match="head_data must be one of val, train"):
        train_combined.head_rows(_frame(), "test", 0.3, 0.0, seed=0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--head-data", "test", "expected one of val, train"),
        ("--head-stop-fraction", "0", "expected a fraction in (0, 1)"),
        ("--head-stop-fraction", "1", "expected a fraction in [0, 1)"),
        ("--train-weight", "1.5", "expected a weight in [0, 1]"),
        ("--train-weight", "lots", "expected a number"),
    ],
)
def test_bad_head_options_are_one_line_errors(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        train_combined.main([option, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and option in error and message in error, error


# ------------------------------------------------------------------ the step, logged


def _run(demo_clean: Path, *extra: str) -> mlflow.entities.Run:
    argv = ["--clean", str(demo_clean), "--epochs", "4", "--patience", "2", "--folds", "3"]
    argv += ["--c-values", "3", "--register", "false", *extra]
    outcome = train_combined.train_combined(train_combined.get_args_parser().parse_args(argv))
    return mlflow.MlflowClient().get_run(outcome.run_id)


def _split_of(demo_clean: Path) -> dict[str, str]:
    images = pd.read_parquet(demo_clean / "images.parquet", columns=["image_id", "split"])
    return dict(zip(images["image_id"].astype(str), images["split"], strict=True))


def _head_inputs(run: mlflow.entities.Run) -> dict[str, int]:
    """Rows of each recorded head input, by its context."""
    found = {}
    for dataset_input in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in dataset_input.tags}.get("mlflow.data.context", "")
        if context.startswith("head_"):
            found[context] = json.loads(dataset_input.dataset.profile)["num_rows"]
    return found


def test_the_default_head_never_sees_a_train_split_photo(tracking: str, demo_clean: Path) -> None:
    register_tiny_version(demo_clean)
    run = _run(demo_clean)
    assert run.data.params["head_data"] == "val"
    metrics = run.data.metrics
    assert metrics["head_fit_photos/train"] == 0 and metrics["head_stop_photos/train"] == 0
    assert metrics["head_fit_photos/test"] == 0 and metrics["head_stop_photos/test"] == 0
    assert metrics["head_fit_photos/val"] > 0 and metrics["head_stop_photos/val"] > 0
    assert metrics["head_fit_seconds"] > 0
    assert "text_oof_seconds" not in metrics, "no train photo: no out-of-fold text model"
    for key in ("test/accuracy", "test_image_only/accuracy", "test_text_only/accuracy"):
        assert 0 <= metrics[key] <= 1, key

    photos = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/head/photos.json")
    split_of = _split_of(demo_clean)
    assert {split_of[i] for i in photos["fit"]["image_id"] + photos["stop"]["image_id"]} == {"val"}
    products = pd.read_parquet(demo_clean / "images.parquet", columns=["image_id", "product_id"])
    listing = dict(zip(products["image_id"].astype(str), products["product_id"], strict=True))
    fit_listings = {listing[i] for i in photos["fit"]["image_id"]}
    assert not fit_listings & {listing[i] for i in photos["stop"]["image_id"]}
    assert _head_inputs(run) == {
        "head_fit": metrics["head_fit_photos/val"],
        "head_stop": metrics["head_stop_photos/val"],
    }


def test_head_data_train_fits_on_train_photos_with_out_of_fold_text(
    tracking: str, demo_clean: Path
) -> None:
    register_tiny_version(demo_clean)
    run = _run(demo_clean, "--head-data", "train")
    metrics = run.data.metrics
    assert metrics["head_fit_photos/val"] == 0 and metrics["head_fit_photos/train"] > 0
    assert metrics["head_stop_photos/train"] == 0 and metrics["head_stop_photos/val"] > 0
    assert metrics["text_oof_seconds"] > 0
    photos = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/head/photos.json")
    assert {_split_of(demo_clean)[i] for i in photos["fit"]["image_id"]} == {"train"}
    # The image model alone on the photos the head fits on: measured, to show the leak.
    assert "head_fit_image_only/accuracy" in metrics
