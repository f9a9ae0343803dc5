"""The text classifier: its features, its training step, its logged pyfunc, its registry life.

Unit tests for the TF-IDF encoder and the head; the ``train_text`` step on the small demo
export against a real temporary store (registered, answering after loading exactly as in
process); the transformer encoder through a tiny BERT folder the test writes itself
(nothing is downloaded); promotion, rollback and the smoke check of text versions.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from cli import UserError
from marketplace_models.kinds import TEXT
from marketplace_models.text import (
    TextClassifier,
    TextConfig,
    TfidfEncoder,
    TfidfSettings,
    TransformerEncoder,
    as_text,
    listing_text,
)
from registry.kinds import INPUT_TAG, TEXT_MODEL_NAME
from steps import train_text

WORDS = {
    "Bikes": ["mountain bike", "road bike", "bmx", "tandem"],
    "Phones": ["iphone", "samsung galaxy", "phone case", "pixel"],
    "Sofas": ["corner sofa", "armchair", "settee", "sofa bed"],
}
VAGUE = ["Job lot", "Must go", "As new, collection only"]


def tiny_listings(n_per_class: int = 30, vague_share: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Listings of three categories, some with vague titles, with a train/val/test split."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, (_category, nouns) in enumerate(WORDS.items()):
        for i in range(n_per_class):
            if rng.random() < vague_share:
                text = listing_text(VAGUE[rng.integers(len(VAGUE))], "See photos.")
            else:
                noun = nouns[rng.integers(len(nouns))]
                text = listing_text(f"{noun.capitalize()} for sale", f"Lovely {noun}.")
            split = ("train", "train", "train", "val", "test")[i % 5]
            rows.append(
                {"product_id": f"{label}-{i}", "text": text, "label": label, "split": split}
            )
    return pd.DataFrame(rows)


def test_listing_text_joins_title_and_description_and_tolerates_missing() -> None:
    assert listing_text("Sofa", "Grey, two seats.") == "Sofa\nGrey, two seats."
    assert listing_text("Sofa", None) == "Sofa"
    assert listing_text(float("nan"), "Only a description") == "Only a description"
    assert as_text(None) == "" and as_text(b"bike") == "bike"
    with pytest.raises(ValueError, match="row 3: expected text, got int"):
        as_text(7, row=3)


def test_tfidf_encoder_reads_words_and_word_pieces_and_round_trips(tmp_path: Path) -> None:
    texts = ["Mountain bike for sale", "Road bike, lovely", "iPhone 12", "Samsung galaxy phone"]
    encoder = TfidfEncoder(TfidfSettings(min_df=1)).fit(texts)
    features = encoder.transform(["mountain bikes"])
    assert features.shape == (1, encoder.dim)
    word_part = features[:, : len(encoder.word.vocabulary_)]
    char_part = features[:, len(encoder.word.vocabulary_) :]
    assert word_part.nnz > 0, "the word 'mountain' is known"
    assert char_part.nnz > word_part.nnz, "'bikes' shares character n-grams with 'bike'"

    encoder.save(tmp_path)
    loaded = TfidfEncoder.load(tmp_path)
    probe = ["a mountain bike", "galaxy phone case", "nothing known here"]
    assert abs(loaded.transform(probe) - encoder.transform(probe)).max() == 0


def test_a_few_texts_get_exactly_what_scikit_learn_computes() -> None:
    from marketplace_models.text import FEW_TEXTS, softmax

    listings = train_text.Listings(tiny_listings(), list(WORDS), Path("."))
    classifier = train_text.select_and_fit(listings, c_values=(3.0,), min_df=1).classifier
    texts = ["Mountain bike for sale", "", "zzz unknown words", "Corner sofa\nLovely sofa bed."]
    assert len(texts) <= FEW_TEXTS  # the fast path
    expected = softmax(
        np.asarray(classifier.features(texts) @ classifier.coef.T + classifier.intercept)
    )
    np.testing.assert_allclose(classifier.predict_proba(texts), expected, rtol=0, atol=1e-12)
    many = texts * (FEW_TEXTS + 1)  # scikit-learn's own transform
    np.testing.assert_allclose(classifier.predict_proba(many)[: len(texts)], expected, atol=1e-12)


def test_the_head_beats_the_majority_and_ignores_a_class_it_never_saw() -> None:
    frame = tiny_listings()
    listings = train_text.Listings(frame, [*WORDS, "Unseen"], Path("."))
    outcome = train_text.select_and_fit(listings, c_values=(1.0, 10.0), min_df=1)
    test = listings.split("test")
    probabilities = outcome.classifier.predict_proba(test["text"].tolist())
    assert probabilities.shape == (len(test), 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-9)
    accuracy = (probabilities.argmax(axis=1) == test["label"].to_numpy()).mean()
    majority = test["label"].value_counts(normalize=True).max()
    assert accuracy > majority + 0.3
    assert probabilities[:, 3].max() < 1e-6, "no train listing: never predicted"
    assert [row["C"] for row in outcome.selection] == [1.0, 10.0]
    assert outcome.c in (1.0, 10.0)


def test_vague_text_gets_an_unsure_answer() -> None:
    listings = train_text.Listings(tiny_listings(vague_share=0.0), list(WORDS), Path("."))
    classifier = train_text.select_and_fit(listings, c_values=(3.0,), min_df=1).classifier
    sure, vague = classifier.predict_proba(["Mountain bike for sale", "Job lot"])
    assert sure.max() > 0.6 and sure.argmax() == 0
    assert vague.max() < sure.max()


def test_bad_c_values_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="--c-values must be numbers separated by commas"):
        train_text.parse_c_values("one,two")
    with pytest.raises(UserError, match="above 0"):
        train_text.parse_c_values("0,1")


# ----------------------------------------------------------------- the step, logged


def _train(demo_clean: Path, *extra: str) -> train_text.TextOutcome:
    args = train_text.get_args_parser().parse_args(
        ["--clean", str(demo_clean), "--c-values", "1,10", *extra]
    )
    return train_text.train_text(args)


def test_train_text_logs_registers_and_the_loaded_model_answers_the_same(
    tracking: str, demo_clean: Path
) -> None:
    outcome = _train(demo_clean)
    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.data.tags[INPUT_TAG] == TEXT
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {"listings"}
    accuracy_key = next(
        k for k in outcome.test_metrics if k.endswith("accuracy") and "top" not in k
    )
    assert run.data.metrics[accuracy_key] == pytest.approx(outcome.test_metrics[accuracy_key])
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts

    version = client.get_model_version(TEXT_MODEL_NAME, outcome.model_version)
    assert version.tags[INPUT_TAG] == TEXT
    assert client.get_registered_model(TEXT_MODEL_NAME).aliases == {}, "training never promotes"
    # The registry's pages say what the model is and how this version was trained.
    assert "listing's text" in client.get_registered_model(TEXT_MODEL_NAME).description
    assert version.description.startswith("Not promoted yet")
    assert "tfidf" in version.description and outcome.run_id[:8] in version.description
    assert f"C {outcome.c:g}" in version.description
    assert run.data.tags["registered_version"] == outcome.model_version

    texts = ["Mountain bike, good condition", "Job lot", "iphone", ""]
    loaded = mlflow.pyfunc.load_model(f"models:/{TEXT_MODEL_NAME}/{outcome.model_version}")
    answer = loaded.predict(pd.DataFrame({"text": texts}))
    assert list(answer.columns) == ["category", "probability", "probabilities"]
    np.testing.assert_allclose(
        np.array(answer["probabilities"].tolist()),
        outcome.classifier.predict_proba(texts),
        rtol=1e-12,
        atol=1e-12,
    )
    with pytest.raises(Exception, match="text"):
        loaded.predict(pd.DataFrame({"image": [b"not text"]}))


def test_text_versions_are_promoted_smoke_checked_and_rolled_back(
    tracking: str, demo_clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import run_cli
    from registry.__main__ import main as registry_command
    from registry.promotion import promote, rollback

    first = _train(demo_clean)
    second = _train(demo_clean, "--c-values", "0.1")
    decision = promote(TEXT_MODEL_NAME, first.model_version, clean=demo_clean)
    assert decision.action == "promote"
    assert f"texts from the test split of {demo_clean}" in decision.smoke_check

    decision = promote(TEXT_MODEL_NAME, second.model_version, force=True, reason="try C=0.1")
    assert "texts from the model's input example" in decision.smoke_check
    client = mlflow.MlflowClient()
    holder = client.get_model_version_by_alias(TEXT_MODEL_NAME, "production")
    assert str(holder.version) == second.model_version

    decision = rollback(TEXT_MODEL_NAME, reason="back")
    assert decision.version == int(first.model_version)
    holder = client.get_model_version_by_alias(TEXT_MODEL_NAME, "production")
    assert str(holder.version) == first.model_version

    assert run_cli(registry_command, ["list", "--model-name", TEXT_MODEL_NAME]) == 0
    listing = capsys.readouterr().out
    assert "production" in listing and "previous-production" in listing

    from steps.models_report import report

    table = report(client).splitlines()
    row = next(line for line in table if line.startswith("| text |"))
    accuracy = next(
        v for k, v in first.test_metrics.items() if k.endswith("/accuracy") or k == "test_accuracy"
    )
    assert f"| {first.model_version} (production) | listings | {accuracy:.3f} |" in row
    assert any(line.startswith("| image | marketplace-classifier | none yet") for line in table)


# ------------------------------------------------------------ the transformer encoder

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "mountain", "road", "bike", "iphone", "samsung", "galaxy", "phone", "case",
    "corner", "sofa", "arm", "##chair", "settee", "bed", "for", "sale", "lovely",
    "job", "lot", "must", "go", "as", "new", "collection", "only", "see", "photos", ",", ".",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, randomly initialised BERT and its WordPiece tokenizer, saved to a folder."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_transformer_encoder_mean_pools_offline(tiny_bert: Path) -> None:
    encoder = TransformerEncoder.from_pretrained(str(tiny_bert))
    features = encoder.transform(["mountain bike for sale", "sofa", "job lot"])
    assert features.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    again = encoder.transform(["sofa"])
    np.testing.assert_allclose(again[0], features[1], rtol=1e-5, atol=1e-6)


def test_a_missing_encoder_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    from cli import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(UserError, match="cannot load the text encoder") as raised:
        TransformerEncoder.from_pretrained(str(empty))
    assert "\n" not in str(raised.value)
    with pytest.raises(UserError, match="hub or its local cache"):
        TransformerEncoder.from_pretrained("no-such-org/no-such-model-xyz")


def test_train_text_with_a_transformer_encoder_logs_a_model_that_loads_it(
    tracking: str, demo_clean: Path, tiny_bert: Path
) -> None:
    outcome = _train(demo_clean, "--text-encoder", str(tiny_bert))
    assert outcome.classifier.config.encoder == "transformer"
    client = mlflow.MlflowClient()
    version = client.get_model_version(TEXT_MODEL_NAME, outcome.model_version)
    assert version.tags["encoder"] == "transformer"
    texts = ["mountain bike", "iphone case", "job lot"]
    loaded = mlflow.pyfunc.load_model(f"models:/{TEXT_MODEL_NAME}/{outcome.model_version}")
    answer = loaded.predict(pd.DataFrame({"text": texts}))
    np.testing.assert_allclose(
        np.array(answer["probabilities"].tolist()),
        outcome.classifier.predict_proba(texts),
        rtol=1e-5,
        atol=1e-6,
    )


def test_text_classifier_round_trips_through_its_folder(tmp_path: Path) -> None:
    listings = train_text.Listings(tiny_listings(), list(WORDS), Path("."))
    classifier = train_text.select_and_fit(listings, c_values=(3.0,), min_df=1).classifier
    loaded = TextClassifier.load(classifier.save(tmp_path / "text"))
    assert isinstance(loaded.config, TextConfig)
    texts = ["road bike", "sofa bed", "Must go"]
    np.testing.assert_array_equal(loaded.predict_proba(texts), classifier.predict_proba(texts))
