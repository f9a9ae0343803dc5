"""The logged text classifier: a pyfunc that takes a listing's text and returns a category.

This module is what a registered ``marketplace-text-classifier`` version *is*, and the text
half of a ``marketplace-listing-classifier`` (``marketplace_models/listing.py``). Training
(``steps/train_text.py``) fits an encoder and a linear head, then calls
:func:`log_text_classifier`; the service loads the version with ``mlflow.pyfunc.load_model``
and never imports ``steps/``.

Two encoders turn texts into features:

* :class:`TfidfEncoder` (the default, offline): TF-IDF of words (1-2 grams) and of
  character 2-5 grams within words, side by side; it reads misspellings and word pieces
  ("straightners", "ps5") that a word vocabulary misses;
* :class:`TransformerEncoder` (``text_encoder=<Hugging Face model name or folder>``): a
  pretrained transformer, frozen, its last layer mean-pooled over the tokens and
  L2-normalised; ``transformers`` is imported only when one is used.

The head is linear: ``softmax(features @ coef.T + intercept)``, the weights of a
multinomial logistic regression, stored as arrays.

What a logged model holds (no pickles): ``artifacts/text/text.json`` (categories, encoder,
settings), ``text_head.npz`` (coef, intercept) and the encoder's files (``tfidf.json`` +
``tfidf_idf.npz``: vocabularies and IDF weights; or ``encoder/``: the transformer and its
tokenizer, ``save_pretrained``), ``code/marketplace_models/`` and the entry file
``marketplace_text_classifier.py``.

Input: a DataFrame with a column ``text`` (a listing's title, description or both, or a
buyer's query). Output: ``category``, ``probability`` and ``probabilities`` (in category
order), as the image classifier answers.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from marketplace_models.errors import UserError
from marketplace_models.kinds import TEXT_COLUMN
from marketplace_models.pyfunc import entry_code, installed_lower_bounds, log_from_code

TFIDF = "tfidf"
TRANSFORMER = "transformer"
ENCODERS = (TFIDF, TRANSFORMER)
TEXT_ARTIFACT = "text"
CONFIG_FILE = "text.json"
HEAD_FILE = "text_head.npz"
TFIDF_FILE = "tfidf.json"
IDF_FILE = "tfidf_idf.npz"
ENCODER_DIR = "encoder"
FORMAT_VERSION = 1
MAX_TEXT_CHARS = 2000  # a longer text is cut before encoding (a description rarely is)
ENCODE_BATCH_SIZE = 32
FEW_TEXTS = 8  # up to this many texts, TF-IDF is computed without scikit-learn's transform

ENTRY_CODE = entry_code(
    "marketplace_models.text", "MarketplaceTextClassifier", "marketplace text classifier"
)
ENTRY_FILE = "marketplace_text_classifier.py"


# --------------------------------------------------------------------------- text


def as_text(value: Any, row: int = 0) -> str:
    """One cell of a ``text`` column as a string: None and NaN are empty text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise ValueError(f"row {row}: expected text, got {type(value).__name__}")
    return value


def listing_text(name: Any, description: Any) -> str:
    """A listing's text as the models read it: the title, a new line, the description."""
    parts = [as_text(name).strip(), as_text(description).strip()]
    return "\n".join(part for part in parts if part)


def prepare(texts: Sequence[Any]) -> list[str]:
    """Cells of a ``text`` column, as strings cut to :data:`MAX_TEXT_CHARS`."""
    return [as_text(value, row)[:MAX_TEXT_CHARS] for row, value in enumerate(texts)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------ encoders


@dataclass(frozen=True)
class TfidfSettings:
    """The TF-IDF encoder's settings (its vocabularies are learned by :meth:`fit`)."""

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = 2
    max_features: int = 50_000


class TfidfEncoder:
    """Word and character TF-IDF side by side: texts -> sparse ``(N, F_word + F_char)``."""

    def __init__(self, settings: TfidfSettings | None = None) -> None:
        self.settings = settings or TfidfSettings()
        self.word = None
        self.char = None
        self._analyzers = None

    def _vectorizers(self, vocabularies: tuple[dict, dict] | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        s = self.settings
        word_vocab, char_vocab = vocabularies or (None, None)
        word = TfidfVectorizer(
            ngram_range=tuple(s.word_ngrams),
            sublinear_tf=True,
            min_df=1 if word_vocab else s.min_df,
            max_features=None if word_vocab else s.max_features,
            vocabulary=word_vocab,
        )
        char = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=tuple(s.char_ngrams),
            sublinear_tf=True,
            min_df=1 if char_vocab else s.min_df,
            max_features=None if char_vocab else s.max_features,
            vocabulary=char_vocab,
        )
        return word, char

    def fit(self, texts: Sequence[str]) -> TfidfEncoder:
        self.word, self.char = self._vectorizers()
        self.word.fit(texts)
        self.char.fit(texts)
        return self

    @property
    def dim(self) -> int:
        return len(self.word.vocabulary_) + len(self.char.vocabulary_)

    def transform(self, texts: Sequence[str]):
        """Sparse features ``(N, F)``; each half L2-normalised, so rows have norm sqrt 2."""
        from scipy import sparse

        if self.word is None:
            raise RuntimeError("the TF-IDF encoder is not fitted")
        return sparse.hstack([self.word.transform(texts), self.char.transform(texts)], format="csr")

    def sparse_rows(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each text's non-zero (word indices, character indices, values) without building a
        sparse matrix: the same numbers as :meth:`transform` (sublinear TF times IDF, each
        half L2-normalised), for the one or few texts a request brings, where scikit-learn's
        per-call checks cost more than the arithmetic."""
        if self._analyzers is None:
            self._analyzers = (self.word.build_analyzer(), self.char.build_analyzer())
        rows = []
        for text in texts:
            halves = []
            for vectorizer, analyze in zip((self.word, self.char), self._analyzers, strict=True):
                vocabulary = vectorizer.vocabulary_
                counts: dict[int, int] = {}
                for term in analyze(text):
                    index = vocabulary.get(term)
                    if index is not None:
                        counts[index] = counts.get(index, 0) + 1
                indices = np.fromiter(counts, dtype=np.int64, count=len(counts))
                values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
                values = (np.log(values) + 1.0) * vectorizer.idf_[indices]
                norm = float(np.sqrt(values @ values))
                halves.append((indices, values / norm if norm > 0 else values))
            (word_indices, word_values), (char_indices, char_values) = halves
            rows.append((word_indices, char_indices, np.concatenate([word_values, char_values])))
        return rows

    def save(self, folder: Path) -> None:
        spec = {
            "settings": asdict(self.settings),
            "word_vocabulary": {k: int(v) for k, v in self.word.vocabulary_.items()},
            "char_vocabulary": {k: int(v) for k, v in self.char.vocabulary_.items()},
        }
        (folder / TFIDF_FILE).write_text(json.dumps(spec), encoding="utf-8")
        np.savez(folder / IDF_FILE, word=self.word.idf_, char=self.char.idf_)

    @classmethod
    def load(cls, folder: Path) -> TfidfEncoder:
        spec = json.loads((folder / TFIDF_FILE).read_text(encoding="utf-8"))
        settings = spec["settings"]
        encoder = cls(
            TfidfSettings(
                word_ngrams=tuple(settings["word_ngrams"]),
                char_ngrams=tuple(settings["char_ngrams"]),
                min_df=int(settings["min_df"]),
                max_features=int(settings["max_features"]),
            )
        )
        encoder.word, encoder.char = encoder._vectorizers(
            (spec["word_vocabulary"], spec["char_vocabulary"])
        )
        with np.load(folder / IDF_FILE) as idf:
            encoder.word.idf_ = idf["word"]  # sklearn's public setter; checks the vocabulary
            encoder.char.idf_ = idf["char"]
        return encoder


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "a transformer text encoder needs torch and transformers, the transformers extra: "
            "pip install 'marketplace-search[transformers]' (from a checkout: pip install "
            "'.[transformers]'), or leave text_encoder empty for TF-IDF"
        ) from None
    return transformers


class TransformerEncoder:
    """A pretrained transformer, frozen: texts -> mean-pooled, L2-normalised ``(N, H)``."""

    def __init__(self, tokenizer, model, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, name: str, max_length: int = 128) -> TransformerEncoder:
        """Load ``name`` (a local folder, or a Hugging Face model name).

        A folder, or any name when HF_HUB_OFFLINE is set, loads with ``local_files_only``
        (from the folder or the local cache): nothing is downloaded. Raises
        :class:`UserError` with what to do when it cannot be loaded.
        """
        transformers = _transformers()
        local = Path(name).expanduser().is_dir()
        offline = local or os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")
        source = str(Path(name).expanduser()) if local else name
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=offline)
            model = transformers.AutoModel.from_pretrained(source, local_files_only=offline)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            where = "the folder" if local else "the Hugging Face hub or its local cache"
            raise UserError(
                f"cannot load the text encoder {name!r} from {where} ({type(exc).__name__}: "
                f"{first}): give a folder saved with save_pretrained, a model name this "
                "machine can download, or leave text_encoder empty for TF-IDF"
            ) from None
        return cls(tokenizer, model, max_length)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), ENCODE_BATCH_SIZE):
                batch = self.tokenizer(
                    list(texts[start : start + ENCODE_BATCH_SIZE]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
                pooled = torch.nn.functional.normalize(pooled, dim=1)
                parts.append(pooled.float().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder / ENCODER_DIR)
        self.model.save_pretrained(folder / ENCODER_DIR)

    @classmethod
    def load(cls, folder: Path, max_length: int = 128) -> TransformerEncoder:
        return cls.from_pretrained(str(folder / ENCODER_DIR), max_length)


# ---------------------------------------------------------------------- the model


@dataclass(frozen=True)
class TextConfig:
    """Everything besides the encoder's files and the head's weights, stored as JSON."""

    categories: list[str]
    encoder: str = TFIDF
    encoder_name: str = ""  # the transformer asked for (a model name or a folder)
    max_length: int = 128
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TextConfig:
        data = json.loads(text)
        return cls(
            categories=list(data["categories"]),
            encoder=data.get("encoder", TFIDF),
            encoder_name=data.get("encoder_name", ""),
            max_length=int(data.get("max_length", 128)),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            extra=dict(data.get("extra", {})),
        )


class TextClassifier:
    """An encoder and a linear head: texts -> class probabilities ``(N, C)``."""

    def __init__(self, config: TextConfig, encoder, coef: np.ndarray, intercept: np.ndarray):
        if coef.shape[0] != len(config.categories):
            raise ValueError(
                f"the head has {coef.shape[0]} classes, the config {len(config.categories)}"
            )
        self.config = config
        self.encoder = encoder
        self.coef = np.asarray(coef, dtype=np.float64)  # (C, F)
        self.intercept = np.asarray(intercept, dtype=np.float64)  # (C,)
        self._weights: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def categories(self) -> list[str]:
        return list(self.config.categories)

    def features(self, texts: Sequence[Any]):
        return self.encoder.transform(prepare(texts))

    def predict_proba(self, texts: Sequence[Any]) -> np.ndarray:
        """Class probabilities ``(N, C)`` in category order."""
        if len(texts) == 0:
            return np.zeros((0, len(self.config.categories)))
        if isinstance(self.encoder, TfidfEncoder) and len(texts) <= FEW_TEXTS:
            word_weights, char_weights = self._tfidf_weights()
            logits = (
                np.stack(
                    [
                        values @ np.concatenate([word_weights[word_rows], char_weights[char_rows]])
                        for word_rows, char_rows, values in self.encoder.sparse_rows(prepare(texts))
                    ]
                )
                + self.intercept
            )  # (N, C)
        elif isinstance(self.encoder, TfidfEncoder):  # each half's product: no sparse hstack
            prepared = prepare(texts)
            word_weights, char_weights = self._tfidf_weights()
            logits = (
                self.encoder.word.transform(prepared) @ word_weights
                + self.encoder.char.transform(prepared) @ char_weights
                + self.intercept
            )  # (N, C)
        else:
            logits = self.features(texts) @ self.coef.T + self.intercept  # (N, C)
        return softmax(np.asarray(logits, dtype=np.float64))

    def _tfidf_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """The head's weights for the word and the character features, ``(F, C)`` each."""
        if self._weights is None:
            words = len(self.encoder.word.vocabulary_)
            self._weights = (
                np.ascontiguousarray(self.coef[:, :words].T),
                np.ascontiguousarray(self.coef[:, words:].T),
            )
        return self._weights

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(self.config.to_json(), encoding="utf-8")
        np.savez(folder / HEAD_FILE, coef=self.coef, intercept=self.intercept)
        self.encoder.save(folder)
        return folder

    @classmethod
    def load(cls, folder: Path) -> TextClassifier:
        folder = Path(folder)
        config = TextConfig.from_json((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.encoder == TRANSFORMER:
            encoder = TransformerEncoder.load(folder, config.max_length)
        elif config.encoder == TFIDF:
            encoder = TfidfEncoder.load(folder)
        else:
            raise ValueError(f"unknown text encoder {config.encoder!r} in {folder}")
        with np.load(folder / HEAD_FILE) as head:
            return cls(config, encoder, head["coef"], head["intercept"])


def logged_artifacts(folder: Path) -> dict[str, Path]:
    """The pyfunc artifacts of the logged model in ``folder`` (its MLmodel file), by key."""
    import yaml

    mlmodel = Path(folder) / "MLmodel"
    if not mlmodel.is_file():
        raise ValueError(f"{folder} has no MLmodel file")
    spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    pyfunc = (spec.get("flavors") or {}).get("python_function") or {}
    paths = {}
    for key, entry in (pyfunc.get("artifacts") or {}).items():
        path = entry.get("path") if isinstance(entry, dict) else None
        if path:
            paths[key] = Path(folder) / path
    return paths


def input_kind_of(folder: Path) -> str:
    """What the logged model in ``folder`` takes, from its artifacts: ``image+text`` (a
    fusion head), ``text`` (a text classifier alone) or ``image``."""
    from marketplace_models.kinds import IMAGE, IMAGE_TEXT, TEXT

    artifacts = logged_artifacts(folder)
    if TEXT_ARTIFACT in artifacts:
        return IMAGE_TEXT if "fusion" in artifacts else TEXT
    return IMAGE


def read_text_classifier(folder: Path) -> TextClassifier:
    """The text classifier of the logged model in ``folder`` (a text or a listing model)."""
    artifacts = logged_artifacts(folder)
    if TEXT_ARTIFACT not in artifacts:
        raise ValueError("the model has no text classifier among its artifacts")
    return TextClassifier.load(artifacts[TEXT_ARTIFACT])


def answer_frame(probabilities: np.ndarray, categories: Sequence[str]) -> pd.DataFrame:
    """The classifier contract's answer: ``category``, ``probability``, ``probabilities``."""
    best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=int)
    return pd.DataFrame(
        {
            "category": [categories[i] for i in best],
            "probability": probabilities[np.arange(len(best)), best].astype(np.float64),
            "probabilities": [row.astype(np.float64).tolist() for row in probabilities],
        }
    )


def column_values(model_input: Any, column: str) -> list[Any]:
    """The values of ``column`` of a pyfunc input (a DataFrame, or a plain list)."""
    if isinstance(model_input, pd.DataFrame):
        if column not in model_input.columns:
            raise ValueError(f"the input needs a column named {column!r}")
        return model_input[column].tolist()
    return list(model_input)


class MarketplaceTextClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``text`` in; category, probability, probabilities out."""

    def __init__(self, classifier: TextClassifier | None = None) -> None:
        self.classifier = classifier

    def load_context(self, context) -> None:
        self.classifier = TextClassifier.load(Path(context.artifacts[TEXT_ARTIFACT]))

    @property
    def categories(self) -> list[str]:
        return self._require().categories

    def _require(self) -> TextClassifier:
        if self.classifier is None:
            raise RuntimeError("the text classifier has no weights: load it with mlflow.pyfunc")
        return self.classifier

    def predict_proba(self, texts: Sequence[Any]) -> np.ndarray:
        return self._require().predict_proba(texts)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        classifier = self._require()
        probabilities = classifier.predict_proba(column_values(model_input, TEXT_COLUMN))
        return answer_frame(probabilities, classifier.categories)


# ---------------------------------------------------------------------------- logging


def pip_requirements(encoder: str = TFIDF) -> list[str]:
    """The served model's requirements: the installed versions as lower bounds."""
    packages = ["mlflow", "numpy", "pandas", "scipy", "scikit-learn"]
    if encoder == TRANSFORMER:
        packages += ["torch", "transformers", "tokenizers"]
    return installed_lower_bounds(packages)


def answer_schema():
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    return Schema(
        [
            ColSpec("string", "category"),
            ColSpec("double", "probability"),
            ColSpec(Array("double"), "probabilities"),
        ]
    )


def model_signature():
    """Input: a ``text`` string column; output: the prediction."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=answer_schema())


def log_text_classifier(
    classifier: TextClassifier,
    *,
    example_texts: Sequence[str],
    name: str = "model",
):
    """Log ``classifier`` as a pyfunc model in the active run; return MLflow's ``ModelInfo``."""
    with tempfile.TemporaryDirectory(prefix="text-classifier-") as tmp:
        folder = classifier.save(Path(tmp) / TEXT_ARTIFACT)
        return log_from_code(
            Path(tmp),
            entry_file=ENTRY_FILE,
            entry=ENTRY_CODE,
            name=name,
            artifacts={TEXT_ARTIFACT: str(folder)},
            signature=model_signature(),
            input_example=pd.DataFrame({TEXT_COLUMN: list(example_texts)}),
            pip_requirements=pip_requirements(classifier.config.encoder),
        )
