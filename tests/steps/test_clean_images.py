"""steps.clean_images: every raw image normalised once, atomically, on all cores."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import UserError
from marketplace_models.imaging import load_normalized
from steps import clean_images as step
from steps.clean_images import JPEG_QUALITY, clean_images, is_done, list_images, normalize_file
from tests.helpers.mlflow_run import mlflow_run, project_env

SIZE = 32


def make_raw(raw: Path, count: int = 4) -> Path:
    """A raw folder with ``count`` RGB JPEGs plus one of each awkward kind."""
    images = raw / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        pixels = rng.integers(0, 255, (60 + k, 90, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"rgb{k:03d}.jpg", quality=90)
    Image.new("L", (50, 120), 90).save(images / "grey.jpg")
    Image.new("CMYK", (80, 40), (0, 255, 255, 0)).save(images / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (0, 0, 255, 0)).save(images / "alpha.png")
    Image.new("RGB", (30, 20), (0, 200, 0)).convert("P").save(images / "palette.PNG")
    broken = images / "broken.jpg"
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(broken)
    broken.write_bytes(broken.read_bytes()[:1500])
    (images / "notes.txt").write_text("not an image")
    return raw


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def outputs(out: Path, size: int = SIZE) -> dict[str, Path]:
    return {path.stem: path for path in (out / "images" / str(size)).glob("*.jpg")}


def test_every_image_becomes_an_rgb_square_and_broken_ones_are_listed(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw")
    before = tree_digest(raw)
    out = tmp_path / "clean"

    stats = clean_images(raw, out, size=SIZE, workers=1, log_run=False)

    assert tree_digest(raw) == before  # the raw folder is never touched
    assert stats["done"] == 8 and stats["failed"] == 1 and stats["skipped"] == 0
    assert stats["total"] == 9
    assert stats["images_per_second"] > 0 and stats["seconds"] >= 0
    assert [f["image_id"] for f in stats["failures"]] == ["broken"]
    assert stats["failures"][0]["file"] == os.path.join("images", "broken.jpg")
    assert "truncated" in stats["failures"][0]["error"].lower()
    made = outputs(out)
    assert set(made) == {
        "rgb000",
        "rgb001",
        "rgb002",
        "rgb003",
        "grey",
        "cmyk",
        "alpha",
        "palette",
    }
    for path in made.values():
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (SIZE, SIZE)
    assert not [p for p in (out / "images" / str(SIZE)).iterdir() if p.suffix != ".jpg"]
    report = json.loads((out / "images" / f"report_{SIZE}.json").read_text())
    assert report["failed"] == 1 and report["size"] == SIZE


@pytest.mark.parametrize("name", ["rgb001.jpg", "grey.jpg", "cmyk.jpg", "alpha.png"])
def test_output_is_the_shared_normalisation(tmp_path: Path, name: str) -> None:
    raw = make_raw(tmp_path / "raw", count=2)
    out = tmp_path / "clean"
    clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    expected = io.BytesIO()
    load_normalized(raw / "images" / name, SIZE).save(expected, "JPEG", quality=JPEG_QUALITY)
    assert outputs(out)[Path(name).stem].read_bytes() == expected.getvalue()


def test_images_already_done_are_skipped_and_changed_ones_redone(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", count=2)
    out = tmp_path / "clean"
    first = clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    made = outputs(out)
    stamps = {stem: path.stat().st_mtime_ns for stem, path in made.items()}

    second = clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert second["skipped"] == first["done"] == 6
    assert second["done"] == 0 and second["failed"] == 1  # the broken one is retried
    assert {stem: path.stat().st_mtime_ns for stem, path in made.items()} == stamps

    made["grey"].write_bytes(b"")  # an empty output is not done
    source = raw / "images" / "rgb000.jpg"
    later = made["rgb000"].stat().st_mtime + 10
    os.utime(source, (later, later))  # the source changed after its output was made
    third = clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert third["done"] == 2 and third["skipped"] == 4
    assert made["grey"].stat().st_size > 0


def test_another_size_is_a_separate_folder(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", count=1)
    out = tmp_path / "clean"
    clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    stats = clean_images(raw, out, size=16, workers=1, log_run=False)
    assert stats["skipped"] == 0 and stats["done"] == 5
    with Image.open(outputs(out, 16)["grey"]) as image:
        assert image.size == (16, 16)


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path, monkeypatch) -> None:
    raw = make_raw(tmp_path / "raw", count=1)
    target = tmp_path / "out.jpg"

    def explode(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a jpe")  # a partial write, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        normalize_file(str(raw / "images" / "rgb000.jpg"), str(target), SIZE)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]  # no temporary file either


def test_a_crash_mid_run_is_resumed(tmp_path: Path, monkeypatch) -> None:
    raw = make_raw(tmp_path / "raw", count=4)
    out = tmp_path / "clean"
    real = step.normalize_file
    calls = []

    def crash_on_fourth(source: str, target: str, size: int) -> None:
        calls.append(source)
        if len(calls) == 4:  # after alpha.png, broken.jpg (fails), cmyk.jpg
            raise KeyboardInterrupt
        real(source, target, size)

    monkeypatch.setattr(step, "normalize_file", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert len(outputs(out)) == 2
    monkeypatch.setattr(step, "normalize_file", real)
    stats = clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert stats["skipped"] == 2 and stats["failed"] == 1
    assert stats["done"] == 9 - 2 - 1  # 9 image files, 2 done before the crash, 1 broken


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_gives_the_same_bytes(tmp_path: Path, monkeypatch, method: str) -> None:
    monkeypatch.setattr(step, "pool_context", lambda: multiprocessing.get_context(method))
    raw = make_raw(tmp_path / "raw", count=step.CHUNK + 8)  # more than one chunk: the pool
    serial = clean_images(raw, tmp_path / "one", size=SIZE, workers=1, log_run=False)
    pooled = clean_images(raw, tmp_path / "two", size=SIZE, workers=2, log_run=False)
    assert serial["done"] == pooled["done"] == step.CHUNK + 8 + 4
    assert pooled["failed"] == 1
    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert set(one) == set(two)
    assert all(one[stem].read_bytes() == two[stem].read_bytes() for stem in one)


def test_workers_are_forked_only_from_a_single_thread() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert step.pool_context().get_start_method() == "spawn"
    finally:
        stop.set()
        other.join()
    if threading.active_count() == 1 and sys.platform.startswith("linux"):
        assert step.pool_context().get_start_method() == "fork"


def test_list_images_one_per_id(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.JPEG").write_bytes(b"x")
    (tmp_path / "c.txt").write_bytes(b"x")
    (tmp_path / "d.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.JPEG"]


def test_is_done(tmp_path: Path) -> None:
    source, target = tmp_path / "s.jpg", tmp_path / "t.jpg"
    source.write_bytes(b"x")
    assert not is_done(source, target)
    target.write_bytes(b"")
    assert not is_done(source, target)
    target.write_bytes(b"y")
    os.utime(source, (1_000, 1_000))
    assert is_done(source, target)
    os.utime(source, (target.stat().st_mtime + 5,) * 2)
    assert not is_done(source, target)


def test_the_run_is_logged(tmp_path: Path, tracking: str) -> None:
    import mlflow

    raw = make_raw(tmp_path / "raw", count=1)
    clean_images(raw, tmp_path / "clean", size=SIZE, workers=1)
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.info.run_name == f"clean_images {SIZE}px"
    params = run.data.params
    assert params["size"] == str(SIZE) and params["workers"] == "1" and params["processes"] == "1"
    metrics = run.data.metrics
    assert metrics["done"] == 5 and metrics["failed"] == 1 and metrics["skipped"] == 0
    assert {"seconds", "images_per_second"} <= set(metrics)
    failures = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/failures.json")
    assert [f["image_id"] for f in failures["failures"]] == ["broken"]


def test_a_crash_leaves_a_failed_run_with_its_params(
    tmp_path: Path, tracking: str, monkeypatch
) -> None:
    import mlflow

    def crash(jobs, size):
        raise RuntimeError("disk on fire")

    raw = make_raw(tmp_path / "raw", count=1)
    monkeypatch.setattr(step, "normalize_chunk", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        clean_images(raw, tmp_path / "clean", size=SIZE, workers=1)
    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.info.run_name == f"clean_images {SIZE}px" and run.info.status == "FAILED"
    assert run.data.params["size"] == str(SIZE) and run.data.params["workers"] == "1"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_raw", "not found"),
        ("no_images", "images"),
        ("empty_images", "no image files"),
        ("small", "at least 8"),
        ("out_is_raw", "inside the raw folder"),
        ("out_in_raw", "inside the raw folder"),
    ],
)
def test_bad_input_is_a_step_error(tmp_path: Path, case: str, message: str) -> None:
    raw = tmp_path / "raw"
    if case != "no_raw":
        raw.mkdir()
    if case not in ("no_raw", "no_images"):
        (raw / "images").mkdir()
    if case == "empty_images":
        (raw / "images" / "notes.txt").write_text("not an image")
    out = {"out_is_raw": raw, "out_in_raw": raw / "clean"}.get(case, tmp_path / "clean")
    size = 4 if case == "small" else SIZE
    with pytest.raises(UserError, match=message) as error:
        clean_images(raw, out, size=size, workers=1, log_run=False)
    assert "\n" not in str(error.value)
    assert not (raw / "clean").exists()
    assert not (tmp_path / "clean").exists()


def step_env(tmp_path: Path) -> dict[str, str]:
    """The environment for a step subprocess: its own store, no run or experiment inherited."""
    return project_env(tracking=f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--raw", "/nonexistent/raw"], id="no-raw"),
        pytest.param(["--raw", "{tmp}"], id="no-images"),
        pytest.param(["--raw", "{tmp}", "--size", "4"], id="small"),
        pytest.param(["--raw", "{tmp}", "--workers", "-1"], id="bad-workers"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--out", str(tmp_path / "c")]
    result = subprocess.run(
        [sys.executable, "-m", "steps.clean_images", *argv],
        cwd=tmp_path,
        env=step_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr


@pytest.mark.slow  # a fresh tracking store in a fresh interpreter: ~10 s on 2 busy cores
def test_cli_normalises_with_default_workers(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw", count=1)
    out = tmp_path / "clean"
    result = subprocess.run(
        [sys.executable, "-m", "steps.clean_images", "--raw", str(raw), "--out", str(out)]
        + ["--size", "16.0", "--workers", "0"],
        cwd=tmp_path,
        env=step_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "done 5, failed 1, skipped 0" in result.stdout
    assert len(outputs(out, 16)) == 5


def test_demo_export_every_usable_image_is_normalised(demo_raw: Path, tmp_path: Path) -> None:
    from steps.clean_tabular import build_clean_tables

    before = tree_digest(demo_raw)
    stats = clean_images(demo_raw, tmp_path / "clean", size=SIZE, workers=0, log_run=False)
    assert tree_digest(demo_raw) == before
    assert stats["done"] + stats["failed"] == stats["total"] > 0
    usable = set(build_clean_tables(demo_raw).images["image_id"])
    assert usable <= set(outputs(tmp_path / "clean"))
    assert not usable & {failure["image_id"] for failure in stats["failures"]}


def expected_output(source: Path, size: int = SIZE) -> bytes:
    buffer = io.BytesIO()
    load_normalized(source, size).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@pytest.mark.slow  # two `mlflow run`s
def test_a_replaced_photo_is_redone_whatever_its_mtime_and_a_removed_one_goes(
    tmp_path: Path,
) -> None:
    """`cp -p` / `rsync -a` / `tar` give a replaced photo an older mtime: its content decides."""
    raw = make_raw(tmp_path / "raw", count=2)
    out = tmp_path / "clean"
    params = {"raw": raw, "out": out, "size": SIZE, "workers": 1}
    mlflow_run("clean_images", params, cwd=tmp_path, env=step_env(tmp_path))
    source = raw / "images" / "rgb000.jpg"
    old = outputs(out)["rgb000"].read_bytes()
    Image.new("RGB", (90, 60), (250, 250, 0)).save(source, quality=90)  # another photo
    os.utime(source, (1_000_000, 1_000_000))  # ... restored with a 1970 mtime
    (raw / "images" / "rgb001.jpg").unlink()  # gone from the export

    mlflow_run("clean_images", params, cwd=tmp_path, env=step_env(tmp_path))

    made = outputs(out)
    assert made["rgb000"].read_bytes() == expected_output(source) != old
    assert "rgb001" not in made, "the output of a photo no longer in the export is removed"


def test_a_change_to_the_normalisation_redoes_every_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_raw(tmp_path / "raw", count=2)
    out = tmp_path / "clean"
    first = clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert clean_images(raw, out, size=SIZE, workers=1, log_run=False)["skipped"] == first["done"]
    real = step.normalisation_digest()
    assert real == step.normalisation_digest(), "the digest is stable"
    monkeypatch.setattr(step, "normalisation_digest", lambda: real + "-changed")

    again = clean_images(raw, out, size=SIZE, workers=1, log_run=False)

    assert again["skipped"] == 0 and again["done"] == first["done"]


def test_an_interrupted_size_is_never_chosen_by_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clean_data import choose_size, cleaned_sizes
    from cli import UserError

    raw = make_raw(tmp_path / "raw", count=4)
    out = tmp_path / "clean"
    clean_images(raw, out, size=64, workers=1, log_run=False)
    real = step.normalize_file
    calls = []

    def crash_on_third(source: str, target: str, size: int) -> None:
        calls.append(source)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(source, target, size)

    monkeypatch.setattr(step, "normalize_file", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        clean_images(raw, out, size=40, workers=1, log_run=False)
    assert outputs(out, 40), "half a folder was written"

    assert cleaned_sizes(out) == [64]
    assert choose_size(out, 33, None, flag="--clean-size") == 64, "not the half-written 40"
    with pytest.raises(UserError, match=r"images/40 is incomplete .*run clean_images"):
        choose_size(out, 33, 40, flag="--clean-size")

    monkeypatch.setattr(step, "normalize_file", real)
    clean_images(raw, out, size=40, workers=1, log_run=False)
    assert cleaned_sizes(out) == [40, 64]
    assert choose_size(out, 33, None, flag="--clean-size") == 40


def test_a_rerun_marks_the_folder_incomplete_until_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clean_data import cleaned_sizes

    raw = make_raw(tmp_path / "raw", count=2)
    out = tmp_path / "clean"
    clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert cleaned_sizes(out) == [SIZE]
    Image.new("RGB", (90, 60), (0, 250, 250)).save(raw / "images" / "rgb000.jpg")

    def crash(source: str, target: str, size: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(step, "normalize_file", crash)
    with pytest.raises(KeyboardInterrupt):
        clean_images(raw, out, size=SIZE, workers=1, log_run=False)
    assert cleaned_sizes(out) == [], "a folder being redone is not complete"
