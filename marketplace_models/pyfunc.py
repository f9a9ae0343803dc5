"""How every kind of marketplace model is logged: an MLflow pyfunc "from code".

The image, text and photo + text classifiers (:mod:`marketplace_models.image`,
:mod:`marketplace_models.text`, :mod:`marketplace_models.listing`) are each logged the same way: an
entry file written beside the model only builds an empty wrapper
(``mlflow.models.set_model``), the weights and configs are artifacts read in the wrapper's
``load_context`` (never unpickled), and ``code_paths`` is this ``marketplace_models/`` package, so a
logged model brings the code that reads it and nothing of ``steps/``. Requirements are given
explicitly (inferring them costs seconds): the installed versions as lower bounds.

Only mlflow is imported here, so the text model can be logged without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def installed_lower_bounds(packages: Iterable[str]) -> list[str]:
    """``name>=<installed version>`` for each package (local suffixes like ``+cu130`` cut)."""
    return [f"{name}>={metadata.version(name).split('+')[0]}" for name in packages]


def entry_code(module: str, class_name: str, what: str) -> str:
    """The entry file of a logged ``what``: it sets an empty ``module.class_name`` wrapper."""
    return (
        f'"""Entry file of a logged {what} (MLflow models from code)."""\n'
        "import mlflow\n\n"
        f"from {module} import {class_name}\n\n"
        f"mlflow.models.set_model({class_name}())\n"
    )


def log_from_code(
    folder: Path,
    *,
    entry_file: str,
    entry: str,
    name: str,
    artifacts: Mapping[str, str],
    signature,
    input_example,
    pip_requirements: list[str],
    metadata_: Mapping[str, Any] | None = None,
):
    """Write ``entry`` to ``folder/entry_file`` and log the pyfunc it builds, with
    ``artifacts``, this ``marketplace_models/`` as its code, ``signature``, ``input_example`` and
    ``pip_requirements``, in the active run; return MLflow's ``ModelInfo``."""
    import mlflow

    path = Path(folder) / entry_file
    path.write_text(entry, encoding="utf-8")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(path),
        artifacts=dict(artifacts),
        code_paths=[str(PACKAGE_DIR)],
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        metadata=dict(metadata_ or {}),
    )
