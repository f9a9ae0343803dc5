"""Benchmark: our training loop against a straightforward one, same data, same model.

The straightforward loop, as most transfer-learning scripts are written: a ``Dataset`` that
opens each cleaned JPEG with Pillow, torchvision's transforms (``RandomResizedCrop(scale=
(0.6, 1))``, ``RandomHorizontalFlip``, ``ColorJitter(0.2, 0.2, 0.2)``, ``ToTensor``,
``Normalize``) in a ``DataLoader`` (``--num-workers`` processes, shuffled), and a plain step
(``model.train()``, forward, loss, backward, AdamW) every epoch. Ours: ``steps.training``'s
stages and ``train_one_epoch`` as ``steps.train`` runs them (each JPEG decoded once into
memory; head only: backbone features computed once; fine-tuning: batched augmentation on
the device, frozen blocks in eval mode).

Both train the same network (same arch, same frozen blocks, same batch size) on the same
train split; validation is left out of both. Images per second = epochs x train images /
wall seconds, everything included (our decoding and feature pass, the baseline's worker
start-up). Head only: ours over 15 epochs (its one-off feature pass amortised as in a real
run), the plain loop over 3 (each of its epochs costs the same). Fine-tuning: 3 epochs
each. The two are interleaved ``--repeat`` times and the best run of each counts; CPU
seconds (workers included) are recorded too, the steadier figure on a shared machine.

Precision: our loop in fp32 (the loop before the CPU fast path) against the same loop with
``--precision auto`` (bf16 autocast where the CPU has bf16 instructions, else fp32 again),
fine-tuning every layer as the demo does, same seed, same epochs; each run's validation
accuracy is recorded beside its speed, so that speed is not bought with accuracy.

Card (``--modes card``, run with the card's ``--arch resnet50 --image-size 224 --clean-size
256``): the card's command before and after ``trainable_layers=auto`` and ``precision=auto``
over random weights (offline): before, fp32 with layer4 and the head trained; after, the
CPU's precision with every layer trained (what auto picks over random weights).

    .venv/bin/python bench/train.py                        # a demo export, made here
    .venv/bin/python bench/train.py --clean data/clean --clean-size 256 --image-size 224

Writes bench/results/train.json and prints the figures. Nothing is logged to MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# Runnable as `python bench/train.py` from anywhere: the repo first, before bench/ (whose
# search.py and serve.py would hide the packages of the same name).
sys.path.insert(0, str(REPO))

from cli import ArgumentParser, cli  # noqa: E402
from marketplace_models.network import build_network  # noqa: E402
from steps.training import stages  # noqa: E402
from steps.training.config import TrainConfig  # noqa: E402
from steps.training.data import load_clean_data  # noqa: E402
from steps.training.distributed import setup  # noqa: E402
from steps.training.loop import (  # noqa: E402
    build_optimizer,
    build_scheduler,
    evaluate,
    train_one_epoch,
)
from steps.training.model import freeze, parse_trainable_layers  # noqa: E402

RESULTS = REPO / "bench" / "results" / "train.json"
TARGETS = {"head_only": 5.0, "fine_tuning": 1.2, "precision": 1.0, "card": 0.0}

log = logging.getLogger("bench.train")


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its reaped children (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---------------------------------------------------------------- the plain loop


class JpegDataset(torch.utils.data.Dataset):
    """Cleaned JPEGs and labels; each item opened, decoded and transformed on access."""

    def __init__(self, paths: list[Path], labels: list[int], transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def plain_transform(image_size: int):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.6, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )


def run_plain(cfg: TrainConfig, paths, labels, epochs: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``epochs`` epochs of the straightforward loop."""
    torch.manual_seed(cfg.seed)
    net = build_network(cfg.arch, int(max(labels)) + 1)
    freeze(net, cfg.trainable_layers)
    dataset = JpegDataset(paths, labels, plain_transform(cfg.image_size))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    optimizer = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start, cpu = time.perf_counter(), cpu_seconds()
    net.train()
    for _ in range(epochs):
        for images, targets in loader:
            loss = criterion(net(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    del loader  # stops and reaps the workers, so that their CPU time is counted
    return time.perf_counter() - start, cpu_seconds() - cpu


# ---------------------------------------------------------------- our loop


def run_ours(cfg: TrainConfig, epochs: int) -> tuple[float, float, float, float, str]:
    """Wall seconds for ``epochs`` epochs of our loop, the one-off setup in them, CPU seconds,
    the validation accuracy reached (not timed) and the precision it computed in."""
    ctx = setup(cfg.precision)
    torch.manual_seed(cfg.seed)
    start, cpu = time.perf_counter(), cpu_seconds()
    data = load_clean_data(cfg.clean, cfg.clean_size, cfg.image_size)
    net = build_network(cfg.arch, len(data.categories))
    freeze(net, cfg.trainable_layers)
    net.to(ctx.device)
    stage = stages.build_stage(net, data, cfg, ctx)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, epochs * len(stage.train))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for epoch in range(1, epochs + 1):
        stage.train_mode()
        train_one_epoch(stage.module, stage.train, optimizer, scheduler, criterion, ctx, epoch)
    if ctx.cuda:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    accuracy = evaluate(stage.module, stage.val, criterion, ctx).accuracy
    return seconds, stage.setup_seconds, cpu, accuracy, ctx.precision


# ---------------------------------------------------------------- the bench


def demo_clean(folder: Path, products: int, size: int) -> Path:
    """A demo export made and cleaned in ``folder`` (when no --clean is given)."""
    from steps.clean_images import clean_images
    from steps.clean_tabular import clean_tabular
    from steps.demo_data import make_export

    log.info("making a %d-product demo export in %s", products, folder)
    make_export(folder / "raw", products=products, seed=0)
    clean_tabular(folder / "raw", folder / "clean")
    clean_images(folder / "raw", folder / "clean", size=size)
    return folder / "clean"


def compare(cfg: TrainConfig, epochs: int, plain_epochs: int, repeat: int) -> dict:
    """Ours and the plain loop, interleaved ``repeat`` times; the best run of each counts."""
    data = load_clean_data(cfg.clean, cfg.clean_size, cfg.image_size)
    train = data.split("train")
    paths, labels = data.paths(train), train["label"].tolist()
    images = len(paths)
    ours_runs, plain_runs, loads = [], [], []
    for _ in range(repeat):
        loads.append(round(os.getloadavg()[0], 2))
        ours_runs.append(run_ours(cfg, epochs))
        plain_runs.append(run_plain(cfg, paths, labels, plain_epochs))
    ours_seconds, setup_seconds, ours_cpu, _, _ = min(ours_runs)
    plain_seconds, plain_cpu = min(plain_runs)
    ours = epochs * images / ours_seconds
    plain = plain_epochs * images / plain_seconds
    cpu_ratio = (plain_cpu / (plain_epochs * images)) / (ours_cpu / (epochs * images))
    return {
        "trainable_layers": cfg.trainable_layers,
        "train_images": images,
        "load_average_before": loads,
        "epochs": epochs,
        "ours_seconds": round(ours_seconds, 2),
        "ours_cpu_seconds": round(ours_cpu, 2),
        "ours_setup_seconds": round(setup_seconds, 2),
        "ours_images_per_second": round(ours, 1),
        "ours_all_seconds": [round(run[0], 2) for run in ours_runs],
        "plain_epochs": plain_epochs,
        "plain_seconds": round(plain_seconds, 2),
        "plain_cpu_seconds": round(plain_cpu, 2),
        "plain_images_per_second": round(plain, 1),
        "plain_all_seconds": [round(run[0], 2) for run in plain_runs],
        "speedup": round(ours / plain, 2),
        "cpu_ratio": round(cpu_ratio, 2),
    }


def compare_settings(
    before: TrainConfig, after: TrainConfig, epochs: int, repeat: int, names: tuple[str, str]
) -> dict:
    """Our loop with ``before`` against ``after``, interleaved; the best run of each. Keys
    are prefixed with ``names`` (``fp32_seconds``, ``auto_seconds`` ...)."""
    images = len(load_clean_data(before.clean, before.clean_size, before.image_size).split("train"))
    old_runs, new_runs = [], []
    for _ in range(repeat):
        old_runs.append(run_ours(before, epochs))
        new_runs.append(run_ours(after, epochs))
    old, new = min(old_runs), min(new_runs)
    result = {"train_images": images, "epochs": epochs}
    for name, best, runs, cfg in (
        (names[0], old, old_runs, before),
        (names[1], new, new_runs, after),
    ):
        result |= {
            f"{name}_trainable_layers": cfg.trainable_layers,
            f"{name}_precision": best[4],
            f"{name}_seconds": round(best[0], 2),
            f"{name}_images_per_second": round(epochs * images / best[0], 1),
            f"{name}_all_seconds": [round(run[0], 2) for run in runs],
            f"{name}_val_accuracy": [round(run[3], 4) for run in runs],
        }
    return result | {"speedup": round(old[0] / new[0], 2), "cpu_ratio": round(old[2] / new[2], 2)}


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python bench/train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=Path, help="cleaned data (default: a demo export)")
    parser.add_argument("--clean-size", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="the plain DataLoader's")
    parser.add_argument("--products", type=int, default=2000, help="demo export size")
    parser.add_argument("--head-epochs", type=int, default=15)
    parser.add_argument(
        "--head-plain-epochs",
        type=int,
        default=3,
        help="the plain loop's cost per epoch is constant: fewer epochs suffice",
    )
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument(
        "--finetune-layers", default="1", help="--trainable-layers when fine-tuning"
    )
    parser.add_argument(
        "--precision-epochs", type=int, default=3, help="epochs of each precision run"
    )
    parser.add_argument(
        "--precision-image-size", type=int, default=48, help="the demo's training size"
    )
    parser.add_argument("--precision-batch-size", type=int, default=32, help="the demo's")
    parser.add_argument("--card-epochs", type=int, default=1, help="epochs of each card run")
    parser.add_argument(
        "--modes",
        default="head_only,fine_tuning,precision",
        help="which comparisons to run, separated by commas (also: card)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs; best counts")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser


def run_modes(args) -> dict:
    """Both modes (head only, fine-tuning), each our loop against the plain one."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        clean = args.clean or demo_clean(Path(tmp), args.products, args.clean_size)
        base = TrainConfig(
            clean=clean,
            arch=args.arch,
            weights="none",
            image_size=args.image_size,
            clean_size=args.clean_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        modes, runs = set(args.modes.split(",")), {}
        if "head_only" in modes:
            log.info("head only: %d epochs (plain: %d)", args.head_epochs, args.head_plain_epochs)
            runs["head_only"] = compare(
                replace(base, trainable_layers=0),
                args.head_epochs,
                args.head_plain_epochs,
                args.repeat,
            )
        if "fine_tuning" in modes:
            layers = parse_trainable_layers(args.finetune_layers)
            log.info("fine-tuning (trainable layers %d): %d epochs", layers, args.finetune_epochs)
            runs["fine_tuning"] = compare(
                replace(base, trainable_layers=layers),
                args.finetune_epochs,
                args.finetune_epochs,
                args.repeat,
            )
        if "precision" in modes:
            log.info("precision: fp32 against auto, %d epochs each", args.precision_epochs)
            demo = replace(
                base,
                trainable_layers=parse_trainable_layers("all"),
                image_size=args.precision_image_size,
                batch_size=args.precision_batch_size,
            )
            runs["precision"] = compare_settings(
                replace(demo, precision="fp32"),
                replace(demo, precision="auto"),
                args.precision_epochs,
                args.repeat,
                ("fp32", "auto"),
            )
        if "card" in modes:
            log.info("the card's command before and after: %d epoch(s) each", args.card_epochs)
            runs["card"] = compare_settings(
                replace(base, trainable_layers=1, precision="fp32"),
                replace(base, trainable_layers=parse_trainable_layers("all"), precision="auto"),
                args.card_epochs,
                args.repeat,
                ("before", "after"),
            )
    return runs


def describe(args, runs: dict, device: str) -> dict:
    """The results file's content: when, on what, with which settings, the runs, the targets."""
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "device": device,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "settings": {
            "data": "demo export" if args.clean is None else str(args.clean),
            "arch": args.arch,
            "image_size": args.image_size,
            "clean_size": args.clean_size,
            "batch_size": args.batch_size,
            "plain_num_workers": args.num_workers,
            "repeat": args.repeat,
            "precision_image_size": args.precision_image_size,
            "precision_batch_size": args.precision_batch_size,
        },
        "runs": runs,
        "targets": TARGETS,
        "met": {k: runs[k]["speedup"] >= TARGETS[k] for k in runs},
    }
    return result


def print_table(runs: dict, device: str, results: Path) -> None:
    header = f"{'mode':<12} {'new img/s':>11} {'old img/s':>12} {'speedup':>8} {'CPU ratio':>10}"
    print(f"\n{header} {'target':>7}   (old: the plain loop; for precision, ours in fp32)")
    for name, run in runs.items():
        new, old = {"precision": ("auto", "fp32"), "card": ("after", "before")}.get(
            name, ("ours", "plain")
        )
        print(
            f"{name:<12} {run[f'{new}_images_per_second']:>11.1f} "
            f"{run[f'{old}_images_per_second']:>12.1f} {run['speedup']:>7.2f}x "
            f"{run['cpu_ratio']:>9.2f}x {TARGETS[name]:>6.1f}x"
        )
    if "precision" in runs:
        run = runs["precision"]
        print(
            f"precision auto was {run['auto_precision']}; val accuracy fp32 "
            f"{run['fp32_val_accuracy']}, auto {run['auto_val_accuracy']}"
        )
    print(f"\n{device}; written to {results}")


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = run_modes(args)
    device = setup().describe()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(describe(args, runs, device), indent=2) + "\n")
    print_table(runs, device, args.results)


run = cli(main)

if __name__ == "__main__":
    run()
