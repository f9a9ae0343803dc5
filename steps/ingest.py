"""ingest: copy a raw marketplace export from a local folder or S3 into ``data/raw``.

Reads: ``--source``, a local folder or ``s3://bucket/prefix`` holding the raw layout
(``Products.csv``, ``Images.csv``, ``images/``). Nothing else under the source is copied,
and the source is never modified.

Writes: ``<out>/Products.csv``, ``<out>/Images.csv``, ``<out>/images/...``, the manifest
``<out>/.ingest.json`` (the source, every file with its size, source version and SHA-256, and
the files removed) and one MLflow run ("ingest") with the file and byte counts (downloaded,
skipped, removed, total) as metrics and the same manifest as ``manifest.json``.

``<out>`` mirrors the source. A file is skipped only when its content is the source's: for a
local source the SHA-256 of both (sizes and mtimes lie: an edit may keep the size, ``cp -p``
keeps the mtime); for S3 the object's ETag recorded in ``.ingest.json`` when it was fetched,
and the file still hashing as it did then. Files of the layout that the source no longer
holds (a photo re-exported as ``X.png`` leaves ``X.jpg``) are removed and listed in the
manifest. The manifest also marks ``<out>`` as an ingested export: ingest removes
demo_data's marker, and ``demo_data`` and ``main`` never write a synthetic export over it.

Downloads run in parallel (``--workers`` threads). Every file is written to ``<name>.part``
first and renamed when complete, and the manifest is written even when some files failed,
so running ingest again after an interruption fetches only what is missing.

S3 endpoint: boto3 reads ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` itself (MinIO,
moto, any S3-compatible store); when neither is set, ``MLFLOW_S3_ENDPOINT_URL`` is used, so
a shell already set up for an MLflow server on MinIO works as it is. Credentials come from
the usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cli import UserError
from steps import runtime
from steps.raw_export import DEMO_LICENSE_NOTE, DEMO_MARKER, INGEST_MARKER
from steps.runtime import cli, file_sha256, log_params, positive_int, start_run

log = logging.getLogger(__name__)

TABLES = ("Products.csv", "Images.csv")
IMAGES_DIR = "images"
PART_SUFFIX = ".part"
MARKER = INGEST_MARKER  # the manifest beside the export: says it was ingested, and from where
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class SourceFile:
    """One file of the export: its path relative to the export root, its size, and what
    names its content (``sha256:<hex>`` for a local file, ``etag:<ETag>`` for an S3 object)."""

    path: str
    size: int
    version: str = ""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the whole bucket

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


# --------------------------------------------------------------------------- sources


def parse_s3_uri(source: str) -> S3Location:
    """``s3://bucket/some/prefix/`` -> S3Location("bucket", "some/prefix")."""
    rest = source[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UserError(f"no bucket in {source!r}: use s3://bucket/prefix")
    return S3Location(bucket, prefix.strip("/"))


def in_layout(relative: str) -> bool:
    """Whether a path relative to the export root belongs to the raw layout."""
    parts = PurePosixPath(relative).parts
    if not parts or any(part.startswith(".") for part in parts):
        return False
    if len(parts) == 1:
        return parts[0] in TABLES
    return parts[0] == IMAGES_DIR and not relative.endswith(PART_SUFFIX)


def check_layout(files: Sequence[SourceFile], where: str) -> None:
    """Fail unless ``files`` hold both tables and at least one file under ``images/``."""
    names = {f.path for f in files}
    missing = [name for name in TABLES if name not in names]
    if not any(f.path.startswith(IMAGES_DIR + "/") for f in files):
        missing.append(IMAGES_DIR + "/")
    if missing:
        raise UserError(
            f"{where} is not a raw export: missing {', '.join(missing)} "
            "(expected Products.csv, Images.csv and images/); check the path"
        )


def list_local(root: Path) -> list[SourceFile]:
    """The layout's files under a local folder."""
    if not root.is_dir():
        raise UserError(f"no such folder: {root}")
    files = []
    for name in TABLES:
        if (root / name).is_file():
            files.append(local_file(root, name))
    images = root / IMAGES_DIR
    if images.is_dir():
        for path in sorted(images.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and in_layout(relative):
                files.append(local_file(root, relative))
    check_layout(files, str(root))
    return files


def local_file(root: Path, relative: str) -> SourceFile:
    path = root / relative
    return SourceFile(relative, path.stat().st_size, f"sha256:{file_sha256(path)}")


def s3_endpoint() -> str | None:
    """The endpoint to pass to boto3 explicitly: MLFLOW_S3_ENDPOINT_URL as a fallback only.

    boto3 honours AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL by itself.
    """
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        return None
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def make_s3_client(workers: int = 16):
    """An S3 client that fails in seconds when the endpoint is down, sized for ``workers``."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        max_pool_connections=max(10, workers),
    )
    # A fresh session: the environment's credentials and endpoint as they are now.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=s3_endpoint(), config=config)


def explain_s3_error(exc: Exception, location: S3Location) -> UserError:
    """Turn a botocore exception into a one-line UserError that says what to do."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = location.uri
    endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return UserError(
            f"no AWS credentials to read {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(exc, EndpointConnectionError):
        return UserError(
            f"cannot reach S3 at {endpoint or 'the AWS endpoint'} to read {where}: check "
            "AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL) and that the store is running"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return UserError(f"bucket {location.bucket!r} does not exist ({where}); check the name")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return UserError(f"access to {where} denied ({code}): check your AWS credentials")
        return UserError(f"S3 refused to list {where} ({code or exc}); check the source")
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UserError(f"cannot read {where} ({type(exc).__name__}: {message})")


def list_s3(client, location: S3Location) -> list[SourceFile]:
    """The layout's objects under an S3 prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = location.prefix + "/" if location.prefix else ""
    keys: list[tuple[str, int, str]] = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
            keys.extend(
                (obj["Key"], obj["Size"], obj.get("ETag", "")) for obj in page.get("Contents", [])
            )
    except (BotoCoreError, ClientError) as exc:
        raise explain_s3_error(exc, location) from None
    if not keys:
        raise UserError(
            f"no objects under {location.uri}: check the bucket and prefix "
            "(the prefix is the folder holding Products.csv)"
        )
    files = [
        SourceFile(key[len(prefix) :], size, f"etag:{etag}")
        for key, size, etag in keys
        if not key.endswith("/") and in_layout(key[len(prefix) :])
    ]
    check_layout(files, location.uri)
    return sorted(files, key=lambda f: f.path)


# --------------------------------------------------------------------------- copying


def check_out(source_root: Path | None, out: Path) -> None:
    """Refuse an ``out`` that would write into the source."""
    if source_root is None:
        return
    source, target = source_root.resolve(), out.resolve()
    if target == source or source in target.parents:
        raise UserError(
            f"--out {out} is the source folder or inside it; ingest never writes into its "
            "source: pick another --out (default data/raw)"
        )


def read_marker(out: Path) -> dict:
    """``<out>/.ingest.json`` as a dict; empty when absent or unreadable."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def write_marker(out: Path, manifest: dict) -> None:
    """Write ``<out>/.ingest.json`` atomically (not at all when it says that already)."""
    text = json.dumps(manifest, indent=1) + "\n"
    with contextlib.suppress(OSError):
        if (out / MARKER).read_text() == text:
            return
    part = out / (MARKER + PART_SUFFIX)
    part.write_text(text)
    os.replace(part, out / MARKER)


def recorded_files(out: Path) -> dict[str, dict]:
    """What the last ingest into ``out`` recorded: path -> {version, sha256}."""
    entries = read_marker(out).get("files", [])
    return {
        e["path"]: {"version": e.get("version"), "sha256": e.get("sha256")}
        for e in entries
        if isinstance(e, dict) and "path" in e
    }


def is_current(item: SourceFile, target: Path, recorded: dict) -> str | None:
    """The SHA-256 of ``target`` when it holds ``item``'s content, else None.

    A local source's version is its SHA-256, compared directly; an S3 object's ETag is
    compared with the one recorded when the file was fetched, the file still hashing as then.
    """
    if not target.is_file() or target.stat().st_size != item.size:
        return None
    digest = file_sha256(target)
    if item.version == f"sha256:{digest}":
        return digest
    entry = recorded.get(item.path, {})
    if item.version.startswith("etag:") and entry == {"version": item.version, "sha256": digest}:
        return digest
    return None


def plan(
    files: Iterable[SourceFile], out: Path, recorded: dict | None = None
) -> tuple[list[SourceFile], dict[str, str]]:
    """Split ``files`` into the ones to fetch and the ones ``out`` holds already (path ->
    SHA-256); ``recorded`` is the last manifest's path -> {version, sha256}."""
    fetch, current = [], {}
    for item in files:
        digest = is_current(item, out / item.path, recorded or {})
        if digest is None:
            fetch.append(item)
        else:
            current[item.path] = digest
    return fetch, current


def layout_files(out: Path) -> list[str]:
    """The layout's files in ``out`` (relative paths), ``.part`` files and dotfiles aside."""
    found = [name for name in TABLES if (out / name).is_file()]
    images = out / IMAGES_DIR
    if images.is_dir():
        for path in images.rglob("*"):
            relative = path.relative_to(out).as_posix()
            if path.is_file() and in_layout(relative):
                found.append(relative)
    return sorted(found)


def remove_gone(out: Path, files: Sequence[SourceFile]) -> list[str]:
    """Delete the layout's files in ``out`` that the source no longer holds; return them."""
    wanted = {item.path for item in files}
    gone = [relative for relative in layout_files(out) if relative not in wanted]
    for relative in gone:
        (out / relative).unlink(missing_ok=True)
    return gone


def fetch_atomically(fetch_one: Callable[[Path], None], target: Path) -> None:
    """Write ``target`` through ``<target>.part`` so that a half-written file never counts."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    fetch_one(part)
    os.replace(part, target)


def run_parallel(
    items: Sequence[SourceFile],
    fetch_one: Callable[[SourceFile, Path], None],
    out: Path,
    workers: int,
) -> list[tuple[str, str]]:
    """Fetch ``items`` into ``out`` on ``workers`` threads; return (path, error) per failure."""
    from tqdm import tqdm

    failures: list[tuple[str, str]] = []
    total = sum(item.size for item in items)
    with (
        tqdm(total=total, unit="B", unit_scale=True, desc="ingest", disable=None) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = {
            pool.submit(
                fetch_atomically, lambda part, item=item: fetch_one(item, part), out / item.path
            ): item
            for item in items
        }
        for future in as_completed(futures):
            item = futures[future]
            exc = future.exception()
            if exc is not None:
                failures.append((item.path, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            bar.update(item.size)
    return failures


def local_fetcher(root: Path) -> Callable[[SourceFile, Path], None]:
    def fetch_one(item: SourceFile, part: Path) -> None:
        shutil.copyfile(root / item.path, part)

    return fetch_one


def s3_fetcher(client, location: S3Location) -> Callable[[SourceFile, Path], None]:
    from boto3.s3.transfer import TransferConfig

    # One thread per file: the pool already runs ``workers`` files at once.
    config = TransferConfig(use_threads=False)

    def fetch_one(item: SourceFile, part: Path) -> None:
        client.download_file(location.bucket, location.key(item.path), str(part), Config=config)

    return fetch_one


# --------------------------------------------------------------------------- the step


def ingest(source: str, out: Path, *, workers: int = 16) -> dict:
    """Mirror the raw export at ``source`` (folder or ``s3://bucket/prefix``) into ``out``.

    Returns the counts logged to MLflow: files and bytes downloaded, skipped and in total,
    files removed, and ``seconds``.
    """
    source = str(source).strip()
    out = Path(out)
    if not source:
        raise UserError("--source is empty: give a folder or s3://bucket/prefix")
    started = time.perf_counter()
    if source.startswith("s3://"):
        location = parse_s3_uri(source)
        client = make_s3_client(workers)
        files = list_s3(client, location)
        fetch_one = s3_fetcher(client, location)
    else:
        root = Path(source).expanduser()
        files = list_local(root)
        check_out(root, out)
        fetch_one = local_fetcher(root)
    fetch, current = plan(files, out, recorded_files(out))
    log.info(
        "%s: %d files (%s); %d to fetch, %d already in %s",
        source,
        len(files),
        human_bytes(sum(f.size for f in files)),
        len(fetch),
        len(current),
        out,
    )

    with start_run("ingest") as active:
        import mlflow

        log_params({"source": source, "out": str(out), "workers": workers})
        out.mkdir(parents=True, exist_ok=True)
        mark_ingested(out, source, files, current)
        skipped = [f for f in files if f.path in current]
        removed = remove_gone(out, files)
        failures = run_parallel(fetch, fetch_one, out, workers)
        failed = {path for path, _ in failures}
        fetched = [f for f in fetch if f.path not in failed]
        current.update({f.path: file_sha256(out / f.path) for f in fetched})
        manifest = build_manifest(source, files, current, removed, failures)
        write_marker(out, manifest)
        summary = {
            "files_total": len(files),
            "files_downloaded": len(fetched),
            "files_skipped": len(skipped),
            "files_failed": len(failures),
            "files_removed": len(removed),
            "bytes_total": sum(f.size for f in files),
            "bytes_downloaded": sum(f.size for f in fetched),
            "bytes_skipped": sum(f.size for f in skipped),
            "seconds": round(time.perf_counter() - started, 3),
        }
        mlflow.log_metrics(summary)
        mlflow.log_dict(manifest, "manifest.json")
        summary["run_id"] = active.info.run_id
        if failures:
            path, error = failures[0]
            raise UserError(
                f"{len(failures)} of {len(fetch)} files failed to copy (first: {path}: {error}); "
                "run ingest again: it resumes and fetches only what is missing"
            )
    remove_leftover_parts(out)
    log.info(
        "ingest done: %d fetched (%s), %d skipped, %d removed, in %.1f s -> %s",
        summary["files_downloaded"],
        human_bytes(summary["bytes_downloaded"]),
        summary["files_skipped"],
        summary["files_removed"],
        summary["seconds"],
        out,
    )
    return summary


def build_manifest(
    source: str,
    files: Sequence[SourceFile],
    current: dict[str, str],
    removed: Sequence[str],
    failures: Sequence[tuple[str, str]],
) -> dict:
    """The manifest: every source file (with its SHA-256 in ``out`` once there), the files
    removed because the source no longer holds them, and the failures."""
    return {
        "source": source,
        "files": [
            {"path": f.path, "size": f.size, "version": f.version, "sha256": current.get(f.path)}
            for f in files
        ],
        "removed": list(removed),
        "failed": [{"path": p, "error": e} for p, e in failures],
    }


def mark_ingested(
    out: Path, source: str, files: Sequence[SourceFile], current: dict[str, str]
) -> None:
    """Before anything is written: mark ``out`` as ingested from ``source`` (what it holds
    now, so a resumed S3 ingest still knows its files) and remove demo_data's marker (and
    its photos' artwork credit), so that no step takes the export for a synthetic one from
    here on."""
    write_marker(out, build_manifest(source, files, current, [], []))
    (out / DEMO_MARKER).unlink(missing_ok=True)
    (out / DEMO_LICENSE_NOTE).unlink(missing_ok=True)


def remove_leftover_parts(out: Path) -> None:
    """Delete ``*.part`` files an interrupted run left beside files that are now complete."""
    for name in TABLES:
        (out / (name + PART_SUFFIX)).unlink(missing_ok=True)
    images = out / IMAGES_DIR
    if images.is_dir():
        for part in images.rglob("*" + PART_SUFFIX):
            part.unlink(missing_ok=True)


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def get_args_parser() -> argparse.ArgumentParser:
    parser = runtime.ArgumentParser(
        prog="python -m steps.ingest",
        description=(
            "Copy a raw export (Products.csv, Images.csv, images/) from a folder or "
            "s3://bucket/prefix into --out, in parallel: files whose content is already there "
            "are skipped, files the source no longer holds are removed."
        ),
    )
    parser.add_argument(
        "--source",
        required=True,
        help="a local folder or s3://bucket/prefix holding Products.csv, Images.csv, images/",
    )
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="where to write")
    parser.add_argument(
        "--workers", type=positive_int, default=16, help="parallel downloads (default 16)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    ingest(args.source, args.out, workers=args.workers)


run = cli(main)

if __name__ == "__main__":
    run()
