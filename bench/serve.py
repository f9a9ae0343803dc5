"""Benchmark: this service against ``mlflow models serve`` and the in-process limit.

Three ways to classify the same photos with the same registered version:

- **A** ``mlflow models serve -m models:/<name>/<v> --env-manager local`` with its default
  settings (one uvicorn worker per core, the pyfunc in torch), sent what MLflow takes: a
  POST /invocations with ``{"dataframe_split": {"columns": ["image"], "data": [[<base64>]]}}``,
  one photo per request.
- **B** ``python -m serve`` with its default settings (the version's ONNX export in ONNX
  Runtime, decode threads, request batching), sent a multipart POST /predict, one photo per
  request.
- **C** the in-process limit: the same engine B builds (``serve.loader.load_served_model``),
  decoding and normalising on a pool of one thread per core and forwarding batches, in this
  process, with no HTTP at all; and its single-image latency (decode, normalise, forward).

For A and B one asyncio httpx client keeps N requests in flight (N = 1, 4, 16) for a fixed
number of requests after a warm-up, and records each request's latency: requests/s, p50,
p99. The request bodies are built beforehand, so the client spends its CPU on HTTP only.
Each point is run ``--repeat`` times, A and B interleaved (their order alternating), and the
run with the most requests/s counts. The server's CPU seconds per request (every process of
its group, from /proc) are recorded too: on a shared machine the steadier figure.

Two versions are registered in a throwaway sqlite store, as training registers them
(``marketplace_models.image.log_classifier`` with the ONNX export, then ``register_classifier``):
a resnet18 at 224 px and the demo's (``make demo``: resnet18 at 48 px), both with random
weights (no pretrained weights offline; the cost of a forward pass does not depend on them).
The photos are the demo export's (``steps.demo_data.make_export``): 640 to 1024 px JPEGs.

    .venv/bin/python bench/serve.py                 # both versions, 200 requests a point
    .venv/bin/python bench/serve.py --quick         # one version, fewer requests, one run

Writes bench/results/serve.json and prints the figures. Nothing is logged to MLflow beyond
the throwaway store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import io
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Runnable as `python bench/serve.py` from anywhere: the repo first, before bench/ (whose
# search.py and serve.py would hide the packages of the same name).
sys.path.insert(0, str(REPO))

from bench.harness import (  # noqa: E402  (after the path fix above)
    LOOPBACK,
    MULTIPART_HEADERS,
    Server,
    free_port,
    launch,
    multipart_body,
    read_photo,
    send,
    server_environment,
    start_service,
    stop_on_sigterm,
    wait_ready,
    write_results,
)
from cli import ArgumentParser, UserError, cli  # noqa: E402

RESULTS = REPO / "bench" / "results" / "serve.json"
MODEL_NAME = "marketplace-classifier"
CONCURRENCY = (1, 4, 16)
IMAGES_PER_PRODUCT = 1.75  # the demo export's average, to size the export we make
EXAMPLE_SIZE = 256  # the input example is a cleaned square, as training logs it
REQUEST_TIMEOUT_S = 300.0
# Environment variables that would change a server's defaults: removed before starting one.
SETTING_PREFIXES = ("SERVE_", "MLFLOW_MODELS_", "MLFLOW_SCORING_SERVER_")
SETTING_NAMES = ("MODEL_URI",)
TARGETS = {
    "throughput_b_over_a_c16": (">=", 2.5),
    "throughput_b_over_c_c16": (">=", 0.85),
    "p50_b_c1_over_c_single": ("<=", 1.2),
}

log = logging.getLogger("bench.serve")


@dataclass(frozen=True)
class VersionSpec:
    """A version to register and measure."""

    key: str
    image_size: int
    description: str


VERSIONS = (
    VersionSpec("resnet18-224", 224, "resnet18 at 224 px, random weights"),
    VersionSpec(
        "demo-resnet18-48",
        48,
        "the demo's version (`make demo`: resnet18 at 48 px), random weights: same cost as trained",
    ),
)


# ---------------------------------------------------------------- photos and versions


def make_photos(folder: Path, count: int) -> tuple[list[bytes], dict]:
    """The first ``count`` readable photos of a demo export made in ``folder``."""
    from PIL import Image

    from steps.demo_data import make_export

    products = int(count / IMAGES_PER_PRODUCT) + 30  # a margin for the truncated files
    make_export(folder, products=products, seed=0)
    photos = []
    for path in sorted((folder / "images").glob("*.jpg")):
        data = read_photo(path)
        if data is not None:
            photos.append(data)
        if len(photos) == count:
            break
    if len(photos) < count:
        raise UserError(f"the demo export holds only {len(photos)} readable photos")
    sizes, modes = [], {}
    for data in photos:
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(max(image.size))
            modes[image.mode] = modes.get(image.mode, 0) + 1
    facts = {
        "count": len(photos),
        "source": f"steps.demo_data.make_export(products={products}, seed=0), "
        "first readable JPEGs in name order (the export's truncated files skipped)",
        "long_side_px": {"min": min(sizes), "median": int(np.median(sizes)), "max": max(sizes)},
        "modes": modes,
        "mean_kib": round(float(np.mean([len(p) for p in photos])) / 1024, 1),
        "resized": False,  # the demo export's photos are already 640 to 1024 px
    }
    return photos, facts


def example_jpeg(photo: bytes) -> bytes:
    """A cleaned square of ``photo``: the kind of image training logs as the input example."""
    from marketplace_models.imaging import load_normalized

    buffer = io.BytesIO()
    load_normalized(photo, EXAMPLE_SIZE).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def demo_categories() -> list[str]:
    from steps.demo_data import CATEGORIES

    return sorted(category.root for category in CATEGORIES)


def register_versions(folder: Path, photos: list[bytes], specs: tuple[VersionSpec, ...]):
    """A sqlite store in ``folder`` with one registered version per spec; its URI and numbers."""
    import mlflow
    import torch

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig, build_network
    from registry.register import register_classifier

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    numbers: dict[str, int] = {}
    try:
        experiment = mlflow.MlflowClient(tracking_uri=uri).create_experiment(
            "bench-serve", artifact_location=(folder / "artifacts").as_uri()
        )
        categories = demo_categories()
        for spec in specs:
            torch.manual_seed(0)
            net = build_network("resnet18", len(categories)).eval()
            config = ClassifierConfig("resnet18", categories, spec.image_size)
            with mlflow.start_run(experiment_id=experiment, run_name=spec.key):
                info = log_classifier(
                    net, config, example_image=example_jpeg(photos[0]), parity_images=photos[1:4]
                )
            version = register_classifier(info.model_uri, model_name=MODEL_NAME)
            numbers[spec.key] = int(version.version)
            log.info("registered %s as version %s", spec.key, version.version)
    finally:
        mlflow.set_tracking_uri(previous)
    return uri, numbers


# ---------------------------------------------------------------- servers


def start_mlflow_serve(tracking_uri: str, model_uri: str, folder: Path) -> Server:
    """A: ``mlflow models serve --env-manager local`` with default settings."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-p", str(port), "-h", LOOPBACK]
    env = server_environment(tracking_uri, {}, SETTING_PREFIXES, SETTING_NAMES)
    return launch("A-mlflow", command, env, f"http://{LOOPBACK}:{port}", folder)


def start_b(tracking_uri: str, model_uri: str, folder: Path) -> Server:
    """B: ``python -m serve`` with default settings."""
    env = server_environment(
        tracking_uri, {"MODEL_URI": model_uri}, SETTING_PREFIXES, SETTING_NAMES
    )
    return start_service("B-service", env, folder)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def scrape_metrics(url: str) -> dict[str, float]:
    """B's batching counters from /metrics: batch count, images batched, inference seconds."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    wanted = {
        "marketplace_batch_size_count": "batches",
        "marketplace_batch_size_sum": "images",
        "marketplace_inference_seconds_sum": "inference_seconds",
    }
    found = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if match and match.group(1) in wanted:
            found[wanted[match.group(1)]] = float(match.group(2))
    return found


# ---------------------------------------------------------------- the load generator


@dataclass
class Workload:
    """What one system is sent: a URL, a body per photo, and the headers."""

    url: str
    bodies: list[bytes]
    headers: dict[str, str]


def mlflow_workload(server: Server, photos: list[bytes]) -> Workload:
    """One photo per request as MLflow takes it: base64 text in a ``dataframe_split``."""
    bodies = [
        json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(photo).decode("ascii")]],
                }
            }
        ).encode()
        for photo in photos
    ]
    headers = {"Content-Type": "application/json"}
    return Workload(server.url + "/invocations", bodies, headers)


def service_workload(server: Server, photos: list[bytes]) -> Workload:
    """One photo per request as a multipart upload, what /predict takes."""
    bodies = [multipart_body(p) for p in photos]
    return Workload(server.url + "/predict", bodies, MULTIPART_HEADERS)


async def drive(workload: Workload, concurrency: int, requests: int, warmup: int, before, after):
    """Warm up, then time ``requests`` requests; ``before``/``after`` bracket the timed part."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        await send(
            client,
            workload.url,
            workload.bodies,
            workload.headers,
            max(warmup, concurrency),
            concurrency,
        )
        mark = before()
        started, client_cpu = time.perf_counter(), time.process_time()
        sent = await send(
            client, workload.url, workload.bodies, workload.headers, requests, concurrency
        )
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        return sent, seconds, client_cpu, after(mark)


def measure_point(
    server: Server, workload: Workload, concurrency: int, requests: int, warmup: int
) -> dict:
    """Requests/s, p50, p99 and CPU per request of one (system, concurrency) run."""
    batching = server.name.startswith("B")

    def before() -> tuple[float, dict]:
        return server.cpu_seconds(), scrape_metrics(server.url) if batching else {}

    def after(mark: tuple[float, dict]) -> tuple[float, dict]:
        cpu = server.cpu_seconds() - mark[0]
        if not batching:
            return cpu, {}
        now = scrape_metrics(server.url)
        return cpu, {key: now[key] - mark[1][key] for key in now}

    sent, seconds, client_cpu, (server_cpu, counters) = asyncio.run(
        drive(workload, concurrency, requests, warmup, before, after)
    )
    if sent.errors:
        log.warning("%s: %d errors, first: %s", server.name, sent.errors, sent.first_error)
    latencies = np.array(sent.latencies) * 1000.0
    point = {
        "requests_per_second": round(requests / seconds, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_ms": round(float(latencies.mean()), 2),
        "errors": sent.errors,
        "server_cpu_ms_per_request": round(server_cpu / requests * 1000.0, 2),
        "client_cpu_ms_per_request": round(client_cpu / requests * 1000.0, 2),
    }
    if counters.get("batches"):
        point["mean_batch_size"] = round(counters["images"] / counters["batches"], 2)
        point["inference_ms_per_image"] = round(
            counters["inference_seconds"] / counters["images"] * 1000.0, 2
        )
    if sent.first_error:
        point["first_error"] = sent.first_error
    return point


# ---------------------------------------------------------------- C: the in-process limit


def load_in_process(tracking_uri: str, model_uri: str):
    """The version loaded the way B loads it, with B's default settings."""
    from registry.resolve import resolve_model
    from registry.store import connect
    from serve.loader import load_served_model
    from serve.settings import Settings

    defaults = Settings.model_construct()  # the defaults, whatever the environment says
    client = connect(tracking_uri)
    return load_served_model(
        resolve_model(model_uri, client),
        tracking_uri=tracking_uri,
        engine=defaults.engine,
        max_pixels=defaults.max_image_pixels,
        batch_size=defaults.batch_size,
        client=client,
    )


def in_process_throughput(
    model, photos: list[bytes], batch_size: int, threads: int
) -> tuple[float, float]:
    """Images/s and CPU seconds per image: decode + normalise on ``threads`` threads,
    forward in batches as they fill."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(abs, range(threads)))  # start the threads before the clock
        started, cpu = time.perf_counter(), time.process_time()
        futures = [pool.submit(model.preprocess, photo) for photo in photos]
        for start in range(0, len(futures), batch_size):
            pixels = np.stack([future.result() for future in futures[start : start + batch_size]])
            model.forward(pixels)  # (B, S, S, 3) -> probabilities, embeddings
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(photos) / seconds, cpu / len(photos)


def in_process_latency(model, photos: list[bytes]) -> list[float]:
    """Seconds to decode, normalise and forward each photo alone."""
    seconds = []
    for photo in photos:
        started = time.perf_counter()
        model.forward(model.preprocess(photo)[None])
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_in_process(model, photos: list[bytes], batch_size: int, threads: int) -> dict:
    images_per_second, cpu = in_process_throughput(model, photos, batch_size, threads)
    latencies = np.array(in_process_latency(model, photos)) * 1000.0
    return {
        "images_per_second": round(images_per_second, 2),
        "cpu_ms_per_image": round(cpu * 1000.0, 2),
        "single_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "single_p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


# ---------------------------------------------------------------- one version


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def best_run(runs: list[dict]) -> dict:
    """The run with the most requests/s, with every run's requests/s beside it."""
    fastest = max(runs, key=lambda run: run["requests_per_second"])
    return {**fastest, "all_requests_per_second": [r["requests_per_second"] for r in runs]}


def best_in_process(runs: list[dict]) -> dict:
    return {
        "images_per_second": max(run["images_per_second"] for run in runs),
        "single_p50_ms": min(run["single_p50_ms"] for run in runs),
        "single_p99_ms": min(run["single_p99_ms"] for run in runs),
        "cpu_ms_per_image": min(run["cpu_ms_per_image"] for run in runs),
        "all_images_per_second": [run["images_per_second"] for run in runs],
        "all_single_p50_ms": [run["single_p50_ms"] for run in runs],
    }


def interleaved(
    jobs: dict[str, Callable[[], dict]], repeat: int, label: str
) -> dict[str, list[dict]]:
    """Run each job ``repeat`` times, in alternating order; every run's result by job."""
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    names = list(jobs)
    for attempt in range(repeat):
        for name in names if attempt % 2 == 0 else names[::-1]:
            runs[name].append(jobs[name]())
            log.info("%s %s run %d: %s", label, name, attempt + 1, _short(runs[name][-1]))
    return runs


def _short(result: dict) -> str:
    keys = ("requests_per_second", "p50_ms", "p99_ms", "images_per_second", "single_p50_ms")
    return ", ".join(f"{k}={result[k]}" for k in keys if k in result)


def bench_version(
    tracking_uri: str, model_uri: str, photos: list[bytes], folder: Path, args
) -> dict:
    """A, B and C on one version; every point's best run."""
    folder.mkdir(parents=True, exist_ok=True)
    servers = [
        start_mlflow_serve(tracking_uri, model_uri, folder),
        start_b(tracking_uri, model_uri, folder),
    ]
    with running(servers) as (mlflow_server, service):
        wait_ready(mlflow_server, "/ping")
        wait_ready(service, "/ready")
        engine = get_json(service.url + "/model")["engine"]
        model = load_in_process(tracking_uri, model_uri)
        workloads = {
            "A": (mlflow_server, mlflow_workload(mlflow_server, photos)),
            "B": (service, service_workload(service, photos)),
        }
        points: dict[str, dict[str, dict]] = {"A": {}, "B": {}}
        for concurrency in args.concurrency:
            jobs = {
                name: (
                    lambda s=server, w=workload, c=concurrency: measure_point(
                        s, w, c, args.requests, args.warmup
                    )
                )
                for name, (server, workload) in workloads.items()
            }
            runs = interleaved(jobs, args.repeat, f"{model_uri} c={concurrency}")
            for name, results in runs.items():
                points[name][str(concurrency)] = best_run(results)
        threads = os.cpu_count() or 1
        in_process = interleaved(
            {"C": lambda: measure_in_process(model, photos, args.batch, threads)},
            args.repeat,
            model_uri,
        )["C"]
    return {
        "model_uri": model_uri,
        "engine_b": engine,
        "engine_c": model.details.engine,
        "points": points,
        "in_process": {
            **best_in_process(in_process),
            "batch_size": args.batch,
            "decode_threads": threads,
        },
    }


def check_targets(result: dict) -> dict:
    """Each target's ratio, bound and whether it is met (where its points were measured)."""
    a, b, c = result["points"]["A"], result["points"]["B"], result["in_process"]
    ratios = {}
    if "16" in a and "16" in b:
        ratios["throughput_b_over_a_c16"] = (
            b["16"]["requests_per_second"] / a["16"]["requests_per_second"]
        )
    if "16" in b:
        ratios["throughput_b_over_c_c16"] = b["16"]["requests_per_second"] / c["images_per_second"]
    if "1" in b:
        ratios["p50_b_c1_over_c_single"] = b["1"]["p50_ms"] / c["single_p50_ms"]
    checked = {}
    for name, value in ratios.items():
        sense, bound = TARGETS[name]
        met = value >= bound if sense == ">=" else value <= bound
        checked[name] = {"ratio": round(value, 3), "target": f"{sense} {bound}", "met": met}
    return checked


# ---------------------------------------------------------------- report


def machine_facts() -> dict:
    import mlflow
    import onnxruntime
    import PIL
    import torch

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }


def print_table(results: dict) -> None:
    for key, version in results["versions"].items():
        print(f"\n{key} ({version['model_uri']}, B engine {version['engine_b']})")
        print(f"{'system':<10}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU ms':>12}")
        for name, points in version["points"].items():
            for concurrency, point in points.items():
                print(
                    f"{name:<10}{concurrency:>5}{point['requests_per_second']:>9.1f}"
                    f"{point['p50_ms']:>9.1f}{point['p99_ms']:>9.1f}"
                    f"{point['server_cpu_ms_per_request']:>12.1f}"
                )
        c = version["in_process"]
        print(
            f"{'C':<10}{'':>5}{c['images_per_second']:>9.1f}{c['single_p50_ms']:>9.1f}"
            f"{c['single_p99_ms']:>9.1f}{c['cpu_ms_per_image']:>12.1f}"
            "   (images/s; single-image latency; CPU per image)"
        )
        for name, target in version["targets"].items():
            verdict = "met" if target["met"] else "MISSED"
            print(f"  {name}: {target['ratio']:.2f} (target {target['target']}) {verdict}")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python bench/serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="demo photos sent, in turn")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per point")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before each")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs; best counts")
    parser.add_argument("--batch", type=int, default=16, help="C: images per forward pass")
    keys = [version.key for version in VERSIONS]
    parser.add_argument("--versions", nargs="+", choices=keys, default=keys)
    parser.add_argument(
        "--quick", action="store_true", help="the 224 px version only, 60 requests, one run"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.repeat = 60, 10, 1
        args.versions = [VERSIONS[0].key]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "PIL", "httpx", "serve", "registry", "steps"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop_on_sigterm()
    load_start = [round(v, 2) for v in os.getloadavg()]
    specs = tuple(spec for spec in VERSIONS if spec.key in args.versions)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        photos, photo_facts = make_photos(work / "demo", args.photos)
        tracking_uri, numbers = register_versions(work / "store", photos, specs)
        versions = {}
        for spec in specs:
            model_uri = f"models:/{MODEL_NAME}/{numbers[spec.key]}"
            log.info("measuring %s (%s)", spec.key, model_uri)
            result = bench_version(tracking_uri, model_uri, photos, work / spec.key, args)
            result = {"description": spec.description, "image_size": spec.image_size, **result}
            result["targets"] = check_targets(result)
            versions[spec.key] = result
    results = {
        "benchmark": "serve",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "seconds": round(time.perf_counter() - started, 1),
        "settings": {
            "requests_per_point": args.requests,
            "warmup_per_point": args.warmup,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "photos": photo_facts,
            "a": "mlflow models serve --env-manager local (defaults), JSON dataframe_split base64",
            "b": "python -m serve (defaults), multipart /predict",
            "c": "serve.loader.load_served_model in this process, batched, one thread per core",
        },
        "targets": {name: f"{sense} {bound}" for name, (sense, bound) in TARGETS.items()},
        "versions": versions,
    }
    write_results(results, args.results)
    print_table(results)
    print(
        f"\n{results['machine']['cpus']} cores, load average {load_start[0]} at the start, "
        f"{results['load_average']['end'][0]} at the end; written to {args.results}"
    )
    return results


run = cli(main)

if __name__ == "__main__":
    run()
