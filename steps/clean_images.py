"""clean_images: normalise every photo of the raw export into square RGB JPEGs.

Reads (never modifies):
    <raw>/images/*  every image file present (jpg, jpeg, png, webp, gif, bmp, tif, tiff);
                    images.parquet, not this step, decides which of them training uses
Writes:
    <out>/images/<size>/<image_id>.jpg   imaging.load_normalized(path, size): EXIF
                                         applied, RGB, aspect kept, padded to size x size;
                                         JPEG quality 90, written to a temporary name and
                                         renamed, so an interruption never leaves half a file
    <out>/images/report_<size>.json      the run's counts and the list of failures
    <out>/images/manifest_<size>.json    each output's key: its source's content (SHA-256),
                                         the size and the normalisation's code digest
    <out>/images/complete_<size>.json    written last; removed when a run starts on that
                                         size, so ``auto`` sizes never read a half-written
                                         folder (clean_data.cleaned_sizes)
An image is skipped only when its output is there, non-empty, not older than its source and
made under the same key, so an interrupted run resumes, while a source replaced by other
bytes (even with an older mtime: ``cp -p``, ``rsync -a``, ``tar``) or a change to the
normalisation code redoes it. Outputs of images no longer in the raw export, and of images
that no longer normalise, are removed. A broken file is counted and listed, never fatal.
Logs one MLflow run ``clean_images``: params size, workers (as asked, 0 = every core) and
processes (as used), raw, out; metrics done, failed, skipped, total, seconds,
images_per_second; the failures list as ``failures.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from clean_data import IMAGES_DIR, complete_marker, image_folder
from cli import UserError
from marketplace_models import imaging
from marketplace_models.imaging import load_normalized
from steps import runtime
from steps.runtime import cli, file_sha256, log_params, start_run

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
JPEG_QUALITY = 90
MIN_SIZE = 8
CHUNK = 32  # images per task: amortises inter-process overhead, keeps the progress bar lively

# (image_id, source path, destination path)
Job = tuple[str, str, str]
# (image_id, error text or None when done)
Outcome = tuple[str, str | None]
# Normalises planned jobs elsewhere (Ray tasks): (jobs, size) -> outcomes as they finish
Runner = Callable[[Sequence[Job], int], Iterable[Outcome]]


def list_images(images_dir: Path) -> list[Path]:
    """Every image file in ``images_dir`` (not recursive), sorted by name, one per image id.

    The id is the file stem; should two files share one (``a.jpg`` and ``a.png``), the first
    by name wins, the rule clean_tabular uses too.
    """
    with os.scandir(images_dir) as entries:
        names = sorted(
            entry.name
            for entry in entries
            if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file()
        )
    by_stem: dict[str, Path] = {}
    for name in names:
        by_stem.setdefault(os.path.splitext(name)[0], images_dir / name)
    return list(by_stem.values())


def is_done(source: Path, target: Path) -> bool:
    """True when ``target`` exists, is non-empty and is not older than ``source``."""
    try:
        made = target.stat()
    except FileNotFoundError:
        return False
    return made.st_size > 0 and made.st_mtime >= source.stat().st_mtime


def normalisation_digest() -> str:
    """What decides an output's bytes besides its source and size: the normalisation's
    module (:mod:`marketplace_models.imaging`), the JPEG quality and Pillow's version."""
    import PIL

    digest = hashlib.sha256(Path(imaging.__file__).read_bytes())
    digest.update(f"quality={JPEG_QUALITY} pillow={PIL.__version__}".encode())
    return digest.hexdigest()


def output_key(source: Path, size: int, code: str) -> str:
    """The key an output is made under: its source's content, the size and ``code``."""
    return hashlib.sha256(f"{file_sha256(source)}:{size}:{code}".encode()).hexdigest()


def manifest_path(out: Path, size: int) -> Path:
    return Path(out) / IMAGES_DIR / f"manifest_{size}.json"


def read_manifest(path: Path) -> dict[str, str]:
    """image id -> the key its output was made under; empty when absent or unreadable."""
    try:
        keys = json.loads(path.read_text()).get("keys", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return keys if isinstance(keys, dict) else {}


def write_manifest(path: Path, keys: dict[str, str]) -> None:
    """Write the manifest atomically (temporary name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"keys": dict(sorted(keys.items()))}, indent=1))
    os.replace(tmp, path)


def remove_stale_outputs(target_dir: Path, image_ids: set[str]) -> int:
    """Delete the outputs of images no longer in the raw export; returns how many."""
    stale = [path for path in target_dir.glob("*.jpg") if path.stem not in image_ids]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def plan_jobs(
    sources: Sequence[Path], target_dir: Path, known: dict[str, str], keys: dict[str, str]
) -> list[Job]:
    """The images to (re)do: any whose output is missing, empty, older than its source or
    made under another key than ``keys`` gives it now."""
    jobs: list[Job] = []
    for source in sources:
        target = target_dir / f"{source.stem}.jpg"
        if known.get(source.stem) != keys[source.stem] or not is_done(source, target):
            jobs.append((source.stem, str(source), str(target)))
    return jobs


def normalize_file(source: str, target: str, size: int) -> None:
    """Normalise one image to ``target`` (JPEG), atomically: temporary file, then rename."""
    image = load_normalized(source, size)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        image.save(tmp, "JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def normalize_chunk(jobs: Sequence[Job], size: int) -> list[Outcome]:
    """Worker task: normalise a chunk of images; a broken one becomes an error, not a crash."""
    outcomes: list[Outcome] = []
    for image_id, source, target in jobs:
        try:
            normalize_file(source, target, size)
            outcomes.append((image_id, None))
        except Exception as exc:  # corrupt files surface as many exception types
            outcomes.append((image_id, f"{type(exc).__name__}: {exc}"))
    return outcomes


def chunked(items: Sequence[Job], size: int) -> Iterator[Sequence[Job]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` when this process runs a single thread, else ``spawn``.

    A forked worker starts at once with everything already imported; forking a process
    that runs other threads (MLflow's, a progress bar's monitor) can copy a lock mid-hold,
    so then workers are spawned, paying a fresh interpreter each.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """A started process pool of ``workers``, or None to work in this process (``workers`` 1)."""
    if workers <= 1:
        yield None
        return
    context = pool_context()
    log.debug("starting %d %s workers", workers, context.get_start_method())
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pool.submit(int).result()  # start every worker now, before any other thread exists
        yield pool


def run_jobs(
    jobs: Sequence[Job], size: int, pool: Executor | None, workers: int = 1
) -> Iterator[Outcome]:
    """Normalise ``jobs`` on ``pool`` (in this process when None), yielding outcomes.

    Chunks are submitted a few per worker (``workers``) at a time, so memory stays flat for
    any number of images and an interrupt stops promptly.
    """
    if pool is None:  # one at a time: an interrupt loses no outcome of a file written
        for job in jobs:
            yield from normalize_chunk([job], size)
        return
    pending: set[Future[list[Outcome]]] = set()
    in_flight = 4 * max(workers, 1)
    for chunk in chunked(jobs, CHUNK):
        pending.add(pool.submit(normalize_chunk, chunk, size))
        if len(pending) >= in_flight:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield from future.result()
    for future in pending:
        yield from future.result()


def refuse_out_in_raw(raw: Path, out: Path) -> None:
    """A :class:`UserError` when ``out`` is the raw folder or inside it (raw is read-only)."""
    raw_resolved, out_resolved = raw.resolve(), out.resolve()
    if out_resolved == raw_resolved or raw_resolved in out_resolved.parents:
        raise UserError(
            f"--out {out} is inside the raw folder {raw}; the raw export is never written to, "
            "choose another folder such as data/clean"
        )


def check_inputs(raw: Path, out: Path, size: int, workers: int) -> Path:
    """Validate the arguments; return the raw images folder."""
    if size < MIN_SIZE:
        raise UserError(f"--size must be at least {MIN_SIZE} pixels, got {size}")
    if workers < 0:
        raise UserError(f"--workers must be 0 (all cores) or more, got {workers}")
    if not raw.is_dir():
        raise UserError(f"raw folder {raw} not found; run ingest or demo_data first, or fix --raw")
    images_dir = raw / IMAGES_DIR
    if not images_dir.is_dir():
        raise UserError(f"{images_dir} not found; the raw export needs its images/ folder")
    refuse_out_in_raw(raw, out)
    if not list_images(images_dir):
        raise UserError(
            f"no image files in {images_dir} (expected {', '.join(IMAGE_SUFFIXES)}); "
            "check the export or --raw"
        )
    return images_dir


def clean_images(
    raw: Path,
    out: Path,
    *,
    size: int = 256,
    workers: int = 0,
    log_run: bool = True,
    engine: str = "local",
) -> dict[str, Any]:
    """Normalise every image of ``raw/images`` into ``out/images/<size>/`` and log the run.

    Returns ``done``, ``failed``, ``skipped``, ``total``, ``seconds``, ``images_per_second``
    (done / seconds) and ``failures`` (a list of ``{"image_id", "file", "error"}``).
    ``log_run=False`` skips MLflow (benchmarks); steps always log, in a run opened before
    the work (a crash leaves a FAILED run with the params). ``engine`` ``ray`` runs the
    normalisation in Ray tasks (:mod:`steps.ray_engine`); what is done, skipped, recorded and
    reported is decided here for both engines alike.
    """
    raw, out = Path(raw), Path(out)
    images_dir = check_inputs(raw, out, size, workers)
    with _engine(engine) as (runner, engine_params):
        if not log_run:
            return normalize_all(raw, out, images_dir, size, workers, runner)[0]
        with start_run(f"clean_images {size}px"):
            log_params({"size": size, "workers": workers, "raw": str(raw), "out": str(out)})
            log_params(engine_params)
            stats, processes = normalize_all(raw, out, images_dir, size, workers, runner)
            log_params({"processes": engine_params.get("ray_cpus", processes)})
            log_stats(stats)
    return stats


@contextmanager
def _engine(engine: str) -> Iterator[tuple[Runner | None, dict[str, Any]]]:
    """The runner of ``engine`` (None: this machine's process pool) and its run params."""
    if engine == "local":
        yield None, {"engine": "local"}
        return
    from steps import ray_engine

    with ray_engine.ray_session() as resources:
        runner = partial(ray_engine.normalize_jobs, normalize_chunk=normalize_chunk, chunk=CHUNK)
        yield runner, ray_engine.cluster_params(resources)


def normalize_all(
    raw: Path, out: Path, images_dir: Path, size: int, workers: int, runner: Runner | None = None
) -> tuple[dict[str, Any], int]:
    """The work of :func:`clean_images`, without MLflow: its stats and the processes used.
    ``runner`` normalises the planned jobs (None: a process pool of this machine).

    The size folder is marked incomplete (its completion marker removed) before anything is
    written, and complete again only once every image is done or listed as failed.
    """
    cores = workers or os.cpu_count() or 1
    sources = list_images(images_dir)
    target_dir = image_folder(out, size)
    marker = complete_marker(out, size)
    marker.unlink(missing_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)

    code = normalisation_digest()
    keys = {source.stem: output_key(source, size, code) for source in sources}
    manifest = manifest_path(out, size)
    known = read_manifest(manifest)
    removed = remove_stale_outputs(target_dir, set(keys))
    jobs = plan_jobs(sources, target_dir, known, keys)
    skipped = len(sources) - len(jobs)
    log.info(
        "%d images in %s: %d to do, %d already done, %d stale outputs removed",
        len(sources),
        images_dir,
        len(jobs),
        skipped,
        removed,
    )
    to_do = {image_id for image_id, _, _ in jobs}
    made = {stem: key for stem, key in keys.items() if stem not in to_do}  # the skipped ones
    started = time.perf_counter()
    processes = cores if len(jobs) > CHUNK else 1  # a pool is not worth one chunk
    try:
        failures = normalize_jobs(jobs, size, processes, made, keys, runner)
    finally:
        write_manifest(manifest, made)
    seconds = time.perf_counter() - started
    files = {stem: path for stem, path, _ in jobs}
    for failure in failures:
        failure["file"] = os.path.relpath(files[failure["image_id"]], raw)
        log.warning("cannot normalise %s: %s", failure["file"], failure["error"])
    done = len(jobs) - len(failures)
    stats: dict[str, Any] = {
        "done": done,
        "failed": len(failures),
        "skipped": skipped,
        "removed": removed,
        "total": len(sources),
        "seconds": round(seconds, 3),
        "images_per_second": round(done / seconds, 2) if seconds > 0 and done else 0.0,
        "failures": failures,
    }
    report = {
        **stats,
        "size": size,
        "processes": processes,
        "raw": str(raw),
        "out": str(target_dir),
    }
    (out / IMAGES_DIR / f"report_{size}.json").write_text(json.dumps(report, indent=2))
    marker.write_text(json.dumps({"size": size, "code": code, "images": len(made)}) + "\n")
    return stats, processes


def normalize_jobs(
    jobs: Sequence[Job],
    size: int,
    processes: int,
    made: dict[str, str],
    keys: dict[str, str],
    runner: Runner | None = None,
) -> list[dict[str, str]]:
    """Run ``jobs`` (on ``runner``, else on ``processes`` here), recording each image done
    into ``made`` (its key) as it finishes; a failed image's old output is removed. Returns
    the failures."""
    from tqdm import tqdm

    failures: list[dict[str, str]] = []
    targets = {stem: target for stem, _, target in jobs}
    with (
        worker_pool(processes if runner is None else 1) as pool,
        tqdm(total=len(jobs), unit="img", desc=f"clean_images {size}px", disable=None) as bar,
    ):
        outcomes = run_jobs(jobs, size, pool, processes) if runner is None else runner(jobs, size)
        for image_id, error in outcomes:
            if error is None:
                made[image_id] = keys[image_id]
            else:
                made.pop(image_id, None)
                Path(targets[image_id]).unlink(missing_ok=True)
                failures.append({"image_id": image_id, "error": error})
            bar.update()
    return failures


def log_stats(stats: dict[str, Any]) -> None:
    """Into the active run: the counts and speed as metrics, the failures list."""
    import mlflow

    mlflow.log_metrics(
        {
            key: stats[key]
            for key in (
                "done",
                "failed",
                "skipped",
                "removed",
                "total",
                "seconds",
                "images_per_second",
            )
        }
    )
    mlflow.log_dict({"failures": stats["failures"]}, "failures.json")


def get_args_parser() -> argparse.ArgumentParser:
    from steps.runtime import non_negative_int, whole_number

    parser = runtime.ArgumentParser(
        prog="python -m steps.clean_images",
        description="Normalise every raw image (RGB, aspect kept, padded square) into "
        "<out>/images/<size>/<image_id>.jpg, on all cores; images already done are skipped.",
    )
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="raw export folder")
    parser.add_argument("--out", type=Path, default=Path("data/clean"), help="output folder")
    parser.add_argument("--size", type=whole_number, default=256, help="side of the square, px")
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="processes (0 = every core)"
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: a process pool here; ray: Ray Data tasks (steps/ray_engine.py), a local "
        "Ray or the cluster at RAY_ADDRESS",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    stats = clean_images(
        args.raw, args.out, size=args.size, workers=args.workers, engine=args.engine
    )
    print(
        f"done {stats['done']}, failed {stats['failed']}, skipped {stats['skipped']} "
        f"in {stats['seconds']:.1f} s ({stats['images_per_second']:.0f} images/s); "
        f"wrote {args.out / IMAGES_DIR / str(args.size)}"
    )
    return stats


run = cli(main)

if __name__ == "__main__":
    run()
