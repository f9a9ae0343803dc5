"""Benchmark: per-worker rates of cleaning and embedding, the local path against Ray Data.

The same photos (a demo export made here) are cleaned with ``steps.clean_images`` on one
process and with ``engine=ray`` on a local Ray of every core, and embedded by a resnet18
classifier (random weights; the rate does not depend on them) with the local path's
``embed_photos`` on one thread and with Ray Data's model actors. Each rate is divided by
the workers that made it, so docs/scale.md can turn it into hours for 1, 8 or 64 workers.

    .venv/bin/python bench/scale.py                      # 600 products, 224 px
    .venv/bin/python bench/scale.py --products 2000 --embed-images 640

Writes bench/results/scale.json and prints the figures. Logs to a throwaway MLflow store.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo's packages before bench/'s own search.py, serve.py

from cli import ArgumentParser, cli  # noqa: E402

RESULTS = REPO / "bench" / "results" / "scale.json"


def make_model(work: Path, categories: list[str], image_size: int, example: bytes) -> str:
    """A resnet18 classifier logged to a throwaway store; its model URI."""
    import mlflow
    import torch

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig, build_network

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("bench-scale")
    torch.manual_seed(0)
    network = build_network("resnet18", len(categories)).eval()
    config = ClassifierConfig(arch="resnet18", categories=categories, image_size=image_size)
    with mlflow.start_run():
        return log_classifier(network, config, example_image=example, onnx=False).model_uri


def clean_rates(raw: Path, work: Path, size: int) -> dict[str, float]:
    from steps import clean_images as cleaning
    from steps import ray_engine

    local = cleaning.clean_images(raw, work / "clean-local", size=size, workers=1, log_run=False)
    with ray_engine.ray_session() as resources:
        cpus = int(resources.get("CPU", 1))
    shared = ray_engine.LocalCleaning(
        cleaning.check_inputs,
        cleaning.list_images,
        cleaning.is_done,
        cleaning.normalize_chunk,
        cleaning.log_stats,
        cleaning.CHUNK,
    )
    ray = ray_engine.clean_images(
        raw, work / "clean-ray", size=size, workers=0, local=shared, log_run=False
    )
    return {
        "images": local["done"],
        "local_per_worker": local["images_per_second"],
        "ray_workers": cpus,
        "ray_total": ray["images_per_second"],
        "ray_per_worker": ray["images_per_second"] / cpus,
    }


def embed_rates(model_uri: str, paths: list[Path], batch_size: int) -> dict[str, float]:
    import mlflow
    import pandas as pd
    import torch

    from steps import ray_engine
    from steps.index import embed_photos

    torch.set_num_threads(1)  # one worker: one core
    embedder = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    embed_photos(embedder, paths[:batch_size], batch_size)  # warm up
    started = time.perf_counter()
    embed_photos(embedder, paths, batch_size)
    local = len(paths) / (time.perf_counter() - started)
    images = pd.DataFrame({"image_id": [p.stem for p in paths], "path": paths})
    with ray_engine.ray_session() as resources, tempfile.TemporaryDirectory() as tmp:
        actors = max(1, int(resources.get("CPU", 1)) // 2)
        started = time.perf_counter()
        ray_engine.embed_to_shards(images, model_uri, Path(tmp) / "shards", batch_size, resources)
        ray = len(paths) / (time.perf_counter() - started)
    return {
        "images": len(paths),
        "local_per_worker": local,
        "ray_workers": actors,
        "ray_total": ray,
        "ray_per_worker": ray / actors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python bench/scale.py", description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--size", type=int, default=224, help="cleaned side and model input")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--embed-images", type=int, default=640, help="photos to embed")
    args = parser.parse_args(argv)

    from steps.demo_data import make_export

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        raw = work / "raw"
        make_export(raw, products=args.products, seed=0)
        clean = clean_rates(raw, work, args.size)
        paths = sorted((work / "clean-local" / "images" / str(args.size)).glob("*.jpg"))
        categories = [f"c{i}" for i in range(10)]
        model_uri = make_model(work, categories, args.size, paths[0].read_bytes())
        embed = embed_rates(model_uri, paths[: args.embed_images], args.batch_size)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "size": args.size,
        "arch": "resnet18",
        "clean_images_per_second": clean,
        "embed_images_per_second": embed,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


run = cli(main)

if __name__ == "__main__":
    run()
