"""Benchmark: the int8 export against the fp32 ONNX export of the same network, on this CPU.

For each image size (``--sizes``, default 32 and 224), a resnet18 (random weights,
``--seed``) is exported as the service serves it (``marketplace_models.onnx.export_onnx``),
quantized as training quantizes it (``quantize_onnx``: static, QDQ, per-channel), calibrated
on ``--calibration`` noise photos, and both run by ONNX Runtime on batches of 16 and 1
(``images_per_second``: best of a few runs after a warm-up). Also the top-1 agreement of
the two on ``--agreement`` other noise photos (random weights: thin margins, so this is the
worst case, not what a trained version scores; the gate measures that on the test split).

    .venv/bin/python bench/int8.py
    .venv/bin/python bench/int8.py --sizes 224 --repeats 10

Writes bench/results/int8.json and prints the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_results  # noqa: E402
from cli import ArgumentParser, cli  # noqa: E402
from marketplace_models.network import ClassifierConfig, build_network  # noqa: E402
from marketplace_models.onnx import (  # noqa: E402
    export_onnx,
    images_per_second,
    onnx_probabilities,
    onnx_session,
    quantize_onnx,
)

CATEGORIES = [f"class{i}" for i in range(13)]


def measure(size: int, args: argparse.Namespace, folder: Path) -> dict:
    """fp32 and int8 images/s at batch 16 and 1, and their agreement, at ``size`` px."""
    import torch

    torch.manual_seed(args.seed)
    net = build_network("resnet18", len(CATEGORIES)).eval()
    config = ClassifierConfig(arch="resnet18", categories=CATEGORIES, image_size=size)
    rng = np.random.default_rng(args.seed)
    pixels = rng.integers(0, 256, (args.calibration + args.agreement, size, size, 3), np.uint8)
    fp32, int8 = folder / f"fp32-{size}.onnx", folder / f"int8-{size}.onnx"
    export_onnx(net, config, fp32, pixels[:4])
    quantize_onnx(fp32, int8, pixels[: args.calibration])
    sessions = {"fp32": onnx_session(fp32), "int8": onnx_session(int8)}
    held_out = pixels[args.calibration :]
    top = {name: onnx_probabilities(s, held_out).argmax(1) for name, s in sessions.items()}
    row: dict = {"size": size, "agreement": float(np.mean(top["fp32"] == top["int8"]))}
    for batch in (16, 1):
        for name, session in sessions.items():
            speed = images_per_second(session, held_out[:batch], repeats=args.repeats)
            row[f"{name}_images_per_second_b{batch}"] = round(speed, 1)
        row[f"int8_over_fp32_b{batch}"] = round(
            row[f"int8_images_per_second_b{batch}"] / row[f"fp32_images_per_second_b{batch}"], 2
        )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python bench/int8.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--agreement", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        rows = [measure(size, args, Path(tmp)) for size in args.sizes]
    results = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or "unknown"},
        "load_average_before": round(load_before, 2),
        "calibration_photos": args.calibration,
        "rows": rows,
    }
    write_results(results, args.out)
    for row in rows:
        print(
            f"{row['size']:>4} px  agreement {row['agreement']:.1%}  batch 16: int8 "
            f"{row['int8_images_per_second_b16']} vs fp32 {row['fp32_images_per_second_b16']} "
            f"img/s ({row['int8_over_fp32_b16']}x)  batch 1: {row['int8_over_fp32_b1']}x"
        )


run = cli(main)

if __name__ == "__main__":
    run()
