"""The logged ranker: a pyfunc that takes a feature table and returns one score per row.

This module is what a registered ``marketplace-ranker`` version *is*. The ``rank`` step
trains a LightGBM ``LGBMRanker`` (lambdarank) on the features of
``search.ranking.FEATURES`` and logs it with :func:`log_ranker`; the service loads the
version with ``mlflow.pyfunc.load_model`` and scores a query's candidates with
:meth:`MarketplaceRanker.score`. The booster is an artifact in LightGBM's own text format
(``ranker/booster.txt``, never unpickled) beside ``ranker/ranker.json``, which names the
feature columns in the order the booster was trained on; :attr:`MarketplaceRanker.features`
is how a reader checks that it computes the same ones. The model's input is a table with
exactly those columns (NaN where a feature does not apply); its output is a ``score``
column, higher ranking first.

Entry file of the logged model: ``marketplace_ranker.py``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from marketplace_models.errors import UserError
from marketplace_models.pyfunc import entry_code, installed_lower_bounds, log_from_code

RANKER_ARTIFACT = "ranker"
BOOSTER_FILE = "booster.txt"
CONFIG_FILE = "ranker.json"
SCORE_COLUMN = "score"
FORMAT_VERSION = 1
ENTRY_CODE = entry_code("marketplace_models.ranker", "MarketplaceRanker", "marketplace ranker")
ENTRY_FILE = "marketplace_ranker.py"


class MarketplaceRanker(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: a feature table in (:attr:`features` columns); ``score`` out."""

    def __init__(self, booster=None, features: Sequence[str] = ()) -> None:
        self.booster = booster
        self.features = tuple(features)

    def load_context(self, context) -> None:
        import lightgbm

        folder = Path(context.artifacts[RANKER_ARTIFACT])
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"the ranker's format is {config.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}: train it again with `mlflow run . -e rank`"
            )
        self.features = tuple(config["features"])
        self.booster = lightgbm.Booster(model_file=str(folder / BOOSTER_FILE))

    def score(self, table: pd.DataFrame) -> np.ndarray:
        """One score per row of ``table`` (which must hold every feature column)."""
        if self.booster is None:
            raise RuntimeError("the ranker has no booster: load it with mlflow.pyfunc")
        missing = [name for name in self.features if name not in table.columns]
        if missing:
            raise UserError(
                f"the ranker's input lacks {', '.join(missing)}: it takes the columns "
                f"{', '.join(self.features)}"
            )
        if len(table) == 0:
            return np.zeros(0)
        values = table.loc[:, list(self.features)].to_numpy(dtype=np.float64)
        return np.asarray(self.booster.predict(values, num_threads=1), dtype=np.float64)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return pd.DataFrame({SCORE_COLUMN: self.score(pd.DataFrame(model_input))})


def save_ranker(booster, features: Sequence[str], folder: Path) -> Path:
    """Write ``booster`` (a ``lightgbm.Booster``) and its feature list to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / BOOSTER_FILE))
    config = {"format_version": FORMAT_VERSION, "features": list(features)}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def model_signature(features: Sequence[str]):
    """Input: the feature columns (doubles, NaN allowed); output: a ``score`` double."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in features]),
        outputs=Schema([ColSpec("double", SCORE_COLUMN)]),
    )


def pip_requirements() -> list[str]:
    """The served model's requirements: the installed versions as lower bounds."""
    return installed_lower_bounds(["mlflow", "numpy", "pandas", "lightgbm"])


def log_ranker(booster, features: Sequence[str], example: pd.DataFrame, name: str = "model"):
    """Log ``booster`` as a pyfunc ranker in the active run; return MLflow's ``ModelInfo``.

    ``example`` is a few rows of the feature table (the logged input example).
    """
    with tempfile.TemporaryDirectory(prefix="ranker-") as tmp:
        folder = save_ranker(booster, features, Path(tmp) / RANKER_ARTIFACT)
        return log_from_code(
            Path(tmp),
            entry_file=ENTRY_FILE,
            entry=ENTRY_CODE,
            name=name,
            artifacts={RANKER_ARTIFACT: str(folder)},
            signature=model_signature(features),
            input_example=example.loc[:, list(features)].head(5),
            pip_requirements=pip_requirements(),
            metadata_={"features": list(features)},
        )
