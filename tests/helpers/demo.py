"""The small demo export the session's fixtures make (conftest), and a tiny version over it."""

from __future__ import annotations

import json
from pathlib import Path

DEMO_PRODUCTS = 60
DEMO_CLEAN_SIZE = 64
NAME = "marketplace-classifier"


def register_tiny_version(clean: Path, seed: int = 0) -> str:
    """A resnet18 with random weights at 32 px, logged and registered; its version."""
    import mlflow
    import torch

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig, build_network
    from registry.register import register_classifier

    categories = json.loads((clean / "categories.json").read_text())
    torch.manual_seed(seed)
    network = build_network("resnet18", len(categories)).eval()
    config = ClassifierConfig(arch="resnet18", categories=categories, image_size=32)
    example = next((clean / "images" / str(DEMO_CLEAN_SIZE)).glob("*.jpg")).read_bytes()
    mlflow.set_experiment("tests")
    with mlflow.start_run(run_name="train"):
        info = log_classifier(network, config, example_image=example)
    return register_classifier(info.model_uri, model_name=NAME).version
