"""ingest: copies a raw export from a folder or S3 (moto), resumes, refuses bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pytest

from cli import UserError
from steps import ingest as ingest_module
from steps.ingest import ingest, s3_endpoint
from tests.helpers.mlflow_run import mlflow_run
from tests.helpers.servers import LAYOUT, MotoS3, closed_endpoint, make_tiny_export


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def assert_same_files(source: Path, out: Path) -> None:
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert (out / ingest_module.MARKER).is_file(), "the folder is marked as ingested"
    copied.remove(ingest_module.MARKER)
    assert copied == sorted(LAYOUT)
    for name in LAYOUT:
        assert (out / name).read_bytes() == (source / name).read_bytes(), name


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return make_tiny_export(tmp_path / "export")


def _run_of(summary: dict):
    return mlflow.get_run(summary["run_id"])


def _manifest(summary: dict) -> dict:
    path = mlflow.artifacts.download_artifacts(
        run_id=summary["run_id"], artifact_path="manifest.json"
    )
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- local folder


def test_local_folder_is_copied_logged_and_left_untouched(tracking: str, export: Path) -> None:
    before = snapshot(export)
    out = Path("data/raw")

    summary = ingest(str(export), out, workers=4)

    assert_same_files(export, out)
    assert snapshot(export) == before
    total = sum((export / name).stat().st_size for name in LAYOUT)
    assert summary["files_total"] == summary["files_downloaded"] == len(LAYOUT)
    assert summary["bytes_total"] == summary["bytes_downloaded"] == total
    assert summary["files_skipped"] == summary["bytes_skipped"] == 0
    run = _run_of(summary)
    assert run.data.tags["mlflow.runName"] == "ingest"
    assert run.data.params["source"] == str(export)
    assert run.data.metrics["bytes_downloaded"] == total
    assert run.data.metrics["files_skipped"] == 0
    manifest = _manifest(summary)
    assert {f["path"]: f["size"] for f in manifest["files"]} == {
        name: (export / name).stat().st_size for name in LAYOUT
    }


def test_second_run_skips_everything(tracking: str, export: Path) -> None:
    out = Path("raw")
    ingest(str(export), out, workers=2)
    copied = snapshot(out)

    again = ingest(str(export), out, workers=2)

    assert again["files_downloaded"] == again["bytes_downloaded"] == 0
    assert again["files_skipped"] == len(LAYOUT)
    assert again["bytes_skipped"] == again["bytes_total"]
    assert snapshot(out) == copied  # not rewritten
    assert _run_of(again).data.metrics["files_skipped"] == len(LAYOUT)


def test_interrupted_copy_resumes(tracking: str, export: Path) -> None:
    out = Path("raw")
    ingest(str(export), out, workers=2)
    # An interruption leaves: a missing file, a half-written .part, a file of the wrong size.
    (out / "images/0a1b.jpg").unlink()
    (out / "images/0a1b.jpg.part").write_bytes(b"half")
    (out / "Images.csv").write_bytes(b"truncated")
    (out / "images/2c3d.jpg.part").write_bytes(b"left from an earlier run")
    untouched = (out / "images/2c3d.jpg").stat().st_mtime_ns

    summary = ingest(str(export), out, workers=2)

    assert summary["files_downloaded"] == 2
    assert summary["files_skipped"] == len(LAYOUT) - 2
    assert_same_files(export, out)  # and no .part left behind
    assert (out / "images/2c3d.jpg").stat().st_mtime_ns == untouched


def test_failed_files_are_reported_and_retried(
    tracking: str, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = Path("raw")
    real_fetcher = ingest_module.local_fetcher

    def flaky_fetcher(root: Path):
        fetch = real_fetcher(root)

        def fetch_one(item, part: Path) -> None:
            fetch(item, part)  # a partial write, then the connection drops
            if item.path == "images/2c3d.jpg":
                raise ConnectionResetError("connection reset by peer")

        return fetch_one

    monkeypatch.setattr(ingest_module, "local_fetcher", flaky_fetcher)
    with pytest.raises(
        UserError, match=r"1 of 5 files failed .*images/2c3d\.jpg.*run ingest again"
    ):
        ingest(str(export), out, workers=2)
    assert not (out / "images/2c3d.jpg").exists()
    assert (out / "images/4e5f.jpg").read_bytes() == (export / "images/4e5f.jpg").read_bytes()

    monkeypatch.setattr(ingest_module, "local_fetcher", real_fetcher)
    summary = ingest(str(export), out, workers=2)
    assert summary["files_downloaded"] == 1
    assert_same_files(export, out)


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("Products.csv", "not a raw export: missing Products.csv"),
        ("Images.csv", "not a raw export: missing Images.csv"),
        ("images", "not a raw export: missing images/"),
    ],
)
def test_folder_without_the_layout_is_refused(
    tracking: str, export: Path, broken: str, message: str
) -> None:
    _remove(export / broken)
    with pytest.raises(UserError, match=message):
        ingest(str(export), Path("raw"))
    assert not Path("raw").exists()


def test_missing_folder_is_refused(tracking: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder: .*nope"):
        ingest(str(tmp_path / "nope"), Path("raw"))


@pytest.mark.parametrize("out", [".", "images", "sub/raw"])
def test_out_in_the_source_is_refused(tracking: str, export: Path, out: str) -> None:
    before = snapshot(export)
    with pytest.raises(UserError, match="never writes into its source"):
        ingest(str(export), export / out)
    assert snapshot(export) == before


def test_cli_error_is_one_line(tracking: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest_module.run(["--source", "no/such/folder", "--out", "raw"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no such folder: no/such/folder"


# --------------------------------------------------------------------------- S3 (moto)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, None),
        ({"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"}, "http://minio:9000"),
        # boto3 reads these itself, and they win over MLflow's variable.
        ({"AWS_ENDPOINT_URL": "http://a", "MLFLOW_S3_ENDPOINT_URL": "http://m"}, None),
        ({"AWS_ENDPOINT_URL_S3": "http://a", "MLFLOW_S3_ENDPOINT_URL": "http://m"}, None),
    ],
)
def test_s3_endpoint_falls_back_to_mlflow_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str | None
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert s3_endpoint() == expected


def test_s3_export_is_downloaded_and_resumed(
    tracking: str,
    export: Path,
    moto_s3: MotoS3,
    s3_bucket: str,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moto_s3.upload_folder(export, s3_bucket, "exports/2022-02")
    moto_s3.client().put_object(Bucket=s3_bucket, Key="exports/2022-02x/Products.csv", Body=b"x")
    source = f"s3://{s3_bucket}/exports/2022-02/"
    out = Path("data/raw")

    summary = ingest(source, out, workers=4)

    assert_same_files(export, out)  # not notes.txt, .DS_Store or the neighbouring prefix
    assert summary["files_downloaded"] == len(LAYOUT)
    assert summary["bytes_downloaded"] == sum((export / n).stat().st_size for n in LAYOUT)
    assert _run_of(summary).data.params["source"] == source
    assert len(_manifest(summary)["files"]) == len(LAYOUT)

    # Interrupted: one file gone, one half-written. Only MinIO-style MLFLOW_S3_ENDPOINT_URL set.
    (out / "images/4e5f.jpg").unlink()
    (out / "Products.csv").write_bytes(b"half")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_s3.endpoint)

    again = ingest(source, out, workers=4)

    assert again["files_downloaded"] == 2
    assert again["files_skipped"] == len(LAYOUT) - 2
    assert_same_files(export, out)


def test_empty_bucket_and_prefix_are_refused(
    tracking: str, moto_s3: MotoS3, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    with pytest.raises(UserError, match=rf"no objects under s3://{s3_bucket}: "):
        ingest(f"s3://{s3_bucket}", Path("raw"))
    moto_s3.client().put_object(Bucket=s3_bucket, Key="other/Products.csv", Body=b"x")
    with pytest.raises(UserError, match=rf"no objects under s3://{s3_bucket}/exports: "):
        ingest(f"s3://{s3_bucket}/exports", Path("raw"))
    assert not Path("raw").exists()


def test_s3_prefix_without_the_layout_is_refused(
    tracking: str, moto_s3: MotoS3, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="x/Products.csv", Body=b"x")
    with pytest.raises(UserError, match=r"not a raw export: missing Images\.csv, images/"):
        ingest(f"s3://{s3_bucket}/x", Path("raw"))


def test_missing_bucket_is_refused(tracking: str, s3_env: dict[str, str]) -> None:
    with pytest.raises(UserError, match="bucket 'no-such-bucket-here' does not exist"):
        ingest("s3://no-such-bucket-here/raw", Path("raw"))


def test_missing_credentials_are_refused(
    tracking: str, s3_bucket: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    with pytest.raises(UserError, match="no AWS credentials"):
        ingest(f"s3://{s3_bucket}/raw", Path("raw"))


def test_unreachable_endpoint_fails_fast(
    tracking: str, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = closed_endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    started = time.monotonic()
    with pytest.raises(UserError, match=f"cannot reach S3 at {endpoint}"):
        ingest("s3://bucket/raw", Path("raw"))
    # Minutes with boto3's default retries; well under one here, even on a busy machine.
    assert time.monotonic() - started < 60


def test_cli_s3_error_is_one_line(
    tracking: str, s3_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest_module.run(["--source", "s3://no-such-bucket-here", "--out", "raw"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bucket 'no-such-bucket-here' does not exist")
    assert "\n" not in err


# --------------------------------------------------------------------------- mirroring


@pytest.mark.slow  # two `mlflow run`s
def test_ingest_mirrors_changed_content_and_files_gone_from_the_source(
    tracking: str, export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "raw"
    mlflow_run("ingest", {"source": export, "out": out, "workers": 2}, cwd=tmp_path)
    # Same size, same mtime, other bytes; a photo re-exported as PNG.
    products = export / "Products.csv"
    stat = products.stat()
    products.write_bytes(products.read_bytes().replace(b"Leeds", b"Deeds"))
    os.utime(products, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert products.stat().st_size == stat.st_size
    jpeg = export / "images/0a1b.jpg"
    (export / "images/0a1b.png").write_bytes(jpeg.read_bytes())
    jpeg.unlink()

    result = mlflow_run("ingest", {"source": export, "out": out, "workers": 2}, cwd=tmp_path)

    assert (out / "Products.csv").read_bytes() == products.read_bytes(), result.stderr[-2000:]
    assert not (out / "images/0a1b.jpg").exists(), "the old photo is gone with the source's"
    assert (out / "images/0a1b.png").read_bytes() == (export / "images/0a1b.png").read_bytes()
    marker = json.loads((out / ingest_module.MARKER).read_text())
    assert marker["source"] == str(export)
    assert marker["removed"] == ["images/0a1b.jpg"]
    assert "images/0a1b.png" in {entry["path"] for entry in marker["files"]}


def test_s3_object_changed_in_place_is_fetched_again(
    tracking: str,
    export: Path,
    moto_s3: MotoS3,
    s3_bucket: str,
    s3_env: dict[str, str],
) -> None:
    moto_s3.upload_folder(export, s3_bucket, "raw")
    source, out = f"s3://{s3_bucket}/raw", Path("data/raw")
    ingest(source, out, workers=2)
    body = (export / "Images.csv").read_bytes().replace(b"p1", b"p9")  # same size
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="raw/Images.csv", Body=body)
    client.delete_object(Bucket=s3_bucket, Key="raw/images/2c3d.jpg")

    summary = ingest(source, out, workers=2)

    assert (out / "Images.csv").read_bytes() == body
    assert summary["files_downloaded"] == 1 and summary["files_removed"] == 1
    assert not (out / "images/2c3d.jpg").exists()
    assert _manifest(summary)["removed"] == ["images/2c3d.jpg"]


def test_ingest_over_a_demo_export_marks_it_ingested(tracking: str, export: Path) -> None:
    from steps.demo_data import MARKER as DEMO_MARKER
    from steps.demo_data import make_export

    out = Path("raw")
    make_export(out, products=3, seed=0, workers=1)
    synthetic = {p.name for p in (out / "images").iterdir()}
    assert (out / DEMO_MARKER).exists()

    ingest(str(export), out, workers=2)

    assert not (out / DEMO_MARKER).exists(), "no longer a demo export"
    assert (out / ingest_module.MARKER).exists()
    assert_same_files(export, out)  # the synthetic photos are gone too
    assert not synthetic & {p.name for p in (out / "images").iterdir()}
