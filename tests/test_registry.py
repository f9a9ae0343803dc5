"""The Model Registry side: resolve, list/show/compare, promote, refuse, force, roll back.

Against a real sqlite tracking store holding small registered versions of a tiny pyfunc
that follows the classifier contract (mean colour -> category, weights in an artifact):

    version 1  test_accuracy 0.6     version 3  test_accuracy 0.5, predict raises
    version 2  test_accuracy 0.7     version 4  no test_accuracy (val_accuracy 0.8)

These versions are logged with the older, flat metric names (``test_accuracy``); the tests
ask for the current ones (``test/accuracy``), and versions logged with those are added
where a test needs them. The store is built once per module and copied for each test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from cli import UserError
from registry import descriptions, promotion
from registry.__main__ import main as registry_main
from registry.promotion import PromotionRefused, promote, promotion_lock, rollback
from registry.resolve import resolve_model, resolve_model_uri
from registry.smoke import (
    SmokeCheckError,
    clean_test_images,
    smoke_check,
    synthetic_images,
)
from tests.servers import closed_endpoint, start_mlflow_server

NAME = "marketplace-classifier"
ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ["Blue things", "Green things", "Red things"]

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


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with versions 1-4 of NAME (see the module docstring); copy before writing."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry-template")
    previous = os.getcwd()
    os.chdir(folder)  # artifacts land in folder/mlruns
    try:
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        mlflow.set_experiment("registry-tests")
        _log_version(folder, COLOUR_MODEL, {"test_accuracy": 0.6, "val_accuracy": 0.62}, "one")
        _log_version(folder, COLOUR_MODEL, {"test_accuracy": 0.7, "val_accuracy": 0.71}, "two")
        _log_version(folder, BROKEN_MODEL, {"test_accuracy": 0.5}, "broken")
        _log_version(folder, COLOUR_MODEL, {"val_accuracy": 0.8}, "nometric")
    finally:
        os.chdir(previous)
    return folder / "mlflow.db"


@pytest.fixture
def client(template_store: Path, tracking: str, tmp_path: Path):
    """A client on a private copy of the template store (MLFLOW_TRACKING_URI points at it)."""
    from mlflow import MlflowClient

    shutil.copyfile(template_store, tmp_path / "mlflow.db")
    return MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def _aliases(client) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def _tags(client, version: int) -> dict[str, str]:
    return client.get_model_version(NAME, str(version)).tags


# --------------------------------------------------------------------------- promote


def test_promote_sets_production_and_records_who_when_why(client) -> None:
    decision = promote(NAME, "1", by="alice", reason="first model", client=client)

    assert decision.action == "promote" and decision.version == 1
    assert _aliases(client) == {"production": 1}
    tags = _tags(client, 1)
    assert tags["promotion.action"] == "promote"
    assert tags["promotion.by"] == "alice"
    assert tags["promotion.reason"] == "first model"
    assert tags["promotion.metric"] == "test/accuracy"
    assert tags["promotion.value"] == "0.6000"
    assert tags["promotion.previous_version"] == "none"
    assert tags["promotion.forced"] == "false"
    assert tags["promotion.smoke_check"].startswith(
        "passed on 1 image from the model's input example"
    )
    when = datetime.fromisoformat(tags["promotion.at"].replace("Z", "+00:00"))
    assert abs(time.time() - when.timestamp()) < 120


def test_better_version_takes_production_and_old_one_keeps_previous(client) -> None:
    promote(NAME, "1", client=client)
    decision = promote(NAME, "2", reason="better", client=client)

    assert _aliases(client) == {"production": 2, "previous-production": 1}
    assert (decision.previous, decision.value, decision.previous_value) == (1, 0.7, 0.6)
    tags = _tags(client, 2)
    assert tags["promotion.previous_version"] == "1"
    assert tags["promotion.value"] == "0.7000"
    assert tags["promotion.previous_value"] == "0.6000"
    assert _tags(client, 1)["promotion.superseded_by"] == "2"
    assert decision.summary() == (
        f"{NAME}: production promoted version 2 (was version 1); test/accuracy 0.7000 vs 0.6000"
    )


def test_worse_version_is_refused_with_the_gap(client) -> None:
    client.set_registered_model_alias(NAME, "production", "2")

    with pytest.raises(PromotionRefused) as refused:
        promote(NAME, "1", client=client)

    message = str(refused.value)
    assert "test/accuracy 0.6000" in message
    assert "0.1000 below production version 2 (0.7000)" in message
    assert "--force" in message
    assert _aliases(client) == {"production": 2}
    assert "promotion.action" not in _tags(client, 1)


def test_force_promotes_a_worse_version_and_says_so(client) -> None:
    client.set_registered_model_alias(NAME, "production", "2")

    decision = promote(NAME, "1", force=True, reason="rollout bug in v2", client=client)

    assert decision.forced
    assert _aliases(client) == {"production": 1, "previous-production": 2}
    tags = _tags(client, 1)
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.previous_value"] == "0.7000"
    assert tags["promotion.reason"] == "rollout bug in v2"


def test_best_picks_the_highest_metric_and_a_rerun_moves_nothing(client) -> None:
    first = promote(NAME, "best", client=client)
    again = promote(NAME, "best", client=client)

    assert first.version == 2  # 0.7 beats 0.6 and the broken 0.5; version 4 has no metric
    assert again.action == "unchanged"
    assert _aliases(client) == {"production": 2}


def test_best_by_another_metric_counts_only_versions_that_have_it(client) -> None:
    decision = promote(NAME, "best", metric="val_accuracy", client=client)
    assert decision.version == 4  # 0.8 > 0.71 > 0.62; version 3 has no val_accuracy


def test_a_version_that_fails_the_smoke_check_never_gets_production(client) -> None:
    client.set_registered_model_alias(NAME, "production", "1")

    with pytest.raises(SmokeCheckError, match="version 3 failed the smoke check: predict raised"):
        promote(NAME, "3", force=True, client=client)

    assert _aliases(client) == {"production": 1}
    assert "promotion.action" not in _tags(client, 3)


def test_a_version_without_the_metric_is_refused_unless_forced(client) -> None:
    client.set_registered_model_alias(NAME, "production", "1")
    with pytest.raises(PromotionRefused, match="version 4 has no metric 'test/accuracy'"):
        promote(NAME, "4", client=client)
    assert _aliases(client) == {"production": 1}

    promote(NAME, "4", force=True, client=client)
    assert _aliases(client)["production"] == 4


def test_a_metric_tag_stands_in_for_a_missing_run_metric(client) -> None:
    client.set_model_version_tag(NAME, "4", "test_accuracy", "0.65")
    client.set_registered_model_alias(NAME, "production", "1")

    decision = promote(NAME, "4", client=client)

    assert decision.value == 0.65 and decision.previous_value == 0.6


def test_lower_is_better_for_losses(client) -> None:
    for version, loss in (("1", "0.9"), ("2", "0.4")):
        client.set_model_version_tag(NAME, version, "test_loss", loss)
    client.set_registered_model_alias(NAME, "production", "2")

    with pytest.raises(PromotionRefused, match="0.5000 above production version 2"):
        promote(NAME, "1", metric="test_loss", client=client)
    assert promote(NAME, "best", metric="test_loss", client=client).action == "unchanged"


def test_unknown_model_and_version_are_clear_errors(client) -> None:
    with pytest.raises(UserError, match="no registered model named 'nope'.*marketplace"):
        promote("nope", "1", client=client)
    with pytest.raises(UserError, match=r"has no version 9 \(versions: 1, 2, 3, 4\)"):
        promote(NAME, "9", client=client)


def test_a_decision_without_a_reason_gives_its_own(client) -> None:
    promote(NAME, "1", client=client)
    assert (
        _tags(client, 1)["promotion.reason"]
        == "the first version in production (test/accuracy 0.6000)"
    )
    promote(NAME, "2", client=client)
    assert _tags(client, 2)["promotion.reason"] == (
        "test/accuracy 0.7000 is at least production version 1's 0.6000"
    )
    rollback(NAME, client=client)
    assert _tags(client, 1)["promotion.reason"] == "rollback (no reason given)"


# --------------------------------------------------------------------------- the model page


def _description(client, version: int) -> str:
    return client.get_model_version(NAME, str(version)).description or ""


def _history(client, version: int) -> list[str]:
    """The headlines of a version's promotion history, oldest first."""
    lines = _description(client, version).split(descriptions.DECISIONS_HEADING)[-1].splitlines()
    return [re.search(r"\*\*(.+?)\*\*", line)[1] for line in lines if line.startswith("- ")]


def test_the_descriptions_say_who_holds_production_and_why_the_others_do_not(client) -> None:
    """A promotion, a refusal by the rule and by the smoke check, a forced promotion and a
    rollback, read back from the versions' descriptions and tags."""
    promote(NAME, "1", by="alice", client=client)
    promote(NAME, "2", by="alice", reason="weekly retrain", client=client)
    with pytest.raises(PromotionRefused):
        promote(NAME, "1", by="bob", client=client)
    refused = _tags(client, 1)
    assert refused["promotion.refused"] == (
        "version 1 has test/accuracy 0.6000, 0.1000 below production version 2 (0.7000)"
    )
    assert refused["promotion.refused_by"] == "bob" and "promotion.refused_at" in refused
    with pytest.raises(SmokeCheckError):
        promote(NAME, "3", force=True, by="bob", client=client)
    promote(NAME, "1", force=True, by="carol", reason="v2 mislabels shoes", client=client)
    rollback(NAME, by="dave", reason="shoes fixed upstream", client=client)

    assert _aliases(client) == {"production": 2, "previous-production": 1}
    assert _history(client, 2) == [
        "promoted to production",
        "left production",
        "back in production (rollback)",
    ]
    assert _history(client, 1) == [
        "promoted to production",
        "left production",
        "refused",
        "forced into production",
        "left production",
    ]
    assert _history(client, 3) == ["refused"]
    assert _history(client, 4) == []  # never tried: nothing said
    one, two, three = (_description(client, v) for v in (1, 2, 3))
    assert "by alice; test/accuracy 0.7000 vs 0.6000 of version 1, at least as good" in two
    assert "Reason: weekly retrain." in two
    assert "smoke check passed on 1 image" in two
    assert "by bob: version 1 has test/accuracy 0.6000, 0.1000 below production version 2" in one
    assert "by carol, the metric rule skipped; test/accuracy 0.6000 vs 0.7000 of version 2" in one
    assert "Reason: v2 mislabels shoes." in one
    assert "rolled back to version 2 by dave; this version got `previous-production`" in one
    assert "by dave, from version 1" in two and "Reason: shoes fixed upstream." in two
    assert "by bob: version 3 failed the smoke check: predict raised" in three
    # the status line, first (the versions table shows its first words): the verdict, then why
    status = {v: descriptions.status_of(_description(client, v)) for v in (1, 2, 3)}
    assert re.fullmatch(
        r"In production by a rollback from version 1 \(dave, [-\d]+ [:\d]+ UTC\)\. "
        r"Reason: shoes fixed upstream\.",
        status[2],
    ), status[2]
    assert re.fullmatch(
        r"Not in production: rolled back to version 2 by dave \([-\d]+ [:\d]+ UTC\)\. "
        r"Reason: shoes fixed upstream\.",
        status[1],
    ), status[1]
    assert status[3].startswith("Refused: version 3 failed the smoke check: predict raised")
    assert re.search(r" \(bob, [-\d]+ [:\d]+ UTC\)\.$", status[3]), status[3]
    # refused stays on the version that never got production; the forced one lost it
    assert _tags(client, 3)["promotion.refused"].startswith("version 3 failed the smoke check")
    assert "promotion.refused" not in _tags(client, 1)
    assert _tags(client, 2)["promotion.action"] == "rollback"
    assert _tags(client, 2)["promotion.reason"] == "shoes fixed upstream"


def test_a_long_history_keeps_the_registration_and_the_newest_decisions() -> None:
    text = "**resnet18** at 48 px, trained by run `train` (abcdef12)."
    for number in range(200):
        text = descriptions.append_decision(
            text, f"- 2026-12-01 09:{number:02d} UTC, **n{number}**"
        )
        assert len(text) <= descriptions.MAX_DESCRIPTION
    assert text.startswith("**resnet18** at 48 px")
    assert text.endswith("**n199**") and descriptions.DROPPED in text and "**n0**" not in text


def test_versions_logged_with_either_metric_name_compare(client, tmp_path: Path, capsys) -> None:
    """Versions 1-4 carry the older flat names; version 5 is logged as training logs now."""
    import mlflow

    mlflow.set_experiment("tests")
    _log_version(tmp_path, COLOUR_MODEL, {"test/accuracy": 0.65, "val/accuracy": 0.9}, "new")
    promote(NAME, "2", client=client)  # test_accuracy 0.7

    with pytest.raises(PromotionRefused, match=r"version 5 has test/accuracy 0.6500, 0.0500 below"):
        promote(NAME, "5", client=client)
    assert registry_main(["promote", "--version", "5", "--metric", "test_accuracy"]) == 2
    assert "version 5 has test/accuracy 0.6500" in capsys.readouterr().err  # the same metric
    assert promote(NAME, "best", client=client).action == "unchanged"  # 0.7 beats 0.65
    decision = promote(NAME, "best", metric="val_accuracy", client=client)
    assert (decision.version, decision.metric, decision.value) == (5, "val/accuracy", 0.9)

    assert registry_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[3:5] == ["test/accuracy", "val/accuracy"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line[:1].isdigit()}
    assert rows["5"][3:5] == ["0.6500", "0.9000"] and rows["2"][3:5] == ["0.7000", "0.7100"]
    assert registry_main(["compare", "2", "5"]) == 0
    table = capsys.readouterr().out.splitlines()
    accuracy = [line.split() for line in table if "accuracy" in line]
    assert accuracy == [
        ["test/accuracy", "0.7000", "0.6500", "-0.0500"],
        ["val/accuracy", "0.7100", "0.9000", "+0.1900"],
    ]
    assert registry_main(["show", "5"]) == 0
    assert "  test/accuracy  0.6500" in capsys.readouterr().out


# --------------------------------------------------------------------------- rollback


def test_rollback_swaps_production_and_previous_and_records_it(client) -> None:
    promote(NAME, "1", client=client)
    promote(NAME, "2", client=client)

    decision = rollback(NAME, reason="latency regression", by="bob", client=client)

    assert decision.action == "rollback" and decision.version == 1
    assert _aliases(client) == {"production": 1, "previous-production": 2}
    tags = _tags(client, 1)
    assert tags["promotion.action"] == "rollback"
    assert tags["promotion.by"] == "bob"
    assert tags["promotion.reason"] == "latency regression"
    assert tags["promotion.previous_version"] == "2"
    assert (tags["promotion.value"], tags["promotion.previous_value"]) == ("0.6000", "0.7000")

    assert "promotion.superseded_by" not in tags  # production again: not superseded
    assert _tags(client, 2)["promotion.superseded_by"] == "1"

    rollback(NAME, client=client)  # a second rollback undoes the first
    assert _aliases(client) == {"production": 2, "previous-production": 1}


def test_rollback_needs_a_previous_production(client) -> None:
    with pytest.raises(UserError, match="no registered model named 'nope'"):
        rollback("nope", client=client)
    with pytest.raises(UserError, match="no version of .* holds production"):
        rollback(NAME, client=client)
    promote(NAME, "1", client=client)
    with pytest.raises(UserError, match="holds previous-production"):
        rollback(NAME, client=client)


def test_rollback_refuses_a_previous_version_that_no_longer_works(client) -> None:
    client.set_registered_model_alias(NAME, "production", "1")
    client.set_registered_model_alias(NAME, "previous-production", "3")

    with pytest.raises(SmokeCheckError):
        rollback(NAME, client=client)
    assert _aliases(client) == {"production": 1, "previous-production": 3}


# --------------------------------------------------------------------------- legacy stage


def test_legacy_stage_follows_production_once_used(client) -> None:
    promote(NAME, "1", legacy_stage=True, client=client)
    assert client.get_model_version(NAME, "1").current_stage == "Production"
    assert resolve_model_uri(f"models:/{NAME}/Production") == f"models:/{NAME}/1"

    promote(NAME, "2", client=client)  # no flag: the stage is in use, so it follows
    assert client.get_model_version(NAME, "2").current_stage == "Production"
    assert client.get_model_version(NAME, "1").current_stage == "Archived"
    assert resolve_model_uri(f"models:/{NAME}/production") == f"models:/{NAME}/2"

    rollback(NAME, client=client)
    assert resolve_model_uri(f"models:/{NAME}/Production") == f"models:/{NAME}/1"


def test_legacy_stage_untouched_unless_asked(client) -> None:
    promote(NAME, "1", client=client)
    assert client.get_model_version(NAME, "1").current_stage == "None"
    with pytest.raises(UserError, match="no version of .* is in the legacy stage Production"):
        resolve_model_uri(f"models:/{NAME}/Production")

    again = promote(NAME, "1", legacy_stage=True, client=client)  # set it for production now
    assert again.action == "unchanged"
    assert resolve_model_uri(f"models:/{NAME}/Production") == f"models:/{NAME}/1"


# --------------------------------------------------------------------------- resolve


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


# --------------------------------------------------------------------------- smoke check


class _Fixed:
    """A stand-in model whose predict returns a fixed answer (or raises it)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def predict(self, frame):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _answer(**changes) -> pd.DataFrame:
    rows = {
        "category": ["Red things", "Blue things"],
        "probability": [0.7, 0.6],
        "probabilities": [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]],
    }
    rows.update(changes)
    return pd.DataFrame(rows)


def test_smoke_check_passes_a_well_formed_answer() -> None:
    result = smoke_check(_Fixed(_answer()), synthetic_images(2), "test")
    assert (result.images, result.categories) == (2, ["Red things", "Blue things"])


@pytest.mark.parametrize(
    ("answer", "rule"),
    [
        (ValueError("bad input\nmore"), "predict raised ValueError: bad input"),
        ([1, 2], "not a DataFrame"),
        (_answer().drop(columns="probabilities"), "lacks the column(s) probabilities"),
        (_answer().iloc[:1], "returned 1 rows for 2 images"),
        (_answer(category=[3, "Blue things"]), "row 0: category 3 is not a non-empty string"),
        (_answer(probability=[0.7, 1.5]), "row 1: probability 1.5 is not in [0, 1]"),
        (_answer(probabilities=[[0.5, 0.9, 0.1], [0.6, 0.3, 0.1]]), "sum to 1.5000, not 1"),
        (_answer(probabilities=[[1.2, -0.2, 0.0], [0.6, 0.3, 0.1]]), "not all in [0, 1]"),
        (_answer(probabilities=[[0.3, 0.7], [0.6, 0.3, 0.1]]), "different numbers"),
        (_answer(probability=[float("nan"), 0.6]), "probability nan is not in [0, 1]"),
    ],
)
def test_smoke_check_names_the_broken_rule(answer, rule: str) -> None:
    with pytest.raises(SmokeCheckError) as failed:
        smoke_check(_Fixed(answer), synthetic_images(2))
    assert rule in str(failed.value)


def test_smoke_images_come_from_the_clean_test_split(demo_clean: Path) -> None:
    images = clean_test_images(demo_clean, count=4)
    table = pd.read_parquet(demo_clean / "images.parquet")
    test = table[table["split"] == "test"]

    assert len(images) == min(4, len(test))
    assert all(image[:2] == b"\xff\xd8" for image in images)  # JPEG files
    assert clean_test_images(demo_clean / "missing") == []


def test_smoke_check_uses_clean_images_when_given(client, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    (clean / "images" / "32").mkdir(parents=True)
    ids = ["a", "b", "c"]
    for image_id, colour in zip(ids, [(250, 0, 0), (0, 250, 0), (0, 0, 250)], strict=True):
        (clean / "images" / "32" / f"{image_id}.jpg").write_bytes(_jpeg(colour))
    pd.DataFrame(
        {
            "image_id": ids,
            "product_id": ids,
            "root_category": ["R", "G", "B"],
            "label": [1, 2, 0],
            "split": ["test"] * 3,
            "file": [f"images/{i}.jpg" for i in ids],
        }
    ).to_parquet(clean / "images.parquet")
    (clean / "categories.json").write_text('["B", "G", "R"]')

    decision = promote(NAME, "1", clean=clean, client=client)

    assert f"3 images from the test split of {clean}" in decision.smoke_check


# --------------------------------------------------------------------------- concurrency


def test_two_promotions_at_once_leave_one_production(client) -> None:
    from mlflow import MlflowClient

    client.set_registered_model_alias(NAME, "production", "1")
    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            own = MlflowClient(tracking_uri=client.tracking_uri, registry_uri=client.tracking_uri)
            promote(NAME, version, force=True, client=own)
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("2", "4")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)  # a generous bound, not a speed test

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    aliases = _aliases(client)
    holders = [
        v for v in ("1", "2", "4") if "production" in client.get_model_version(NAME, v).aliases
    ]
    assert len(holders) == 1
    # They ran one after the other: the loser handed production to the winner.
    assert {aliases["production"], aliases["previous-production"]} == {2, 4}
    winner = _tags(client, aliases["production"])
    assert winner["promotion.previous_version"] == str(aliases["previous-production"])
    assert NAME + promotion.LOCK_SUFFIX not in {m.name for m in client.search_registered_models()}


def test_a_held_lock_makes_a_promotion_wait_then_fail_clearly(client) -> None:
    with promotion_lock(client, NAME), pytest.raises(UserError) as failed:
        promote(NAME, "1", client=client, lock_timeout=0.3)
    assert "another promotion of marketplace-classifier is in progress" in str(failed.value)
    assert _aliases(client) == {}
    promote(NAME, "1", client=client)  # released on exit
    assert _aliases(client) == {"production": 1}


def test_a_stale_lock_is_broken(client) -> None:
    client.create_registered_model(NAME + promotion.LOCK_SUFFIX)
    with promotion_lock(client, NAME, timeout=0.3, stale_after=-1.0):
        pass  # entered: the crashed holder's lock was deleted
    with pytest.raises(UserError, match="in progress"):
        client.create_registered_model(NAME + promotion.LOCK_SUFFIX)
        with promotion_lock(client, NAME, timeout=0.3):
            pass


# --------------------------------------------------------------------------- CLI


def test_cli_list_show_compare(client, capsys: pytest.CaptureFixture[str]) -> None:
    promote(NAME, "1", client=client)
    promote(NAME, "2", client=client)

    assert registry_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[:5] == ["version", "aliases", "stage", "test/accuracy", "val/accuracy"]
    rows = {line.split()[0]: line for line in lines[2:] if line[:1].isdigit()}
    assert list(rows) == ["4", "3", "2", "1"]
    assert "production" in rows["2"] and "0.7000" in rows["2"]
    assert "previous-production" in rows["1"]
    assert lines[-1] == "production: version 2"

    assert registry_main(["show"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{NAME} version 2\n")
    assert "  test/accuracy  0.7000" in shown
    assert "promotion.previous_version  1" in shown
    assert "  arch  two" in shown

    assert registry_main(["compare", "previous-production", "production"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["version", "1", "version", "2", "change"]
    accuracy = next(line for line in table if line.startswith("test/accuracy"))
    assert accuracy.split() == ["test/accuracy", "0.6000", "0.7000", "+0.1000"]
    arch = next(line for line in table if line.startswith("param arch"))
    assert arch.split() == ["param", "arch", "one", "two", "*"]


def test_cli_promote_refusal_and_rollback(client, capsys: pytest.CaptureFixture[str]) -> None:
    assert registry_main(["promote", "--version", "2", "--by", "carol", "--reason", "go"]) == 0
    assert capsys.readouterr().out.startswith(f"{NAME}: production promoted version 2")

    assert registry_main(["promote", "--version", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: refused: version 1 has test/accuracy 0.6000, 0.1000 below")

    assert registry_main(["promote", "--version", "1", "--force", "--legacy-stage"]) == 0
    assert registry_main(["rollback", "--reason", "oops"]) == 0
    assert "rolled back to version 2 (was version 1)" in capsys.readouterr().out
    assert client.get_model_version(NAME, "2").current_stage == "Production"
    assert _tags(client, 2)["promotion.reason"] == "oops"


def test_cli_errors_are_one_line(client, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in (
        (["show", "9"], "error: marketplace-classifier has no version 9 (versions: 1, 2, 3, 4)"),
        (["show", "production"], "error: no version of marketplace-classifier holds the alias"),
        (["list", "--model-name", "nope"], "error: no registered model named 'nope'"),
        (["promote", "--version", "best", "--metric", "f1"], "error: no version of"),
    ):
        assert registry_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(expected), err
        assert not any("Traceback" in line for line in err)


def test_cli_unreachable_server_fails_fast(monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_endpoint())
    started = time.monotonic()
    assert registry_main(["list"]) == 2
    # MLflow's own client retries for minutes; the check answers at once, even on a busy machine.
    assert time.monotonic() - started < 60
    assert capsys.readouterr().err.startswith("error: cannot reach the MLflow tracking server")


def test_cli_missing_sqlite_store_is_not_created(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry_main(["list"]) == 2
    assert "no tracking store at mlflow.db" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_help_for_every_command() -> None:
    for command in ([], ["list"], ["show"], ["compare"], ["promote"], ["rollback"]):
        result = subprocess.run(
            [sys.executable, "-m", "registry", *command, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: python -m registry" in result.stdout


# --------------------------------------------------------------------------- the promote step


def _step_runs(client) -> list:
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name LIKE 'promote%'"
    )


def test_promote_step_records_the_decision_in_its_run(client, tmp_path: Path) -> None:
    from steps.promote import main as promote_step

    decision = promote_step(
        ["--version", "2", "--reason", "weekly retrain", "--by", "dana", "--clean", "nothing"]
    )

    (run,) = _step_runs(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "promote v2 -> production"
    assert run.data.params["version"] == "2" and run.data.params["force"] == "false"
    assert run.data.params["reason"] == "weekly retrain" and run.data.params["by"] == "dana"
    assert run.data.tags["promotion.outcome"] == "promote"
    assert run.data.tags["promotion.version"] == "2"
    assert run.data.params["by"] == "dana"
    # what the params say is not logged twice as tags
    assert not {"promotion.metric", "promotion.by", "promotion.reason"} & set(run.data.tags)
    assert _tags(client, 2)["promotion.run_id"] == run.info.run_id == decision.run_id
    assert _aliases(client) == {"production": 2}


def test_promote_step_refusal_is_a_failed_run_and_a_step_error(client) -> None:
    from steps.promote import main as promote_step

    client.set_registered_model_alias(NAME, "production", "2")
    with pytest.raises(UserError, match="refused: version 1 has test/accuracy 0.6000"):
        promote_step(["--version", "1", "--force", "false"])

    (run,) = _step_runs(client)
    assert run.info.status == "FAILED"
    assert run.info.run_name == "promote v1 refused"
    assert run.data.tags["promotion.version"] == "1"
    assert run.data.tags["promotion.outcome"] == "refused"
    assert "0.1000 below" in run.data.tags["promotion.error"]
    assert _aliases(client) == {"production": 2}


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((3, "promote"), "promote v3 -> production"),
        ((3, "promote", True), "promote v3 -> production (forced)"),
        ((3, "refused"), "promote v3 refused"),
        ((None, "refused"), "promote (no version) refused"),
        ((1, "promote", False, "marketplace-text-classifier"), "promote text v1 -> production"),
        ((2, "unchanged", False, NAME), "promote v2 (already production)"),
    ],
)
def test_promote_run_names_say_what_happened(args, name) -> None:
    from steps.promote import run_name

    assert run_name(*args) == name


def test_promote_step_by_best_names_the_version_it_chose(client) -> None:
    from steps.promote import main as promote_step

    promote_step(["--clean", "nothing"])  # --version best, --metric test/accuracy
    promote_step(["--clean", "nothing", "--metric", "test_accuracy"])  # the older spelling

    by_outcome = {run.data.tags["promotion.outcome"]: run for run in _step_runs(client)}
    first, again = by_outcome["promote"], by_outcome["unchanged"]
    assert first.info.run_name == "promote v2 -> production"
    assert again.info.run_name == "promote v2 (already production)"
    assert again.data.params["metric"] == "test/accuracy"
    assert "reason" not in first.data.params  # unset: left out, not logged as ''
    reason = first.data.tags["promotion.reason"]  # none given: the decision's own
    assert reason == "the first version in production (test/accuracy 0.7000)"


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_two_promote_processes_at_once_leave_one_production(client, tmp_path: Path) -> None:
    client.set_registered_model_alias(NAME, "production", "1")
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "registry",
                "promote",
                "--version",
                version,
                "--force",
                "--clean",
                str(tmp_path / "none"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in ("2", "4")
    ]
    results = [process.communicate(timeout=600) for process in processes]

    assert [p.returncode for p in processes] == [0, 0], results
    aliases = _aliases(client)
    assert {aliases["production"], aliases["previous-production"]} == {2, 4}
    holders = [
        v for v in ("1", "2", "4") if "production" in client.get_model_version(NAME, v).aliases
    ]
    assert len(holders) == 1


@pytest.mark.slow
def test_promote_and_rollback_against_an_mlflow_server(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    server = start_mlflow_server(tmp_path / "server", artifacts_destination=str(tmp_path / "art"))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(server.url)
        mlflow.set_experiment("registry-server")
        _log_version(tmp_path, COLOUR_MODEL, {"test_accuracy": 0.6}, "one")
        _log_version(tmp_path, COLOUR_MODEL, {"test_accuracy": 0.7}, "two")
        client = MlflowClient(server.url)
        scratch = tmp_path / "scratch"  # where every temporary folder goes from now on
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))

        promote(NAME, "1", client=client)
        assert list(scratch.iterdir()) == []  # the smoke check removed the model it downloaded
        with pytest.raises(PromotionRefused):
            client.set_registered_model_alias(NAME, "production", "2")
            promote(NAME, "1", client=client)
        assert registry_main(["rollback"]) == 2  # 2 was set by hand: no previous-production
        promote(NAME, "2", force=True, client=client)  # already production: unchanged
        client.set_registered_model_alias(NAME, "production", "1")
        promote(NAME, "2", client=client)
        assert registry_main(["rollback", "--reason", "server test"]) == 0
        assert _aliases(client) == {"production": 1, "previous-production": 2}
        assert resolve_model_uri(f"models:/{NAME}@production") == f"models:/{NAME}/1"
    finally:
        server.stop()


@pytest.mark.slow
def test_mlflow_run_promote_entry_point(client, tmp_path: Path) -> None:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri, "PATH": path}
    env.pop("MLFLOW_RUN_ID", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(ROOT),
            "-e",
            "promote",
            "--env-manager",
            "local",
            "--experiment-name",
            "tests",
            "-P",
            "version=best",
            "-P",
            "reason=entry point",
            "-P",
            f"clean={tmp_path / 'nothing'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _aliases(client) == {"production": 2}
    tags = _tags(client, 2)
    assert tags["promotion.reason"] == "entry point"
    assert tags["promotion.by"] == promotion.current_user()
    assert client.get_run(tags["promotion.run_id"]).data.tags["promotion.outcome"] == "promote"


@pytest.mark.slow
def test_a_real_classifier_is_smoke_checked_on_clean_test_images(
    tracking: str, demo_clean: Path
) -> None:
    """The training helper's pyfunc (marketplace_models.image), promoted on the test split."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    from marketplace_models import image as model
    from marketplace_models.network import ClassifierConfig, build_network
    from registry.register import register_classifier

    categories = json.loads((demo_clean / "categories.json").read_text())
    torch.manual_seed(0)
    network = build_network("resnet18", len(categories)).eval()
    config = ClassifierConfig(arch="resnet18", categories=categories, image_size=32)
    mlflow.set_experiment("tests")
    with mlflow.start_run():
        mlflow.log_metric("test_accuracy", 0.3)
        info = model.log_classifier(network, config, example_image=_jpeg((90, 90, 90)))
    version = register_classifier(info.model_uri, model_name=NAME)

    decision = promote(NAME, "best", clean=demo_clean, reason="first real model")

    assert decision.version == int(version.version)
    assert f"from the test split of {demo_clean}" in decision.smoke_check
    assert resolve_model_uri(f"models:/{NAME}@production") == f"models:/{NAME}/{version.version}"
    aliases = MlflowClient().get_registered_model(NAME).aliases
    assert {k: int(v) for k, v in aliases.items()} == {"production": int(version.version)}


@pytest.mark.parametrize(
    ("name", "entry_point"),
    [
        ("marketplace-classifier", "train"),
        ("marketplace-text-classifier", "train_text"),
        ("marketplace-listing-classifier", "train_combined"),
    ],
)
def test_a_missing_model_names_the_entry_point_that_trains_its_kind(
    tmp_path: Path, name: str, entry_point: str, monkeypatch, capsys
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_registered_models()  # an empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert registry_main(["list", "--model-name", name]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no registered model named {name!r}" in error, error
    assert f"`mlflow run . -e {entry_point} --env-manager local`" in error, error
