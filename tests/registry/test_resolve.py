"""Resolving model URIs to the exact version or folder to load."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cli import UserError
from registry.promotion import promote
from registry.resolve import resolve_model, resolve_model_uri
from tests.helpers.registry_store import (
    NAME,
    _jpeg,
)


def test_resolve_model_uri_pins_registry_uris_to_a_version(client, template_store: Path) -> None:
    import mlflow

    with pytest.raises(UserError, match="no version of .* holds the production alias.*promote"):
        resolve_model_uri(f"models:/{NAME}@production")
    client.set_registered_model_alias(NAME, "production", "2")

    resolved = resolve_model(f"models:/{NAME}@production")
    assert (resolved.load_uri, resolved.version) == (f"models:/{NAME}/2", 2)
    assert resolved.run_id == client.get_model_version(NAME, "2").run_id
    assert resolve_model_uri(f"models:/{NAME}/1") == f"models:/{NAME}/1"
    assert promote(NAME, "2.0", client=client).action == "unchanged"  # MLproject's "2.0"
    assert resolve_model_uri(f"models:/{NAME}/latest") == f"models:/{NAME}/4"
    assert resolve_model_uri("runs:/abc/model") == "runs:/abc/model"
    loaded = mlflow.pyfunc.load_model(resolve_model_uri(f"models:/{NAME}@production"))
    assert loaded.predict(pd.DataFrame({"image": [_jpeg((10, 200, 10))]}))["category"][0] == (
        "Green things"
    )

    with pytest.raises(UserError, match="has no version 7"):
        resolve_model_uri(f"models:/{NAME}/7")
    with pytest.raises(UserError, match="no registered model named 'other'"):
        resolve_model_uri("models:/other@production")


def test_resolve_model_uri_checks_local_folders(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(UserError, match="no MLmodel file"):
        resolve_model_uri(str(model))
    (model / "MLmodel").write_text("flavors: {}\n")
    assert resolve_model_uri(str(model)) == str(model.resolve())
    with pytest.raises(UserError, match="no model at"):
        resolve_model_uri(str(tmp_path / "missing"))
