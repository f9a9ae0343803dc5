"""The combined photo + text classifier: fusion, training, the logged pyfunc, the registry.

Unit tests for the fused features, the out-of-fold text probabilities and the head's
training (it learns what neither half knows alone); the ``train_combined`` step on the
small demo export against a real temporary store, over a registered image version (a
random-weights resnet18, as the index step's tests use); the loaded version reproduces
the run's test figures exactly; promotion, rollback and the smoke check of its versions.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from marketplace_models.kinds import IMAGE_TEXT
from marketplace_models.listing import FusionConfig, fusion_features, head_probabilities
from registry.kinds import INPUT_TAG, LISTING_MODEL_NAME
from steps import train_combined
from steps.evaluation import classification_metrics
from tests.helpers.demo import register_tiny_version


def test_fusion_features_are_the_normalised_embedding_then_the_text_probabilities() -> None:
    embeddings = np.array([[3.0, 4.0], [0.0, 2.0]])
    text = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]])
    features = fusion_features(embeddings, text)
    assert features.shape == (2, 5) and features.dtype == np.float32
    np.testing.assert_allclose(features[:, :2], [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(features[:, 2:], text, rtol=1e-6)
    with pytest.raises(ValueError, match="2 image embeddings but 1 texts"):
        fusion_features(embeddings, text[:1])


def test_the_head_reads_from_its_arrays_without_torch_and_from_its_state_dict_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fusion.npz`` gives the head's probabilities with numpy alone; a version logged
    before it (``fusion.pt`` only) is read with torch, and without torch is refused with
    the extra to install."""
    import sys

    import torch

    from marketplace_models.errors import NeedsTorch
    from marketplace_models.fusion import (
        FUSION_ARRAYS_ARTIFACT,
        FUSION_ARTIFACT,
        HeadWeights,
        read_head_weights,
    )
    from marketplace_models.listing import FusionHead, head_weights

    config = FusionConfig(categories=list("abc"), image_dim=6, text_dim=3, hidden=5)
    torch.manual_seed(0)
    head = FusionHead(config).eval()
    features = np.random.default_rng(0).normal(size=(4, 9)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(head(torch.from_numpy(features)), dim=1).numpy()
    torch.save(head.state_dict(), tmp_path / "fusion.pt")
    arrays = head_weights(head).save(tmp_path / "fusion.npz")
    np.testing.assert_allclose(head_probabilities(head, features), expected, atol=1e-6)

    old = {FUSION_ARTIFACT: tmp_path / "fusion.pt"}
    new = {**old, FUSION_ARRAYS_ARTIFACT: arrays}
    np.testing.assert_allclose(read_head_weights(old).probabilities(features), expected, atol=1e-6)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails from here on
    loaded = read_head_weights(new)
    assert isinstance(loaded, HeadWeights)
    np.testing.assert_allclose(loaded.probabilities(features), expected, atol=1e-6)
    with pytest.raises(NeedsTorch, match=r"logged before fusion.npz.*marketplace-search\[train\]"):
        read_head_weights(old)


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels in 4 classes; the "image" half tells the pair {0,1} from {2,3}, the "text"
    half tells the class within a pair, so only both together tell the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(4, size=n)
    image = np.zeros((n, 8))
    image[np.arange(n), (labels // 2) * 4 + rng.integers(4, size=n)] = 1.0
    image += rng.normal(0, 0.05, size=image.shape)
    text = np.full((n, 4), 0.05)
    within = labels % 2
    text[np.arange(n), within] += 0.45
    text[np.arange(n), 2 + within] += 0.45
    return image, text, labels


def test_the_head_learns_what_neither_half_knows_alone_and_keeps_its_best_epoch() -> None:
    config = FusionConfig(categories=list("abcd"), image_dim=8, text_dim=4, hidden=32)
    train = _halves(400, seed=1)
    val = _halves(100, seed=2)
    test = _halves(200, seed=3)
    records = []
    outcome = train_combined.train_head(
        config,
        fusion_features(train[0], train[1]),
        train[2],
        fusion_features(val[0], val[1]),
        val[2],
        epochs=40,
        patience=5,
        lr=3e-3,
        weight_decay=0.0,
        batch_size=32,
        seed=0,
        on_epoch=lambda record, epoch: records.append((epoch, record)),
    )
    probabilities = head_probabilities(outcome.head, fusion_features(test[0], test[1]))
    accuracy = (probabilities.argmax(axis=1) == test[2]).mean()
    assert accuracy > 0.9, "each half alone can reach at most 0.5"
    assert [epoch for epoch, _ in records] == list(range(1, len(records) + 1))
    val_losses = [
        next(v for k, v in r.items() if k.startswith("val") and "loss" in k) for _, r in records
    ]
    assert outcome.best_epoch == int(np.argmin(val_losses)) + 1
    again = head_probabilities(outcome.head, fusion_features(val[0], val[1]))
    best = classification_metrics(again, val[2], "val")
    assert min(val_losses) == pytest.approx(next(v for k, v in best.items() if "loss" in k))


def test_out_of_fold_text_probabilities_never_come_from_a_model_that_saw_the_listing() -> None:
    # Each listing's words are its own: a model that saw it would be sure of it.
    words = [f"item{i}" for i in range(40)]
    train = pd.DataFrame(
        {"text": [f"{w} {w}x" for w in words], "label": [i % 2 for i in range(40)]}
    )
    oof = train_combined.out_of_fold_probabilities(
        train, "", c=100.0, min_df=1, num_classes=2, folds=4, seed=0
    )
    assert oof.shape == (40, 2)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, rtol=1e-9)
    assert np.abs(oof - 0.5).max() < 0.05, "unseen words: no better than the prior"


# ------------------------------------------------------------------ the step, logged


@pytest.fixture
def image_version(tracking: str, demo_clean: Path) -> str:
    return str(register_tiny_version(demo_clean))


def _train(demo_clean: Path, *extra: str) -> train_combined.CombinedOutcome:
    argv = ["--clean", str(demo_clean), "--epochs", "6", "--patience", "3", "--folds", "3"]
    argv += ["--c-values", "3"]
    return train_combined.train_combined(
        train_combined.get_args_parser().parse_args([*argv, *extra])
    )


def test_train_combined_registers_a_model_that_answers_as_the_run_measured(
    image_version: str, demo_clean: Path
) -> None:
    outcome = _train(demo_clean)
    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.data.tags[INPUT_TAG] == IMAGE_TEXT
    assert run.data.tags["image_model"] == f"models:/marketplace-classifier/{image_version}"
    history = client.get_metric_history(
        outcome.run_id,
        next(k for k in run.data.metrics if k.startswith("val") and k.endswith("loss")),
    )
    assert [m.step for m in history] == list(range(1, len(history) + 1)), "per epoch"
    assert any(k.startswith("test_image_only") for k in run.data.metrics)
    assert any(k.startswith("test_text_only") for k in run.data.metrics)

    version = client.get_model_version(LISTING_MODEL_NAME, outcome.model_version)
    assert version.tags[INPUT_TAG] == IMAGE_TEXT
    # The registry's pages say what the model is and how this version was trained.
    assert "photo and its text" in client.get_registered_model(LISTING_MODEL_NAME).description
    assert version.description.startswith("Not promoted yet")
    assert f"models:/marketplace-classifier/{image_version}" in version.description
    assert run.data.tags["registered_version"] == outcome.model_version

    # The loaded version, asked about the test photos with their listings' texts, gives
    # exactly the run's test figures: the same preprocessing, networks and head.
    photos = train_combined.load_photos(
        train_combined.load_listings(demo_clean), demo_clean, None, 32
    ).split("test")
    loaded = mlflow.pyfunc.load_model(f"models:/{LISTING_MODEL_NAME}/{outcome.model_version}")
    answer = loaded.predict(
        pd.DataFrame(
            {"image": [p.read_bytes() for p in photos["path"]], "text": photos["text"].tolist()}
        )
    )
    measured = classification_metrics(
        np.array(answer["probabilities"].tolist()), photos["label"].to_numpy(), "test"
    )
    for key, value in measured.items():
        assert outcome.test_metrics[key] == pytest.approx(value, abs=1e-6), key
    with pytest.raises(Exception, match="text"):
        loaded.predict(pd.DataFrame({"image": [photos["path"][0].read_bytes()]}))


def test_no_image_model_is_a_one_line_error(
    tracking: str, demo_clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow.MlflowClient().search_experiments()  # a store, with no model in it
    with pytest.raises(SystemExit) as exited:
        train_combined.main(["--clean", str(demo_clean)])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "no registered image model" in error


def test_combined_versions_are_promoted_smoke_checked_and_rolled_back(
    image_version: str, demo_clean: Path
) -> None:
    from registry.promotion import promote, rollback

    first = _train(demo_clean)
    second = _train(demo_clean, "--hidden", "16")
    decision = promote(LISTING_MODEL_NAME, first.model_version, clean=demo_clean)
    assert f"listings from the test split of {demo_clean}" in decision.smoke_check
    decision = promote(LISTING_MODEL_NAME, second.model_version, force=True, reason="smaller")
    assert "1 listing from the model's input example" in decision.smoke_check
    decision = rollback(LISTING_MODEL_NAME, reason="back", clean=demo_clean)
    holder = mlflow.MlflowClient().get_model_version_by_alias(LISTING_MODEL_NAME, "production")
    assert str(holder.version) == first.model_version == str(decision.version)
