"""steps.baselines: sklearn floors for price and images, tracked in MLflow, and their report."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clean_data import CleanData
from cli import UserError
from marketplace_models.sklearn_features import ImageFeatures, gradient_histogram
from steps import baselines as step
from steps.baselines import (
    check_rows,
    hash_split,
    price_metrics,
    product_splits,
    results_markdown,
)
from steps.evaluation import align_probabilities, label_indices, top_k_accuracy

REPO = Path(__file__).resolve().parents[2]
INHERITED_RUN = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")  # a step subprocess must not attach
# The conftest's 60-product demo is too small for a fair fight (18 test images, 11 test
# prices): at 600 products every baseline clears its floor by a wide margin.
BASELINE_PRODUCTS = 600
IMAGE_SIZE = 64


def jpeg_bytes(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def run_cli(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_RUN}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


def write_clean(folder: Path, products: int, images_per_class: dict[str, str]) -> Path:
    """A hand-made clean folder: ``products`` priced products and one image per entry of
    ``images_per_class`` (image id -> split), all of root category A or B."""
    folder.mkdir(parents=True)
    ids = [f"p{i}" for i in range(products)]
    table = pd.DataFrame(
        {
            "product_id": ids,
            "name": [f"thing {i}" for i in ids],
            "description": ["nice"] * products,
            "price": np.linspace(5, 50, products),
            "price_flag": ["ok"] * products,
            "root_category": ["A" if i % 2 else "B" for i in range(products)],
            "sub_category": ["x"] * products,
            "county": ["Kent"] * products,
        }
    )
    table.to_parquet(folder / "products.parquet")
    rows = []
    (folder / "images" / "32").mkdir(parents=True)
    (folder / "images" / "complete_32.json").write_text("{}")  # a finished size, as clean_images
    for k, (image_id, split) in enumerate(images_per_class.items()):
        (folder / "images" / "32" / f"{image_id}.jpg").write_bytes(jpeg_bytes((k * 20 % 255, 0, 0)))
        rows.append(
            {
                "image_id": image_id,
                "product_id": ids[k % products],
                "root_category": "A" if k % 2 else "B",
                "label": k % 2,
                "split": split,
            }
        )
    pd.DataFrame(rows).to_parquet(folder / "images.parquet")
    (folder / "categories.json").write_text(json.dumps(["A", "B"]))
    return folder


# --- pure pieces ------------------------------------------------------------------------------


def test_hash_split_is_stable_and_follows_the_fractions() -> None:
    keys = [f"product-{i}" for i in range(20_000)]
    splits = pd.Series([hash_split(key, 0.15, 0.15) for key in keys])
    assert [hash_split(key, 0.15, 0.15) for key in keys[:50]] == list(splits[:50])
    shares = splits.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.015)
    assert shares["val"] == pytest.approx(0.15, abs=0.015)
    assert shares["test"] == pytest.approx(0.15, abs=0.015)
    assert hash_split("anything", 0.0, 0.0) == "train"


def test_products_take_their_images_split_and_the_rest_a_hashed_one() -> None:
    images = pd.DataFrame(
        {
            "product_id": ["a", "a", "b"],
            "split": ["test", "test", "val"],
            "image_id": ["1", "2", "3"],
        }
    )
    products = pd.DataFrame({"product_id": ["a", "b", "c", "d"]})
    clean = CleanData(
        Path("."), images, [], products, {"params": {"val_frac": 0.2, "test_frac": 0.1}}
    )
    splits = product_splits(products, clean)
    assert list(splits[:2]) == ["test", "val"]
    assert list(splits[2:]) == [hash_split("c", 0.2, 0.1), hash_split("d", 0.2, 0.1)]


def test_top_k_accuracy_counts_the_true_class_among_the_k_most_probable() -> None:
    classes = ["a", "b", "c", "d"]
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1, 0.0],  # a first
            [0.1, 0.2, 0.3, 0.4],  # a last
            [0.3, 0.4, 0.2, 0.1],  # c third
        ]
    )
    true = label_indices(["a", "a", "c"], classes)
    assert top_k_accuracy(probabilities, true, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(probabilities, true, 3) == pytest.approx(2 / 3)
    # a class the model never saw (its column is all zeros after alignment) is never right
    aligned = align_probabilities(probabilities[:, :3], classes[:3], classes)
    assert top_k_accuracy(aligned, label_indices(["d"] * 3, classes), 3) == 0.0


def test_price_metrics_are_in_pounds_and_r2_on_log_price() -> None:
    metrics = price_metrics(np.array([10.0, 20.0]), np.array([13.0, 16.0]), "test")
    assert metrics["test/mae"] == pytest.approx(3.5)
    assert metrics["test/rmse"] == pytest.approx(np.sqrt((9 + 16) / 2))
    assert price_metrics(np.array([5.0, 50.0]), np.array([5.0, 50.0]), "val")["val/r2_log"] == 1.0


@pytest.mark.parametrize("kind", ["ridge", "hgb"])
def test_price_models_take_a_missing_description_as_none_or_nan(kind: str) -> None:
    """One product without a description: None in a one-row frame, NaN in pandas' str dtype."""
    words = ["oak", "table", "sofa", "ps5", "boxed", "used", "lamp", "chair"]
    rows = 40
    train = pd.DataFrame(
        {
            "name": [f"{words[i % 8]} {words[(i * 3) % 8]}" for i in range(rows)],
            "description": [None if i % 5 == 0 else f"{words[i % 7]} item" for i in range(rows)],
            "root_category": ["Home & Garden", "Appliances"] * (rows // 2),
            "sub_category": ["Tables", "Lamps"] * (rows // 2),
            "county": ["Berkshire"] * rows,
        }
    )
    model = step.build_price_model(kind).fit(train, np.linspace(5.0, 500.0, rows))
    one = pd.DataFrame(
        {
            "name": ["Oak table"],
            "description": [None],
            "root_category": ["Home & Garden"],
            "sub_category": [None],
            "county": [None],
        }
    )
    assert one["description"].dtype == object  # None stays None here
    assert one.astype("str")["description"].isna().all()  # and NaN in pandas' str dtype
    for frame in (one, one.astype("str")):
        prices = model.predict(frame)
        assert np.all(np.isfinite(prices)) and np.all(prices > 0)


def test_check_rows_says_which_split_is_too_small() -> None:
    table = pd.DataFrame({"split": ["train"] * 12 + ["val"], "label": ["a", "b"] * 6 + ["a"]})
    with pytest.raises(UserError, match=r"too few rows.*test has 0"):
        check_rows(table, "price")
    table = pd.DataFrame({"split": ["train"] * 12 + ["val", "test"], "label": ["a"] * 14})
    with pytest.raises(UserError, match="too few classes"):
        check_rows(table, "image", "label")
    table.loc[0, "label"] = "b"
    assert check_rows(table, "image", "label") == {"train": 12, "val": 1, "test": 1}


@pytest.mark.parametrize(
    "metrics",
    [
        {"test/rmse": 12.3456, "test/mae": 7.0, "test/r2_log": 0.81234},
        {"test_rmse": 12.3456, "test_mae": 7.0, "test_r2_log": 0.81234},  # an older results.json
    ],
    ids=["split-slash-name", "older-flat-names"],
)
def test_results_markdown_is_the_same_text_for_the_same_results(metrics) -> None:
    results = {
        "rows": {"price": {"train": 8, "val": 1, "test": 2}},
        "models": [
            {
                "task": "price",
                "model": "ridge",
                "run_id": "abc",
                "params": {"alpha": 3.0},
                "metrics": metrics,
            }
        ],
    }
    text = results_markdown(results)
    assert text == results_markdown(json.loads(json.dumps(results)))
    assert "(train 8, val 1, test 2 rows)" in text
    assert "| ridge on TF-IDF + one-hot | alpha=3 | 12.35 | 7.00 | 0.812 |" in text
    assert "abc" not in text  # no run ids: the README table must not change between runs


def test_search_ranks_candidates_on_val_each_in_a_nested_run(tracking: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    scores = {0.1: 0.5, 1.0: 0.8, 10.0: 0.8}  # a tie: the first of the grid wins

    def fit(params: dict) -> step.Candidate:
        return step.Candidate(
            params, f"model C={params['C']}", {"val/accuracy": scores[params["C"]]}
        )

    with mlflow.start_run(run_name="outer") as outer:
        best = step.search("m", [{"C": c} for c in scores], fit, "val/accuracy", True)
        single = step.search("s", [{"C": 0.1}], fit, "val/accuracy", True)
    assert best.model == "model C=1.0"
    assert single.model == "model C=0.1"
    client = MlflowClient(tracking)
    children = client.search_runs(
        [outer.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outer.info.run_id}'",
    )
    assert sorted(run.info.run_name for run in children) == ["m C=0.1", "m C=1", "m C=10"]
    assert {run.data.metrics["val/accuracy"] for run in children} == {0.5, 0.8}


# --- image features ---------------------------------------------------------------------------


def test_image_features_take_bytes_paths_and_base64_alike(tmp_path: Path) -> None:
    data = jpeg_bytes()
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    features = ImageFeatures(size=8)
    frame = pd.DataFrame({"image": [data, str(path), base64.b64encode(data).decode()]})
    out = features.fit(frame).transform(frame)
    assert out.shape == (3, features.n_features) == (3, 3 * 8 * 8 + 3 * 8 + 6 * 6 * 9)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], out[1])
    np.testing.assert_allclose(out[0], out[2])
    grey = io.BytesIO()
    Image.new("L", (20, 50), 128).save(grey, format="PNG")
    assert features.transform([grey.getvalue()]).shape == (1, features.n_features)
    with pytest.raises(ValueError, match="not a readable image"):
        features.transform(pd.DataFrame({"image": [b"not an image"]}))


def test_gradient_histogram_sees_edge_direction() -> None:
    vertical_edge = np.zeros((16, 16), dtype=np.float32)
    vertical_edge[:, 8:] = 1.0  # brightness changes along x: gradient direction 0
    horizontal_edge = vertical_edge.T  # gradient direction 90 degrees
    a = gradient_histogram(vertical_edge, 1, 4)
    b = gradient_histogram(horizontal_edge, 1, 4)
    assert a.argmax() == 0
    assert b.argmax() == 2


# --- bad input: one line, exit code 2, the step to run ------------------------------------------


def test_no_clean_data_names_the_step_to_run(tmp_path: Path) -> None:
    result = run_cli("steps.baselines", "--clean", "/nonexistent", cwd=tmp_path)
    assert_one_line_error(result, "clean_tabular")
    assert not (tmp_path / "mlflow.db").exists()  # nothing logged for a run that cannot start


def test_missing_image_size_names_clean_images_and_the_sizes_there(tmp_path: Path) -> None:
    clean = write_clean(tmp_path / "clean", 20, {f"i{k}": "train" for k in range(4)})
    result = run_cli("steps.baselines", "--clean", str(clean), "--image-size", "256", cwd=tmp_path)
    assert_one_line_error(result, "clean_images", "--size 256", "found: 32")


def test_too_few_rows_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    images = {f"i{k}": "train" for k in range(12)} | {"v": "val"}  # no test images
    clean = write_clean(tmp_path / "clean", 20, images)
    result = run_cli("steps.baselines", "--clean", str(clean), "--image-size", "32", cwd=tmp_path)
    assert_one_line_error(result, "too few rows", "test has 0")


def test_report_without_a_store_says_to_run_baselines(tmp_path: Path) -> None:
    result = run_cli("steps.baselines_report", cwd=tmp_path)
    assert_one_line_error(result, "baselines")
    assert not (tmp_path / "mlflow.db").exists()


# --- the whole step on a demo export ----------------------------------------------------------


@pytest.fixture(scope="module")
def baselines_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600-product demo export cleaned at 64 px (about 10 s)."""
    from steps.clean_images import clean_images
    from steps.clean_tabular import clean_tabular
    from steps.demo_data import make_export

    root = tmp_path_factory.mktemp("baselines")
    make_export(root / "raw", products=BASELINE_PRODUCTS, seed=0)
    with pytest.MonkeyPatch.context() as patch:  # a store of its own, its artifacts beside it
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for variable in INHERITED_RUN:
            patch.delenv(variable, raising=False)
        clean_tabular(root / "raw", root / "clean")
        clean_images(root / "raw", root / "clean", size=IMAGE_SIZE)
    return root / "clean"


@pytest.fixture(scope="module")
def baselines_run(baselines_clean: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run of the step (with the search) in its own tracking store."""
    import mlflow

    home = tmp_path_factory.mktemp("baselines-store")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
        for variable in INHERITED_RUN:
            patch.delenv(variable, raising=False)
        mlflow.set_tracking_uri(uri)
        report = step.main(["--clean", str(baselines_clean)])  # --image-size auto: 64 px
        assert report["image_size"] == IMAGE_SIZE
        yield {"uri": uri, "report": report, "home": home, "clean": baselines_clean}
        while mlflow.active_run():
            mlflow.end_run()


def _metrics(report: dict, task: str, model: str) -> dict[str, float]:
    (entry,) = [m for m in report["models"] if m["task"] == task and m["model"] == model]
    return entry["metrics"]


@pytest.mark.slow
def test_every_baseline_beats_its_dummy_floor(baselines_run) -> None:
    report = baselines_run["report"]
    floor = _metrics(report, "price", "dummy")
    for model in ("ridge", "hgb"):
        metrics = _metrics(report, "price", model)
        assert metrics["test/rmse"] < 0.8 * floor["test/rmse"], model
        assert metrics["test/mae"] < 0.8 * floor["test/mae"], model
        assert metrics["test/r2_log"] > floor["test/r2_log"] + 0.3, model
    floor = _metrics(report, "image", "dummy")
    metrics = _metrics(report, "image", "logreg")
    assert metrics["test/accuracy"] > 1.5 * floor["test/accuracy"]
    assert metrics["test/macro_f1"] > floor["test/macro_f1"]
    assert metrics["test/top3_accuracy"] > floor["test/top3_accuracy"]


@pytest.mark.slow
def test_runs_hold_the_metrics_artifacts_and_the_search(baselines_run) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(baselines_run["uri"])
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_name = {run.info.run_name: run for run in runs}
    parent = by_name["baselines"]
    assert parent.data.tags["step"] == "baselines"
    children = {
        name: run
        for name, run in by_name.items()
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {
        "price-dummy",
        "price-ridge",
        "price-hgb",
        "image-dummy",
        "image-logreg",
    }
    for name, run in children.items():
        keys = (
            ("rmse", "mae", "r2_log")
            if name.startswith("price")
            else (
                "accuracy",
                "macro_f1",
                "top3_accuracy",
            )
        )
        for split in ("val", "test"):
            assert all(f"{split}/{key}" in run.data.metrics for key in keys), name
        assert run.data.params["search"] in ("true", "false"), name  # one spelling, as the parent
        # the model is logged under the run's name, its test metrics against the test split
        [logged] = client.search_logged_models(
            experiment_ids=[experiment.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'",
        )
        assert logged.name == name
        tied = {m.key: m.dataset_name for m in logged.metrics if m.key.startswith("test/")}
        dataset = f"{'products' if name.startswith('price') else 'images'}-test"
        assert tied and set(tied.values()) == {dataset}, name
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        expected = (
            {"pred_vs_true.png"}
            if name.startswith("price")
            else {
                "confusion_matrix.png",
                "classification_report.json",
                "classification_report.txt",
            }
        )
        assert expected <= artifacts, name
        assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {
            f"{'products' if name.startswith('price') else 'images'}-{s}"
            for s in ("train", "val", "test")
        }
    # the search: one nested run per candidate under its model's run, ranked on val
    ridge = children["price-ridge"]
    candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == ridge.info.run_id]
    assert len(candidates) == len(step.RIDGE_ALPHA_GRID)
    best = min(candidates, key=lambda r: r.data.metrics["val/rmse"])
    assert float(ridge.data.params["alpha"]) == float(best.data.params["alpha"])
    assert all("test/rmse" not in r.data.metrics for r in candidates)  # chosen on val alone
    logreg = children["image-logreg"]
    candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == logreg.info.run_id]
    assert len(candidates) == 2 * len(step.LOGREG_C_GRID)
    assert logreg.data.metrics["val/accuracy"] == max(
        r.data.metrics["val/accuracy"] for r in candidates
    )
    assert parent.data.params["search"] == "true"
    results = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "results.json")).read_text()
    )
    assert results == json.loads(json.dumps(baselines_run["report"]))


@pytest.mark.slow
def test_logged_models_load_and_predict_on_raw_columns(baselines_run) -> None:
    import mlflow

    report = baselines_run["report"]
    run_ids = {(m["task"], m["model"]): m["run_id"] for m in report["models"]}
    products = pd.DataFrame(
        {
            "name": ["Brand new ps5", "Spares or repairs sofa"],
            "description": ["Boxed, barely used", None],
            "root_category": ["Video Games & Consoles", "Home & Garden"],
            "sub_category": ["Consoles", None],
            "county": ["Berkshire", "Nowhere Shire"],  # unseen: one-hot ignores it
        }
    )
    for model in ("dummy", "ridge", "hgb"):
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_ids['price', model]}/price-{model}")
        prices = np.asarray(loaded.predict(products), dtype=float)
        assert prices.shape == (2,) and np.all(prices > 0), model
    ridge = mlflow.pyfunc.load_model(f"runs:/{run_ids['price', 'ridge']}/price-ridge")
    ps5, sofa = ridge.predict(products)
    assert ps5 > sofa  # a new console is dearer than a sofa for spares

    raw = sorted((baselines_run["clean"].parent / "raw" / "images").glob("*.jpg"))
    images = pd.DataFrame({"image": [p.read_bytes() for p in raw[:3]]})  # raw photos, any size
    categories = json.loads((baselines_run["clean"] / "categories.json").read_text())
    for model in ("dummy", "logreg"):
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_ids['image', model]}/image-{model}")
        predicted = list(loaded.predict(images))
        assert len(predicted) == 3 and set(predicted) <= set(categories), model


@pytest.mark.slow
def test_the_image_model_brings_its_code_and_loads_outside_the_repo(
    baselines_run, tmp_path
) -> None:
    """A fresh process elsewhere imports ImageFeatures from the model's own code folder."""
    run_id = next(m["run_id"] for m in baselines_run["report"]["models"] if m["model"] == "logreg")
    image = next((baselines_run["clean"] / "images" / str(IMAGE_SIZE)).glob("*.jpg"))
    script = (
        "import sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model('runs:/{run_id}/image-logreg')\n"
        f"frame = pd.DataFrame({{'image': [open({str(image)!r}, 'rb').read()]}})\n"
        "print(model.predict(frame)[0])\n"
        "print(sys.modules['marketplace_models.sklearn_features'].__file__)\n"
        "print('steps' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_RUN}
    env["MLFLOW_TRACKING_URI"] = baselines_run["uri"]
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    category, module_file, steps_imported = result.stdout.strip().splitlines()[-3:]
    assert category in json.loads((baselines_run["clean"] / "categories.json").read_text())
    assert str(REPO) not in module_file and "code" in Path(module_file).parts
    assert steps_imported == "False"  # a logged baseline carries marketplace_models only


@pytest.mark.slow
def test_report_prints_the_latest_runs_tables(baselines_run) -> None:
    result = run_cli("steps.baselines_report", cwd=baselines_run["home"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == results_markdown(baselines_run["report"]).strip()
    assert "| most frequent (DummyClassifier) |" in result.stdout
    assert "| ridge on TF-IDF + one-hot |" in result.stdout


@pytest.mark.slow
def test_the_learning_path_sets_the_baselines_beside_the_deep_models(baselines_run, capsys):
    """make results: baselines and a simple CNN on the same cleaned data, in one table."""
    import mlflow

    from steps import learning_path
    from steps import train as train_step

    argv = ["--clean", str(baselines_run["clean"]), "--arch", "simplecnn", "--weights", "none"]
    argv += ["--image-size", "32", "--epochs", "2", "--batch-size", "32", "--register", "false"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(baselines_run["home"])
        patch.setenv("MLFLOW_TRACKING_URI", baselines_run["uri"])
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
        mlflow.set_tracking_uri(baselines_run["uri"])
        train_step.main(argv)
        table = learning_path.main([])

    client = mlflow.MlflowClient(baselines_run["uri"])
    [cnn] = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        "tags.mlflow.runName LIKE 'train simplecnn%'",
    )
    lines = table.splitlines()
    assert cnn.data.tags["data_digest"] in lines[0]  # one test split for every row
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert {"sklearn dummy", "sklearn logreg", "simplecnn"} <= set(rows)
    assert f"{cnn.data.metrics['test/accuracy']:.3f}" in rows["simplecnn"]
    assert "random weights (from scratch)" in rows["simplecnn"]
    logreg = _metrics(baselines_run["report"], "image", "logreg")
    assert f"{logreg['test/accuracy']:.3f}" in rows["sklearn logreg"]
    assert "No baselines run" not in table and "No simple CNN" not in table
