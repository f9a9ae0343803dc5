"""The int8 export of a registered image classifier, kept only when it is as accurate.

:func:`quantize_version` is what training runs after it registers a version and what
``python -m registry quantize`` runs on an existing one: it reads the version's fp32 ONNX
export, quantizes it (:func:`marketplace_models.onnx.quantize_onnx`, calibrated on up to
:data:`CALIBRATION_IMAGES` training photos prepared as the service prepares them), and
compares the two on the test split. The int8 file is kept when its top-1 agreement with
fp32 is at least :data:`MIN_AGREEMENT` and its accuracy at most :data:`MAX_ACCURACY_DROP`
below fp32's (:func:`gate`).

A model version's artifacts cannot change once registered, so a kept file is logged to the
version's run under ``int8/`` and the version is tagged :data:`INT8_TAG` with its artifact
URI (the service finds it there); every attempt tags :data:`INT8_GATE_TAG` with the verdict,
logs the figures to the run (``int8/agreement``, ``int8/accuracy``, ``onnx/accuracy``,
``int8/calibration_images``, ``onnx/images_per_second``, ``int8/images_per_second``) and
writes one line into the version's description.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cli import UserError
from registry.descriptions import with_registration_line

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

INT8_TAG = "int8_onnx"  # on a version: the artifact URI of its int8 export (gate passed)
INT8_GATE_TAG = "int8_gate"  # on a version: passed / refused, and the figures
INT8_ARTIFACT_DIR = "int8"
INT8_LINE = "**int8 export**"
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01
CALIBRATION_IMAGES = 300


@dataclass(frozen=True)
class Int8Report:
    """What the gate measured on the test split, and its verdict."""

    kept: bool
    reason: str
    agreement: float = float("nan")
    fp32_accuracy: float = float("nan")
    int8_accuracy: float = float("nan")
    calibration_images: int = 0
    test_images: int = 0
    fp32_images_per_second: float = float("nan")
    int8_images_per_second: float = float("nan")

    def metrics(self) -> dict[str, float]:
        """The run metrics of this attempt (only the finite ones)."""
        values = {
            "int8/agreement": self.agreement,
            "int8/accuracy": self.int8_accuracy,
            "onnx/accuracy": self.fp32_accuracy,
            "int8/calibration_images": float(self.calibration_images),
            "int8/test_images": float(self.test_images),
            "onnx/images_per_second": self.fp32_images_per_second,
            "int8/images_per_second": self.int8_images_per_second,
            "int8/kept": float(self.kept),
        }
        return {key: value for key, value in values.items() if np.isfinite(value)}

    def note(self) -> str:
        """The description line: whether the int8 export is there, and why (not)."""
        verdict = "kept, served by SERVE_ENGINE=auto" if self.kept else "not kept"
        return f"{INT8_LINE}: {verdict}: {self.reason}."


def gate(
    agreement: float,
    fp32_accuracy: float,
    int8_accuracy: float,
    *,
    min_agreement: float = MIN_AGREEMENT,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
) -> tuple[bool, str]:
    """Whether the int8 export may serve, and the sentence saying why."""
    figures = (
        f"top-1 agreement with fp32 {agreement:.1%} (needs {min_agreement:.0%}), test "
        f"accuracy {int8_accuracy:.4f} against fp32's {fp32_accuracy:.4f} (at most "
        f"{max_accuracy_drop * 100:g} points lower)"
    )
    kept = agreement >= min_agreement and int8_accuracy >= fp32_accuracy - max_accuracy_drop
    return kept, figures


def split_pixels(clean: Path, split: str, image_size: int, limit: int | None = None):
    """uint8 photos ``(N, S, S, 3)`` of ``split`` as served, and their labels ``(N,)``."""
    from clean_data import choose_size, load_clean
    from marketplace_models.network import preprocess_image

    data = load_clean(clean, columns=("image_id", "label", "split"))
    data = data.at_size(choose_size(clean, image_size, flag="--clean"))
    frame = data.split(split).sort_values("image_id").reset_index(drop=True)
    if limit is not None and len(frame) > limit:
        frame = frame.sample(n=limit, random_state=0).reset_index(drop=True)
    paths = data.paths(frame)
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} {split} photos are missing, e.g. {missing[0]}")
    shape = (0, image_size, image_size, 3)
    pixels = [preprocess_image(path, image_size) for path in paths]
    stacked = np.stack(pixels) if pixels else np.zeros(shape, dtype=np.uint8)
    return stacked, frame["label"].to_numpy()


def evaluate_int8(
    fp32: Path,
    int8: Path,
    test_pixels: np.ndarray,
    labels: np.ndarray,
    calibration_images: int,
    **thresholds: float,
) -> Int8Report:
    """Compare ``int8`` with ``fp32`` on the test photos and apply :func:`gate`."""
    from marketplace_models.onnx import (
        SPEED_BATCH,
        images_per_second,
        onnx_probabilities,
        onnx_session,
    )

    fp32_session, int8_session = onnx_session(fp32), onnx_session(int8)
    fp32_top = onnx_probabilities(fp32_session, test_pixels).argmax(axis=1)
    int8_top = onnx_probabilities(int8_session, test_pixels).argmax(axis=1)
    agreement = float(np.mean(fp32_top == int8_top))
    fp32_accuracy = float(np.mean(fp32_top == labels))
    int8_accuracy = float(np.mean(int8_top == labels))
    kept, reason = gate(agreement, fp32_accuracy, int8_accuracy, **thresholds)
    batch = np.resize(test_pixels, (SPEED_BATCH, *test_pixels.shape[1:]))
    return Int8Report(
        kept=kept,
        reason=f"{reason}, on {len(labels)} test photos, calibrated on {calibration_images}",
        agreement=agreement,
        fp32_accuracy=fp32_accuracy,
        int8_accuracy=int8_accuracy,
        calibration_images=calibration_images,
        test_images=len(labels),
        fp32_images_per_second=images_per_second(fp32_session, batch),
        int8_images_per_second=images_per_second(int8_session, batch),
    )


def quantize_and_gate(
    fp32: Path,
    int8: Path,
    clean: Path,
    image_size: int,
    *,
    calibration: np.ndarray | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    **thresholds: float,
) -> Int8Report:
    """Quantize ``fp32`` into ``int8`` and gate it on ``clean``'s test split.

    ``calibration`` (uint8 ``(N, S, S, 3)``) replaces the training photos. The int8 file
    is removed again when the gate refuses it.
    """
    from marketplace_models.onnx import quantize_onnx

    if calibration is None:
        calibration, _ = split_pixels(clean, "train", image_size, calibration_images)
    test_pixels, labels = split_pixels(clean, "test", image_size)
    if len(labels) == 0 or len(calibration) == 0:
        what = "test" if len(labels) == 0 else "training"
        return Int8Report(kept=False, reason=f"the {what} split of {clean} is empty")
    quantize_onnx(fp32, int8, calibration)
    report = evaluate_int8(fp32, int8, test_pixels, labels, len(calibration), **thresholds)
    if not report.kept:
        int8.unlink(missing_ok=True)
    return report


def quantize_version(
    client: MlflowClient,
    name: str,
    version: int | str,
    clean: Path,
    *,
    calibration: np.ndarray | None = None,
    **options,
) -> Int8Report:
    """Add the int8 export to version ``version`` of ``name`` when it passes the gate, and
    record the attempt on the version and its run (see the module doc)."""
    from marketplace_models.image import NotAClassifier, read_logged_classifier
    from marketplace_models.kinds import IMAGE
    from marketplace_models.onnx import INT8_FILE
    from registry.kinds import input_of

    model_version = client.get_model_version(name, str(version))
    kind = input_of(model_version.tags)
    if kind != IMAGE:
        raise UserError(
            f"version {version} of {name} takes {kind} input: only image classifiers have an "
            "int8 export so far"
        )
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        with _downloaded(client, name, version) as folder:
            try:
                logged = read_logged_classifier(folder)
            except NotAClassifier as exc:
                raise UserError(f"version {version} of {name}: {exc}") from None
            if logged.onnx is None:
                report = Int8Report(kept=False, reason="the version has no fp32 ONNX export")
            else:
                int8 = Path(tmp) / INT8_FILE
                report = quantize_and_gate(
                    logged.onnx,
                    int8,
                    clean,
                    logged.config.image_size,
                    calibration=calibration,
                    **options,
                )
        report = record_int8(client, model_version, report, Path(tmp) / INT8_FILE)
    log.info("version %s of %s: %s", version, name, report.note())
    return report


@contextmanager
def _downloaded(client: MlflowClient, name: str, version: int | str) -> Iterator[Path]:
    """Version ``version``'s files in a temporary folder, removed when the block ends."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="quantize-model-") as tmp:
        source = client.get_model_version_download_uri(name, str(version))
        yield Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri
            )
        )


def record_int8(client: MlflowClient, model_version, report: Int8Report, int8: Path) -> Int8Report:
    """Log the figures (and a kept file) to the version's run; tag and describe the version.

    Returns the verdict recorded (a version without a run cannot hold the file)."""
    name, number, run_id = model_version.name, model_version.version, model_version.run_id
    if run_id:
        for key, value in report.metrics().items():
            client.log_metric(run_id, key, value)
    if report.kept and run_id:
        client.log_artifact(run_id, str(int8), artifact_path=INT8_ARTIFACT_DIR)
        uri = f"runs:/{run_id}/{INT8_ARTIFACT_DIR}/{int8.name}"
        client.set_model_version_tag(name, number, INT8_TAG, uri)
    elif report.kept:
        report = Int8Report(kept=False, reason="the version has no run to hold the file")
    if not report.kept and INT8_TAG in (model_version.tags or {}):
        client.delete_model_version_tag(name, number, INT8_TAG)
    verdict = "passed" if report.kept else "refused"
    client.set_model_version_tag(name, number, INT8_GATE_TAG, f"{verdict}: {report.reason}"[:5000])
    description = client.get_model_version(name, number).description or ""
    updated = with_registration_line(description, INT8_LINE, report.note())
    client.update_model_version(name, number, description=updated)
    return report
