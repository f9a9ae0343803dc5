"""Benchmark: what a listing's text adds to ``/predict``.

Two ways to ask the same service about the same photos, interleaved request by request:

- **photo**: ``POST /predict`` with the photo alone (the photo model answers);
- **photo + text**: ``POST /predict`` with the photo and its listing's text (the photo + text
  model answers: its photo network, the text's TF-IDF and class probabilities, the fusion
  head).

And ``POST /predict/text`` with the text alone, for scale, and ``GET /search?q=`` with
the listing's title as the query (when the served version's index has its text search:
TF-IDF over the catalogue's names and descriptions, boosted by the text model's category
for the query, 12 results). The service is this project's
app (``serve.app.create_app``) in this process, driven by FastAPI's TestClient (the same
ASGI overhead on every route), over a tracking store where the three kinds of model hold
``production`` (after ``make demo``: ``sqlite:///mlflow.db``; ``--tracking-uri``). The photos
and texts are the clean data's test split (``--clean``, its largest ``images/<size>/``).
One request at a time, after a warm-up; each way's p50 and p99 latency, and the ratio of
the p50s.

    .venv/bin/python bench/predict_text.py
    .venv/bin/python bench/predict_text.py --tracking-uri sqlite:////tmp/s/mlflow.db --clean /tmp/c

Writes bench/results/predict_text.json and prints the figures.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "predict_text.json"
# Runnable as `python bench/predict_text.py` from anywhere: the repo first, before bench/ (whose
# search.py and serve.py would hide the packages of the same name).
sys.path.insert(0, str(REPO))

from cli import ArgumentParser, UserError, cli  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load_pairs(clean: Path, count: int) -> list[tuple[bytes, str]]:
    from registry.smoke import clean_test_listings

    pairs = clean_test_listings(clean, count)
    if not pairs:
        raise UserError(f"no test photos with texts in {clean}: run make demo first")
    return pairs


def wait_ready(client, pairs) -> None:
    deadline = time.monotonic() + 300
    image, text = pairs[0]
    while time.monotonic() < deadline:
        photo = client.post("/predict", files={"image": ("p.jpg", image, "image/jpeg")})
        both = client.post(
            "/predict", files={"image": ("p.jpg", image, "image/jpeg")}, data={"text": text}
        )
        alone = client.post("/predict/text", data={"text": text})
        if (
            photo.status_code == 200
            and both.status_code == 200
            and both.json()["input"] == "image+text"
            and alone.status_code == 200
        ):
            return
        time.sleep(0.5)
    raise SystemExit("the service did not load the three kinds of model within 300 s")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python bench/predict_text.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    parser.add_argument("--clean", type=Path, default=Path("data/clean"))
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4, help="passes over the photos")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings

    pairs = load_pairs(args.clean, args.photos)
    settings = Settings(tracking_uri=args.tracking_uri, reload_interval=3600)
    latencies: dict[str, list[float]] = {"photo": [], "photo + text": [], "text alone": []}
    latencies["search by query"] = []
    load_before = os.getloadavg()[0]
    with TestClient(create_app(settings)) as client:
        wait_ready(client, pairs)
        search = client.get("/search", params={"q": "sofa"}).status_code == 200
        if not search:
            print("GET /search?q= does not answer (no index with a text search): left out")
        for _ in range(3):  # warm-up
            for image, _ in pairs[:5]:
                client.post("/predict", files={"image": ("p.jpg", image, "image/jpeg")})
        for round_ in range(args.rounds):
            for index, (image, text) in enumerate(pairs):
                files = {"image": ("p.jpg", image, "image/jpeg")}
                ways = [
                    ("photo", "/predict", files, None),
                    ("photo + text", "/predict", files, {"text": text}),
                    ("text alone", "/predict/text", None, {"text": text}),
                ]
                if (round_ + index) % 2:  # alternate which way goes first
                    ways[0], ways[1] = ways[1], ways[0]
                if search:
                    ways.append(("search by query", "/search", None, {"q": text.split("\n")[0]}))
                for name, route, upload, data in ways:
                    started = time.perf_counter()
                    if route == "/search":
                        reply = client.get(route, params={**data, "k": 12})
                    else:
                        reply = client.post(route, files=upload, data=data)
                    elapsed = time.perf_counter() - started
                    if reply.status_code != 200:
                        raise SystemExit(f"{name}: {reply.status_code} {reply.text[:200]}")
                    latencies[name].append(elapsed)
    latencies = {name: values for name, values in latencies.items() if values}
    figures = {
        name: {
            "requests": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 3),
            "p99_ms": round(percentile(values, 0.99) * 1000, 3),
        }
        for name, values in latencies.items()
    }
    ratio = figures["photo + text"]["p50_ms"] / figures["photo"]["p50_ms"]
    result = {
        "figures": figures,
        "p50_ratio_text_over_photo": round(ratio, 3),
        "tracking_uri": args.tracking_uri,
        "photos": len(pairs),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    for name, values in figures.items():
        print(f"{name:>13}: p50 {values['p50_ms']:.2f} ms, p99 {values['p99_ms']:.2f} ms")
    print(f"photo + text / photo (p50): {ratio:.2f}x")


run = cli(main)

if __name__ == "__main__":
    run()
