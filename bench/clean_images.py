"""Benchmark: steps.clean_images against the straightforward way, on the same images.

The straightforward way, as most image-cleaning scripts are written: one process; for each
file ``Image.open(path).convert("RGB")`` (a full-size decode), ``resize`` to fit the square
keeping the aspect ratio (bicubic, the filter ours uses), paste on a black canvas, save as a
JPEG at the same quality. Ours: ``clean_images`` (every core, JPEG draft decoding at reduced
DCT scale, the shared normalisation). Both read the same files, warmed in the page cache
first, and their outputs are compared pixel by pixel.

    .venv/bin/python bench/clean_images.py                  # 1,000 demo images, made here
    .venv/bin/python bench/clean_images.py --raw data/raw   # the first 1,000 of an export

Writes bench/results/clean_images.json and prints the figures. Nothing is logged to MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Runnable as `python bench/clean_images.py` from anywhere: the repo first, before bench/ (whose
# search.py and serve.py would hide the packages of the same name).
sys.path.insert(0, str(REPO))

from cli import ArgumentParser, UserError, cli  # noqa: E402
from steps.clean_images import JPEG_QUALITY, clean_images, list_images  # noqa: E402

RESULTS = REPO / "bench" / "results" / "clean_images.json"
IMAGES_PER_PRODUCT = 1.75  # the demo export's average, to size the export we make
# Outputs count as comparable when a typical image differs by a few grey levels on average
# (draft decoding scales in the DCT domain, the baseline resamples a full decode).
MAX_MEDIAN_DIFF = 4.0
MAX_P99_DIFF = 12.0

log = logging.getLogger("bench.clean_images")


def straightforward(source: Path, target: Path, size: int) -> None:
    """The plain way: full decode, aspect-keeping resize, paste on black, save."""
    image = Image.open(source).convert("RGB")
    scale = size / max(image.size)
    width = max(1, round(image.width * scale))
    height = max(1, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(image, (round((size - width) / 2), round((size - height) / 2)))
    canvas.save(target, "JPEG", quality=JPEG_QUALITY)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_straightforward(sources: list[Path], out: Path, size: int) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    done = failed = 0
    cpu = cpu_seconds()
    started = time.perf_counter()
    for source in sources:
        try:
            straightforward(source, out / f"{source.stem}.jpg", size)
            done += 1
        except Exception:  # a broken file counts as failed, as in clean_images
            failed += 1
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "done": done,
        "failed": failed,
        "images_per_second": done / seconds,
    }


def run_ours(raw: Path, out: Path, size: int, workers: int) -> dict[str, float]:
    cpu = cpu_seconds()
    started = time.perf_counter()  # wall clock around the call: pool start-up included
    stats = clean_images(raw, out, size=size, workers=workers, log_run=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,  # every process's: pool start-up included
        "done": stats["done"],
        "failed": stats["failed"],
        "images_per_second": stats["done"] / seconds,
    }


def compare(ours: Path, theirs: Path) -> dict[str, float]:
    """Per image mean absolute difference (0-255 levels) where both made an output."""
    diffs = []
    mismatched_sizes = 0
    common = sorted({p.name for p in ours.glob("*.jpg")} & {p.name for p in theirs.glob("*.jpg")})
    for name in common:
        with Image.open(ours / name) as a, Image.open(theirs / name) as b:
            if a.size != b.size or a.mode != b.mode:
                mismatched_sizes += 1
                continue
            diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
            diffs.append(float(diff.mean()))
    if not diffs:
        return {"compared": 0, "mismatched_sizes": mismatched_sizes}
    return {
        "compared": len(diffs),
        "mismatched_sizes": mismatched_sizes,
        "median_mean_abs_diff": round(statistics.median(diffs), 3),
        "p99_mean_abs_diff": round(float(np.percentile(diffs, 99)), 3),
        "max_mean_abs_diff": round(max(diffs), 3),
    }


def prepare_images(raw: Path | None, count: int, work: Path) -> tuple[Path, str]:
    """A raw folder holding exactly ``count`` images (links to them where possible)."""
    if raw is None:
        from steps.demo_data import make_export

        raw = work / "demo"
        products = int(count / IMAGES_PER_PRODUCT) + 20
        make_export(raw, products=products, seed=0)
        source = f"steps.demo_data.make_export(products={products}, seed=0)"
    else:
        source = str(raw)
    files = list_images(raw / "images")
    if len(files) < count:
        raise UserError(f"{raw / 'images'} holds {len(files)} images; need {count}")
    subset = work / "raw"
    (subset / "images").mkdir(parents=True)
    for path in files[:count]:
        target = subset / "images" / path.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return subset, source


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest run (wall clock), with the least CPU time seen: the usual min-of-N."""
    fastest = min(runs, key=lambda run: run["seconds"])
    return {**fastest, "cpu_seconds": min(run["cpu_seconds"] for run in runs)}


def warm(paths: list[Path]) -> int:
    """Read every file once so neither contender pays for the disk."""
    return sum(len(path.read_bytes()) for path in paths)


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(
        prog="python bench/clean_images.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--raw", type=Path, help="an export to take images from (default: demo)")
    parser.add_argument("--images", type=int, default=1000, help="how many images")
    parser.add_argument("--size", type=int, default=256, help="output square side")
    parser.add_argument("--workers", type=int, default=0, help="ours: processes (0 = all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench-clean-images-") as tmp:
        work = Path(tmp)
        raw, source = prepare_images(args.raw, args.images, work)
        sources = list_images(raw / "images")
        warm(sources)
        load = os.getloadavg()[0]
        theirs_runs, ours_runs = [], []
        for attempt in range(args.repeat):  # interleaved, so drifting load hits both alike
            theirs_runs.append(
                run_straightforward(sources, work / f"straightforward{attempt}", args.size)
            )
            ours_runs.append(run_ours(raw, work / f"ours{attempt}", args.size, args.workers))
        comparison = compare(work / "ours0" / "images" / str(args.size), work / "straightforward0")
    theirs, ours = best(theirs_runs), best(ours_runs)

    comparable = (
        comparison.get("compared", 0) > 0
        and comparison["mismatched_sizes"] == 0
        and comparison["median_mean_abs_diff"] <= MAX_MEDIAN_DIFF
        and comparison["p99_mean_abs_diff"] <= MAX_P99_DIFF
        and ours["done"] == theirs["done"]
    )
    results = {
        "benchmark": "clean_images",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "images": len(sources),
        "size": args.size,
        "source": source,
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load, 2),
        "repeat": args.repeat,
        "seconds_each_run": {
            "straightforward": [round(run["seconds"], 2) for run in theirs_runs],
            "ours": [round(run["seconds"], 2) for run in ours_runs],
        },
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "straightforward": {k: round(v, 3) for k, v in theirs.items()},
        "ours": {**{k: round(v, 3) for k, v in ours.items()}, "workers": args.workers},
        "speedup": round(theirs["seconds"] / ours["seconds"], 2),
        # less sensitive to other load on the machine than wall clock: CPU work per image
        "cpu_ratio": round(theirs["cpu_seconds"] / ours["cpu_seconds"], 2),
        "outputs": {**comparison, "comparable": comparable},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp_results = args.results.with_suffix(".json.tmp")
    tmp_results.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp_results, args.results)

    print(f"clean_images benchmark: {results['images']} images -> {args.size}px squares")
    print(f"{'':18}{'seconds':>10}{'cpu s':>8}{'images/s':>10}{'done':>7}{'failed':>8}")
    for name in ("straightforward", "ours"):
        row = results[name]
        print(
            f"{name:18}{row['seconds']:>10.2f}{row['cpu_seconds']:>8.2f}"
            f"{row['images_per_second']:>10.1f}{row['done']:>7}{row['failed']:>8}"
        )
    print(
        f"best of {args.repeat}: speedup {results['speedup']}x wall clock, "
        f"{results['cpu_ratio']}x less CPU, "
        f"on {results['cpu_count']} cores "
        f"(load average before {results['load_average_before']}); outputs comparable: "
        f"{comparable} (median per-image mean |diff| "
        f"{comparison.get('median_mean_abs_diff')}, p99 {comparison.get('p99_mean_abs_diff')})"
    )
    print(f"wrote {args.results}")
    return results


run = cli(main)

if __name__ == "__main__":
    run()
