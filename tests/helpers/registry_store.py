"""A registry of small pyfunc versions that follow the classifier contract (see
tests/registry/conftest.py), and what the registry tests read back from it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cli import run_cli
from registry.__main__ import main as registry_command

NAME = "marketplace-classifier"


ROOT = Path(__file__).resolve().parents[2]


CATEGORIES = ["Blue things", "Green things", "Red things"]


def registry_main(argv: list[str]) -> int:
    """``python -m registry ARGV``'s exit code, run in this process."""
    return run_cli(registry_command, argv)


COLOUR_MODEL = '''
import io
import json

import numpy as np
import pandas as pd
from PIL import Image

import mlflow
from mlflow.pyfunc import PythonModel


class ColourModel(PythonModel):
    """Mean RGB colour times fixed weights, softmaxed: a real pyfunc, tiny and fast."""

    def load_context(self, context):
        spec = json.loads(open(context.artifacts["weights"]).read())
        self.categories = spec["categories"]
        self.weights = np.asarray(spec["weights"], dtype=float)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for data in model_input["image"]:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            rgb = np.asarray(image, dtype=float).mean(axis=(0, 1)) / 255.0
            logits = rgb @ self.weights
            p = np.exp(logits - logits.max())
            p = p / p.sum()
            best = int(p.argmax())
            rows.append(
                {"category": self.categories[best], "probability": float(p[best]),
                 "probabilities": p.tolist()}
            )
        return pd.DataFrame(rows, columns=["category", "probability", "probabilities"])


mlflow.models.set_model(ColourModel())
'''


BROKEN_MODEL = """
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class BrokenModel(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        raise RuntimeError("weights do not match the network")


mlflow.models.set_model(BrokenModel())
"""


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _log_version(folder: Path, code: str, metrics: dict[str, float], run_name: str) -> None:
    import mlflow

    code_file = folder / f"{run_name}.py"
    code_file.write_text(code)
    weights = folder / "weights.json"
    # Weights: blue, green, red columns; the model is a colour detector.
    weights.write_text(
        json.dumps({"categories": CATEGORIES, "weights": [[0, 0, 4], [0, 4, 0], [4, 0, 0]]})
    )
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({"arch": run_name, "lr": "0.001"})
        mlflow.log_metrics(metrics)
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code_file),
            artifacts={"weights": str(weights)},
            input_example=pd.DataFrame({"image": [_jpeg((200, 20, 20))]}),
            pip_requirements=["mlflow", "pandas", "numpy", "pillow"],
            registered_model_name=NAME,
        )


def _aliases(client) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def _tags(client, version: int) -> dict[str, str]:
    return client.get_model_version(NAME, str(version)).tags
