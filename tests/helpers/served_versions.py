"""Small real classifier versions for service tests, and a running ``python -m serve``.

``make_store`` fills a sqlite tracking store with versions of ``marketplace-classifier``
logged by ``marketplace_models.image.log_classifier`` (resnet18 at 32 px, random weights, so they
load and answer in milliseconds):

    version 1  seed 0, with its ONNX export              test_accuracy 0.6
    version 2  seed 1, with its ONNX export              test_accuracy 0.7
    version 3  no ONNX export (as logged before exports existed)
    version 4  broken: its config names resnet34, its weights are a resnet18's

No alias is set: each test decides what holds ``production``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cli.processes import LOOPBACK, free_port, log_tail, start_in_group, stop_group
from serve.settings import Settings
from tests.helpers.servers import wait_for_http

NAME = "marketplace-classifier"
CATEGORIES = ["Appliances", "Home & Garden", "Phones"]
IMAGE_SIZE = 32
GOOD, SECOND, NO_ONNX, BROKEN = 1, 2, 3, 4
SERVICE_START_TIMEOUT_S = 120.0
FAST_RELOAD = 0.2  # seconds between registry polls: a test sees a new alias at once


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=(255 - colour[0], 90, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


PHOTOS = [jpeg((200, 30, 30)), jpeg((30, 200, 30), (80, 40)), jpeg((30, 30, 200), (48, 96))]


def _network(seed: int):
    import torch

    from marketplace_models.network import build_network

    torch.manual_seed(seed)
    return build_network("resnet18", len(CATEGORIES)).eval()


def settings_for(uri: str, **overrides) -> Settings:
    """The service's settings over the store at ``uri``, polling it every FAST_RELOAD s."""
    return Settings(**{"tracking_uri": uri, "reload_interval": FAST_RELOAD, **overrides})


def upload(data: bytes, name: str = "photo.jpg", field: str = "image") -> dict:
    """``data`` as a multipart file field, of no declared image type."""
    return {field: (name, data, "application/octet-stream")}


def photo(index: int = 0) -> dict:
    """``PHOTOS[index]`` as the ``image`` field, declared a JPEG."""
    return {"image": ("photo.jpg", PHOTOS[index], "image/jpeg")}


def serve_tests_experiment(client, uri: str) -> str:
    """The id of the store's ``serve-tests`` experiment, made with its artifacts beside the
    database (not in the working folder's ``mlruns/``)."""
    found = client.get_experiment_by_name("serve-tests")
    if found is not None:
        return found.experiment_id
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    return client.create_experiment("serve-tests", artifact_location=str(artifacts))


def make_store(folder: Path) -> str:
    """Create ``folder/mlflow.db`` with the four versions above; return its tracking URI."""
    import mlflow

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig
    from registry.register import register_classifier

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = serve_tests_experiment(mlflow.MlflowClient(tracking_uri=uri), uri)
        config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)
        specs = [(0, True, 0.6), (1, True, 0.7), (2, False, 0.5)]
        for seed, onnx, accuracy in specs:
            with mlflow.start_run(experiment_id=experiment_id):
                mlflow.log_metric("test_accuracy", accuracy)
                info = log_classifier(
                    _network(seed),
                    config,
                    example_image=PHOTOS[0],
                    onnx=onnx,
                    parity_images=PHOTOS[1:],
                )
            register_classifier(info.model_uri, tags={"test_accuracy": accuracy})
        broken = ClassifierConfig(arch="resnet34", categories=CATEGORIES, image_size=IMAGE_SIZE)
        with mlflow.start_run(experiment_id=experiment_id):
            info = log_classifier(_network(3), broken, example_image=PHOTOS[0], onnx=False)
        register_classifier(info.model_uri, tags={"test_accuracy": 0.9})
    finally:
        mlflow.set_tracking_uri(previous)
    return uri


LISTING_TEXTS = {
    "Appliances": ["washing machine", "fridge freezer", "microwave"],
    "Home & Garden": ["corner sofa", "garden bench", "wall mirror"],
    "Phones": ["iphone", "samsung galaxy", "phone case"],
}


def _text_classifier():
    import pandas as pd

    from steps.train_text import Listings, select_and_fit

    rows = []
    for label, nouns in enumerate(LISTING_TEXTS.values()):
        for i in range(12):
            noun = nouns[i % len(nouns)]
            rows.append(
                {
                    "product_id": f"{label}-{i}",
                    "text": f"{noun.capitalize()} for sale\nLovely {noun}.",
                    "label": label,
                    "split": "val" if i % 4 == 0 else "train",
                }
            )
    listings = Listings(pd.DataFrame(rows), list(CATEGORIES), Path("."))
    return select_and_fit(listings, c_values=(10.0,), min_df=1).classifier


def add_listing_models(uri: str) -> None:
    """Register a text model and a listing model (categories :data:`CATEGORIES`) in the
    store at ``uri``, each under its own name with its ``input`` tag; no alias is set.

    The text model is TF-IDF trained on a few listings of :data:`LISTING_TEXTS`; the
    listing model holds :func:`_network` (0)'s weights, that text model and a fusion head
    with seeded random weights."""
    import mlflow
    import torch

    from marketplace_models.kinds import IMAGE_TEXT, TEXT
    from marketplace_models.listing import FusionConfig, FusionHead, log_listing_classifier
    from marketplace_models.network import ClassifierConfig
    from marketplace_models.text import log_text_classifier
    from registry.kinds import INPUT_TAG, LISTING_MODEL_NAME, TEXT_MODEL_NAME
    from registry.register import register_classifier

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        text = _text_classifier()
        client = mlflow.MlflowClient(tracking_uri=uri)
        with mlflow.start_run(experiment_id=serve_tests_experiment(client, uri)):
            info = log_text_classifier(text, example_texts=["iphone", "sofa"])
        register_classifier(
            info.model_uri, model_name=TEXT_MODEL_NAME, tags={INPUT_TAG: TEXT, "test/accuracy": 0.7}
        )
        config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=IMAGE_SIZE)
        fusion = FusionConfig(categories=list(CATEGORIES), image_dim=512, text_dim=3, hidden=16)
        torch.manual_seed(0)
        head = FusionHead(fusion).eval()
        with mlflow.start_run(experiment_id=serve_tests_experiment(client, uri)):
            info = log_listing_classifier(
                _network(0),
                config,
                text,
                head,
                fusion,
                example_image=PHOTOS[0],
                example_text="iphone",
            )
        register_classifier(
            info.model_uri,
            model_name=LISTING_MODEL_NAME,
            tags={INPUT_TAG: IMAGE_TEXT, "test/accuracy": 0.8},
        )
    finally:
        mlflow.set_tracking_uri(previous)


def copy_store(template: Path, into: Path) -> str:
    """A private copy of a store made by :func:`make_store`; return its tracking URI.

    Artifact paths in the store are absolute, so the copy shares the template's
    (read-only) artifacts and owns its own registry.
    """
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy2(template / "mlflow.db", into / "mlflow.db")
    return f"sqlite:///{into / 'mlflow.db'}"


def set_alias(uri: str, version: int, alias: str = "production") -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        NAME, alias, str(version)
    )


def wait_until(
    predicate: Callable[[], object], timeout: float = 120.0, what: str = "the condition"
):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


@dataclass
class Service:
    """A ``python -m serve`` subprocess on a free loopback port."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self.process.pid, timeout, self.process)

    def log_text(self) -> str:
        return log_tail(self.log, 60)


def start_service(workdir: Path, env: dict[str, str], python: str | None = None) -> Service:
    """Run ``python -m serve`` with ``env`` added; return once ``/health`` answers.

    With ``python`` (another environment's interpreter) the service runs the project as
    installed there, not this checkout."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"serve-{port}.log"
    root = Path(__file__).resolve().parents[2]
    full_env = {**os.environ, "SERVE_HOST": LOOPBACK, "SERVE_PORT": str(port)}
    full_env.pop("PYTHONPATH", None)
    if python is None:
        full_env["PYTHONPATH"] = str(root)
    full_env.update(env)
    command = [python or sys.executable, "-m", "serve"]
    process = start_in_group(command, log=log, env=full_env, cwd=workdir)
    service = Service(url=f"http://{LOOPBACK}:{port}", process=process, log=log)
    try:
        wait_for_http(
            service.url + "/health", timeout=SERVICE_START_TIMEOUT_S, process=process, log=log
        )
    except BaseException:
        service.stop()
        raise
    return service


@contextlib.contextmanager
def running_service(
    workdir: Path, env: dict[str, str], python: str | None = None
) -> Iterator[Service]:
    service = start_service(workdir, env, python)
    try:
        yield service
    finally:
        service.stop()
