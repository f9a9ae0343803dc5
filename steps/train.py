"""Train the image classifier, a ResNet or the simple CNN (MLproject entry point ``train``).

Reads ``<clean>/images.parquet``, ``<clean>/categories.json`` and the cleaned JPEGs in
``<clean>/images/<clean_size>/`` (from clean_tabular and clean_images).

Writes one MLflow run named after what it trains (``train resnet18 e15 224px``): every
parameter (and ``weights_used``), the inputs (the images table per split), per-epoch metrics
with ``step=epoch`` (``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``,
``lr``, ``epoch_seconds``, ``images_per_second``), system metrics (``system/...``: CPU,
memory, GPU when there is one), ``checkpoints/last.pt`` and ``checkpoints/best.pt``,
``best_epoch``, the test metrics (``test/accuracy`` ..., tied to the test split's dataset)
and ``evaluation/`` artifacts, the pyfunc model (named ``--model-name``), and with
``--register true`` a new version of the registered model, described (never its
``production`` alias), with its int8 export when that passes the accuracy gate
(:mod:`registry.quantize`: ``int8/...`` metrics and artifact, the ``int8_onnx`` tag).

    python -m steps.train --epochs 15
    mlflow run . -e train -P epochs=15 --env-manager local
    torchrun --nproc_per_node=2 -m steps.train --epochs 15     # DDP, rank 0 logs
    python -m steps.train --resume <run id>                    # continue an interrupted run

``--resume`` continues the interrupted run itself (same run id, metric history continued
at the next epoch) with the parameters stored in its checkpoint: the model's and the
data's (the run's own clean folder, clean size, image size, seed; the command line's
``--clean`` is not used). When the cleaned data's digest differs from the run's, the
resume stops with an error naming the files that changed, unless ``--allow-data-change
true``: then the run is tagged ``resumed_data_digest`` (its ``data_digest`` stays the one
it started on). A resume also completes what a kill left half-done: ``best.pt`` is
uploaded again when the kill fell between the two checkpoint uploads, and a version this
run already registered is completed (tags, description), never registered twice. Under
``mlflow run`` the project's new run is tagged ``resumed_from`` and stays empty; the
training goes on in the original run.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clean_data import CATEGORIES_FILE, DATA_DIGEST_TAG, IMAGES_FILE, data_digest
from cli import UserError
from marketplace_models.image import log_classifier
from marketplace_models.network import ARCHS, SIMPLE_CNN, ClassifierConfig
from registry.descriptions import model_description, registration_note
from registry.promotion import DEFAULT_METRIC
from registry.register import register_described, version_of_run
from steps import runtime
from steps.evaluation import log_classification_report
from steps.training import checkpoint as ckpt
from steps.training.config import ALL_LAYERS, AUTO, PRECISIONS, TrainConfig
from steps.training.data import CleanData, decode_images, labels_of, load_clean_data
from steps.training.distributed import (
    Context,
    barrier,
    broadcast_module,
    broadcast_object,
    setup,
    teardown,
)
from steps.training.interrupt import Interrupted, StopSignals
from steps.training.loop import (
    EarlyStopping,
    EpochCallback,
    EpochRecord,
    build_optimizer,
    build_scheduler,
    fit,
    predict_logits,
    softmax_numpy,
)
from steps.training.model import (
    auto_trainable_layers,
    build_model,
    check_arch,
    fit_to_arch,
    freeze,
    parse_trainable_layers,
    trainable_parameters,
)
from steps.training.stages import build_stage, eval_source

log = logging.getLogger(__name__)

CLEAN_SIZE_USED = "clean_size_used"
EVALUATION_DIR = "evaluation"
CLEAN_PATH = "clean_path"  # the checkpoint's absolute clean folder, for a resume anywhere
DATA_FILES = "data_files"  # the checkpoint's digest of each file data_digest covers
RESUMED_DATA_DIGEST = "resumed_data_digest"


# --------------------------------------------------------------------------- arguments


# The settings every training takes, searched by no sweep: train and tune both declare them
# with add_training_arguments and read them with training_settings, so one added here
# reaches both (TuneConfig needs a field of the same name).
TRAINING_SETTINGS = (
    "clean",
    "epochs",
    "arch",
    "weights",
    "image_size",
    "clean_size",
    "patience",
    "seed",
    "num_workers",
    "precision",
    "register",
    "model_name",
)


def add_training_arguments(p: argparse.ArgumentParser, d: Any) -> None:
    """Add the TRAINING_SETTINGS options to ``p``, their defaults read from ``d``'s fields."""
    p.add_argument("--clean", type=Path, default=d.clean, help="cleaned data folder")
    p.add_argument(
        "--epochs", type=runtime.positive_int, default=d.epochs, help="epochs (tune: per trial)"
    )
    p.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHS)}")
    p.add_argument(
        "--weights",
        default=d.weights,
        help="auto | imagenet | none | path or URI of a state dict (runs:/, models:/, s3://)",
    )
    p.add_argument("--image-size", type=runtime.positive_int, default=d.image_size)
    p.add_argument(
        "--clean-size",
        type=runtime.auto_or_positive_int,
        default=AUTO if d.clean_size is None else d.clean_size,
        help="which images/<size> folder of clean_images to read; auto: the smallest at least "
        "8/7 of --image-size, else the largest",
    )
    p.add_argument(
        "--patience",
        type=runtime.non_negative_int,
        default=d.patience,
        help="early stopping: epochs without a better val loss (0 = never stop early)",
    )
    p.add_argument("--seed", type=runtime.non_negative_int, default=d.seed)
    p.add_argument(
        "--num-workers",
        type=runtime.non_negative_int,
        default=d.num_workers,
        help="threads decoding the cleaned JPEGs into memory (0 = all cores)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="autocast dtype; auto: bf16 on a GPU or a CPU with bf16 instructions, else fp32",
    )
    p.add_argument("--register", type=runtime.str_to_bool, default=d.register)
    p.add_argument("--model-name", default=d.model_name)


def training_settings(args: argparse.Namespace) -> dict[str, object]:
    """The TRAINING_SETTINGS of parsed arguments, checked as every training needs them."""
    if args.image_size < 16:
        raise UserError(f"--image-size must be at least 16 pixels, got {args.image_size}")
    settings = {name: getattr(args, name) for name in TRAINING_SETTINGS}
    settings["arch"] = check_arch(args.arch)
    return settings


def get_args_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = runtime.ArgumentParser(
        prog="python -m steps.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_arguments(p, d)
    p.add_argument("--batch-size", type=runtime.positive_int, default=d.batch_size)
    p.add_argument("--lr", type=runtime.positive_float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--trainable-layers",
        default=AUTO if d.trainable_layers is None else str(d.trainable_layers),
        help="auto (the default) = layer4 and the head over pretrained weights, everything "
        "over random ones; 0 = the new head only, 1 = also layer4, ... 5 or all = everything",
    )
    p.add_argument("--label-smoothing", type=runtime.fraction, default=d.label_smoothing)
    p.add_argument(
        "--resume",
        type=runtime.optional_text,
        default="",
        help="run id of an interrupted train run (none: start a new run); it continues on "
        "the run's own data and settings",
    )
    p.add_argument(
        "--allow-data-change",
        type=runtime.str_to_bool,
        default=d.allow_data_change,
        help="with --resume: continue even though the cleaned data changed since the run "
        "began (recorded on the run as resumed_data_digest)",
    )
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    args = get_args_parser().parse_args(argv)
    return TrainConfig(
        **training_settings(args),
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        trainable_layers=parse_trainable_layers(args.trainable_layers),
        label_smoothing=args.label_smoothing,
        resume=args.resume.strip(),
        allow_data_change=args.allow_data_change,
    )


# ------------------------------------------------------------------------------ the run


@dataclass
class TrainOutcome:
    """What a finished training run produced (rank 0 only)."""

    run_id: str
    records: list[EpochRecord]
    best_epoch: int
    weights_used: str
    trainable_layers_used: int
    test_metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    model_version: str | None = None


def run_name(cfg: TrainConfig) -> str:
    """What the runs table shows: ``train resnet18 e15 224px``."""
    return f"train {cfg.arch} e{cfg.epochs} {cfg.image_size}px"


def run_description(cfg: TrainConfig) -> str:
    """The run's description (its page's first lines): the settings that tell runs apart."""
    layers = cfg.trainable_layers
    trained = "all layers" if layers >= ALL_LAYERS else f"trainable layers {layers}"
    return (
        f"{cfg.arch} at {cfg.image_size} px (clean images {cfg.clean_size} px), up to "
        f"{cfg.epochs} epochs (patience {cfg.patience}), batch {cfg.batch_size}, lr {cfg.lr:g}, "
        f"{trained}, weights {cfg.weights}, seed {cfg.seed}."
    )


@dataclass(frozen=True)
class TrainHooks:
    """What a caller that drives training (``steps.tune``) adds to a run: a parent run to
    nest it under, its name, and a callback after each epoch's logging (it may raise to end
    the run, e.g. ``optuna.TrialPruned``)."""

    parent_run_id: str | None = None
    run_name: str | None = None
    on_epoch_end: EpochCallback | None = None


def _open_run(cfg: TrainConfig, ctx: Context, hooks: TrainHooks):
    """Rank 0's MLflow run (system metrics on): a new one (nested under
    ``hooks.parent_run_id`` when given), or the interrupted run when resuming."""
    if not ctx.is_main:
        return nullcontext()
    opened = {"log_system_metrics": True, "description": run_description(cfg)}
    if hooks.parent_run_id:
        opened.update(nested=True, parent_run_id=hooks.parent_run_id)
    if not cfg.resume:
        return runtime.start_run(hooks.run_name or run_name(cfg), **opened)
    project_run = os.environ.get("MLFLOW_RUN_ID")
    active = runtime.start_run(run_name(cfg), run_id=cfg.resume, **opened)
    if project_run and project_run != cfg.resume:
        import mlflow

        client = mlflow.tracking.MlflowClient()
        client.set_tag(project_run, "resumed_from", cfg.resume)
        client.set_tag(cfg.resume, "resumed_by", project_run)
        log.info("training continues in run %s (this project run only records that)", cfg.resume)
    return active


@contextmanager
def _killed_on_signal(signals: StopSignals, ctx: Context, run) -> Iterator[None]:
    """End rank 0's run as KILLED when SIGTERM or SIGINT stopped the block.

    The signal may surface as :class:`Interrupted` or, under DDP, as a failed collective
    once a peer has stopped: what counts is that a signal came. Other errors pass as they
    are (the run then ends FAILED).
    """
    try:
        yield
    except BaseException:
        signum = signals.quiet()
        if signum is None:
            raise
        if ctx.is_main:
            import mlflow

            mlflow.end_run("KILLED")
            log.warning(
                "stopped by %s: run %s is KILLED; continue it with "
                "`python -m steps.train --resume %s`",
                signal.Signals(signum).name,
                run.info.run_id,
                run.info.run_id,
            )
        raise Interrupted(signum) from None


def split_datasets(data: CleanData) -> dict:
    """The images table of each non-empty split as an ``mlflow.data`` dataset."""
    import mlflow

    source = str((data.folder / "images.parquet").resolve())
    datasets = {}
    for split in ("train", "val", "test"):
        frame = data.split(split)
        if frame.empty:
            continue
        with warnings.catch_warnings():  # MLflow's hints about source types and int columns
            warnings.simplefilter("ignore", UserWarning)
            datasets[split] = mlflow.data.from_pandas(
                frame, source=source, name=f"images-{split}", targets="label"
            )
    return datasets


def _log_inputs(datasets: dict) -> None:
    import mlflow

    with warnings.catch_warnings():  # MLflow's hint about the integer columns
        warnings.simplefilter("ignore", UserWarning)
        for split, dataset in datasets.items():
            mlflow.log_input(dataset, context=split)


def _prepare(cfg: TrainConfig, ctx: Context):
    """Checkpoint (when resuming), config, data and the network on its device.

    The config that comes back has ``clean_size`` resolved (``auto`` becomes a number).
    """
    checkpoint = None
    if cfg.resume:
        fetched: dict | str | None = None
        if ctx.is_main:
            import mlflow

            mlflow.set_tracking_uri(runtime.tracking_uri())
            try:
                fetched = ckpt.fetch_checkpoint(cfg.resume)
                ckpt.repair_best(cfg.resume, fetched)
            except UserError as exc:
                fetched = str(exc)  # every rank stops with it, none waits for a checkpoint
        # Every rank resumes from rank 0's copy of the checkpoint: the same epoch and weights.
        fetched = broadcast_object(ctx, fetched)
        if isinstance(fetched, str):
            raise UserError(fetched)
        checkpoint = fetched
        cfg = _resumed_config(cfg, checkpoint)
    data = load_clean_data(cfg.clean, cfg.clean_size, cfg.image_size)
    cfg = replace(cfg, clean_size=data.size)
    torch.manual_seed(cfg.seed)
    if checkpoint is None:
        net, weights_used = build_model(cfg.arch, len(data.categories), cfg.weights)
    else:
        net, _ = build_model(cfg.arch, len(data.categories), "none")
        net.load_state_dict(checkpoint["model"])
        weights_used = str(checkpoint.get("weights_used", cfg.weights))
    if cfg.trainable_layers is None:
        layers, reason = auto_trainable_layers(weights_used)
        log.info("trainable layers auto: %s", reason)
        cfg = replace(cfg, trainable_layers=layers)
    freeze(net, cfg.trainable_layers)
    net.to(ctx.device)
    broadcast_module(ctx, net)
    return cfg, data, net, weights_used, checkpoint


def _resumed_config(cfg: TrainConfig, checkpoint: dict) -> TrainConfig:
    """``cfg`` with the interrupted run's own settings and clean folder."""
    given = cfg.clean
    cfg = cfg.resumed_with(checkpoint["args"], checkpoint.get(CLEAN_PATH))
    if Path(given).resolve() != Path(cfg.clean).resolve():
        log.info("resuming on the run's own clean data %s (not --clean %s)", cfg.clean, given)
    if not Path(cfg.clean).is_dir():
        raise UserError(
            f"run {cfg.resume} trained on {cfg.clean}, which is not there any more: restore "
            "that folder to resume, or start a new run"
        )
    log.info("resuming run %s after epoch %d", cfg.resume, checkpoint["epoch"])
    return cfg


def data_files(clean: Path) -> dict[str, str]:
    """A short digest of each file that :func:`clean_data.data_digest` covers."""
    return {
        name: hashlib.sha256((Path(clean) / name).read_bytes()).hexdigest()[:16]
        for name in (IMAGES_FILE, CATEGORIES_FILE)
    }


def check_resumed_data(cfg: TrainConfig, checkpoint: dict, digest: str) -> dict[str, str]:
    """The run tags a resume adds for its data; raises :class:`UserError` when the cleaned
    data differs from the run's and ``--allow-data-change`` is not given."""
    started = checkpoint.get(DATA_DIGEST_TAG)
    if started is None:
        log.warning("run %s recorded no data digest: the data cannot be checked", cfg.resume)
        return {}
    if started == digest:
        return {}
    before = checkpoint.get(DATA_FILES) or {}
    now = data_files(cfg.clean)
    changed = [name for name in now if before.get(name) != now[name]] if before else list(now)
    what = (
        f"{', '.join(changed)} changed" if before else f"one of {', '.join(now)} changed"
    ) + f" (data digest {started} when the run began, {digest} now)"
    if not cfg.allow_data_change:
        raise UserError(
            f"the cleaned data in {cfg.clean} is not what run {cfg.resume} trained on: {what}; "
            "restore it, start a new run, or pass --allow-data-change true to continue on it"
        )
    log.warning("resuming run %s on changed data: %s", cfg.resume, what)
    return {RESUMED_DATA_DIGEST: digest}


class EpochLogger:
    """Rank 0's end-of-epoch work: metrics with ``step=epoch`` and the checkpoints."""

    def __init__(
        self, cfg, net, optimizer, scheduler, scaler, stopper, extra, folder: Path, signals
    ):
        self.cfg, self.net, self.optimizer = cfg, net, optimizer
        self.scheduler, self.scaler, self.stopper = scheduler, scaler, stopper
        self.extra, self.folder, self.signals = extra, folder, signals
        self.best_path: Path | None = None

    def __call__(self, record: EpochRecord, improved: bool) -> None:
        with self.signals.critical():  # a SIGTERM now waits for the checkpoint to be logged
            self._log(record, improved)

    def _log(self, record: EpochRecord, improved: bool) -> None:
        import mlflow

        mlflow.log_metrics(record.metrics(), step=record.epoch)
        state = ckpt.make_checkpoint(
            self.net,
            self.optimizer,
            self.scheduler,
            self.scaler,
            epoch=record.epoch,
            args=self.cfg.as_params(),
            stopper=self.stopper.state_dict(),
            extra=self.extra,
        )
        ckpt.log_checkpoint(ckpt.save_checkpoint(state, self.folder / ckpt.LAST))
        if improved:
            self.best_path = ckpt.save_checkpoint(state, self.folder / ckpt.BEST)
            ckpt.log_checkpoint(self.best_path)


def _load_best(net: nn.Module, epoch_logger: EpochLogger, run_id: str, best_epoch: int) -> int:
    """Put the best epoch's weights into ``net`` (downloaded when an earlier session saved
    them); returns their epoch, which is what the run and the version record."""
    if epoch_logger.best_path is not None:
        state = ckpt.load_checkpoint(epoch_logger.best_path)
    else:
        state = ckpt.fetch_checkpoint(run_id, ckpt.BEST)
    net.load_state_dict(state["model"])
    if int(state["epoch"]) != best_epoch:
        log.warning("best.pt holds epoch %s, not %d: recording its own", state["epoch"], best_epoch)
    return int(state["epoch"])


def _predict_test(net: nn.Module, data: CleanData, cfg: TrainConfig, ctx: Context):
    """Class probabilities ``(N, C)`` and labels of the test split through the eval preset
    (rank 0), or None when the split is empty. In fp32 whatever the training's precision:
    the test figures are those of the model as it is logged and served."""
    frame = data.split("test")
    if frame.empty:
        log.warning("the test split is empty: no test metrics")
        return None
    images = decode_images(data.paths(frame), cfg.image_size, cfg.num_workers)
    labels = labels_of(frame)
    fp32 = replace(ctx, amp_dtype=None)
    logits = predict_logits(net, eval_source(images, labels, cfg.batch_size, fp32), fp32)
    return softmax_numpy(logits), labels.numpy()


def _log_test_report(scored, data: CleanData, model_id: str | None) -> dict[str, float]:
    """Log the test metrics (tied to the test dataset and the logged model) and report."""
    if scored is None:
        return {}
    probabilities, labels = scored
    metrics = log_classification_report(
        probabilities,
        labels,
        data.categories,
        artifact_dir=EVALUATION_DIR,
        dataset=split_datasets(data).get("test"),
        model_id=model_id,
    )
    log.info(
        "test: accuracy %.3f, top-3 %.3f, macro-F1 %.3f on %d images",
        metrics["test/accuracy"],
        metrics["test/top3_accuracy"],
        metrics["test/macro_f1"],
        len(labels),
    )
    return metrics


def _log_model(net, data, cfg, outcome: TrainOutcome):
    """Log the pyfunc model (named ``--model-name``); MLflow's ``ModelInfo``."""
    frame = data.split("test") if len(data.split("test")) else data.split("val")
    example, *parity = [path.read_bytes() for path in data.paths(frame.head(4))]
    config = ClassifierConfig(arch=cfg.arch, categories=data.categories, image_size=cfg.image_size)
    info = log_classifier(
        net.cpu().eval(),
        config,
        example_image=example,
        parity_images=parity,
        name=cfg.model_name,
    )
    outcome.model_uri = info.model_uri
    return info


def _logged_model(net, data, cfg: TrainConfig, outcome: TrainOutcome) -> str | None:
    """The logged model's id: the one a version of this run already registered (a resume
    after a kill during registration), else a newly logged one."""
    registered = version_of_run(cfg.model_name, outcome.run_id) if cfg.register else None
    if registered is not None:
        log.info("run %s registered version %s: completing it", outcome.run_id, registered.version)
        outcome.model_uri = registered.source  # models:/<model id> of the logged model
        return registered.model_id or registered.source.removeprefix("models:/")
    return _log_model(net, data, cfg, outcome).model_id


def network_text(arch: str) -> str:
    """What the registered model's description calls the network."""
    if arch == SIMPLE_CNN:
        return "a small convolutional network trained from scratch"
    return "a ResNet fine-tuned"


def register_outcome(cfg: TrainConfig, outcome: TrainOutcome) -> None:
    """Register a finished run's logged model as a new version (what ``--register true``
    does at the end of training; ``steps.tune`` calls it for the best trial)."""
    data = load_clean_data(cfg.clean, cfg.clean_size, cfg.image_size)
    used = replace(cfg, clean_size=data.size, trainable_layers=outcome.trainable_layers_used)
    _register(used, data, outcome, data_digest(cfg.clean))


def _register(cfg: TrainConfig, data: CleanData, outcome: TrainOutcome, digest: str) -> None:
    """A new version of ``--model-name`` with its test metrics as tags, described."""
    tags = {**outcome.test_metrics, DATA_DIGEST_TAG: digest, "arch": cfg.arch}
    tags.update({"image_size": cfg.image_size, "best_epoch": outcome.best_epoch})
    model_text = model_description(
        what=f"Classifies a Marketplace listing's photo into one of its "
        f"{len(data.categories)} root categories ({network_text(cfg.arch)} in PyTorch; "
        f"categories: {', '.join(data.categories)}).",
        input_text="a column `image` of JPEG or PNG bytes (base64 text over REST); the "
        "model resizes and pads each photo itself, as training did.",
        output_text="`category`, `probability` and `probabilities` per photo; with "
        '`params={"embedding": true}` also the `embedding` that search uses.',
        metric=DEFAULT_METRIC,
    )
    note = registration_note(
        summary=f"**{cfg.arch}** at {cfg.image_size} px",
        run_id=outcome.run_id,
        run_name=run_name(cfg),
        data_digest=digest,
        metrics=outcome.test_metrics,
        details=[
            f"Best epoch {outcome.best_epoch} of {len(outcome.records) or cfg.epochs} run "
            f"(up to {cfg.epochs}); weights {outcome.weights_used}, lr {cfg.lr:g}, "
            f"batch {cfg.batch_size}, trainable layers "
            f"{'all' if cfg.trainable_layers >= ALL_LAYERS else cfg.trainable_layers}."
        ],
    )
    version = register_described(
        outcome.model_uri,
        model_name=cfg.model_name,
        tags=tags,
        model_text=model_text,
        version_text=note,
    )
    outcome.model_version = str(version.version)
    log.info("registered %s version %s", cfg.model_name, version.version)
    _add_int8(cfg, outcome.model_version)


def _add_int8(cfg: TrainConfig, version: str) -> None:
    """The int8 export of the new version, behind the accuracy gate (registry.quantize)."""
    import mlflow

    from registry.quantize import quantize_version

    client = mlflow.MlflowClient()
    try:
        report = quantize_version(client, cfg.model_name, version, Path(cfg.clean))
    except Exception as exc:  # the fp32 version stays registered and served as before
        log.warning("no int8 export for version %s: %s: %s", version, type(exc).__name__, exc)
        return
    log.info("int8 export of version %s: %s", version, report.note())


def train(cfg: TrainConfig, hooks: TrainHooks | None = None) -> TrainOutcome | None:
    """Train, evaluate and register; returns the outcome on rank 0, None on other ranks.

    SIGTERM or SIGINT ends the run as KILLED (after the epoch's checkpoint when one is being
    written) and raises :class:`Interrupted`; ``--resume`` continues the run.
    """
    ctx = setup(cfg.precision)
    try:
        if ctx.is_main:
            runtime.check_tracking_server()
        with StopSignals() as signals:
            return _train(cfg, ctx, signals, hooks or TrainHooks())
    finally:
        teardown(ctx)


def _epoch_callbacks(*callbacks: EpochCallback | None) -> EpochCallback | None:
    """One callback calling each given one in order (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None

    def each(record: EpochRecord, improved: bool) -> None:
        for callback in given:
            callback(record, improved)

    return each


def _run_params(
    cfg: TrainConfig,
    ctx: Context,
    asked_for: dict[str, Any],
    arch_note: str | None,
    weights_used: str,
) -> dict[str, Any]:
    """The run's params: the settings as asked (``auto`` where auto), what was used for
    each auto setting (the precision included), and why. Under ``mlflow run`` the params
    as given are already logged, so an asked value is never replaced by the one used."""
    params = {**cfg.as_params(), "clean_size": asked_for["clean_size"]}
    params.update({CLEAN_SIZE_USED: cfg.clean_size, "weights_used": weights_used})
    params.update(precision_used=ctx.precision, precision_reason=ctx.precision_reason)
    if arch_note:
        params.update(arch_note=arch_note, trainable_layers_used=cfg.trainable_layers)
    elif asked_for["trainable_layers"] is None:
        params.update(
            trainable_layers=AUTO,
            trainable_layers_used=cfg.trainable_layers,
            trainable_layers_reason=auto_trainable_layers(weights_used)[1],
        )
    return params


def _train(
    cfg: TrainConfig, ctx: Context, signals: StopSignals, hooks: TrainHooks
) -> TrainOutcome | None:
    asked = AUTO if cfg.clean_size is None else cfg.clean_size
    layers_asked = cfg.trainable_layers
    cfg, data, net, weights_used, checkpoint = _prepare(fit_to_arch(cfg)[0], ctx)
    cfg, arch_note = fit_to_arch(cfg)  # a resume's arch is the checkpoint's
    digest = data_digest(cfg.clean)
    resume_tags = {} if checkpoint is None else check_resumed_data(cfg, checkpoint, digest)
    if checkpoint is not None and checkpoint.get(DATA_DIGEST_TAG):
        digest = checkpoint[DATA_DIGEST_TAG]  # the run's data_digest stays what it began on
    log.info("training %s on %s, weights %s", cfg.arch, ctx.describe(), weights_used)
    with (
        _open_run(cfg, ctx, hooks) as run,
        _killed_on_signal(signals, ctx, run),
        tempfile.TemporaryDirectory(prefix="train-") as tmp,
    ):
        if ctx.is_main:
            import mlflow

            asked_for = {"clean_size": asked, "trainable_layers": layers_asked}
            runtime.log_params(_run_params(cfg, ctx, asked_for, arch_note, weights_used))
            mlflow.set_tags({DATA_DIGEST_TAG: digest, "device": str(ctx.device), **resume_tags})
            mlflow.set_tags({"world_size": ctx.world_size})
            if checkpoint is None:
                _log_inputs(split_datasets(data))
        stage = build_stage(net, data, cfg, ctx)
        optimizer = build_optimizer(trainable_parameters(net), cfg.lr, cfg.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.epochs * len(stage.train))
        scaler = ctx.grad_scaler()
        stopper = EarlyStopping(cfg.patience)
        first_epoch = 1
        if checkpoint is not None:
            ckpt.restore(checkpoint, net, optimizer, scheduler, scaler)
            stopper.load_state_dict(checkpoint["early_stopping"])
            first_epoch = int(checkpoint["epoch"]) + 1
        extra = {
            "weights_used": weights_used,
            DATA_DIGEST_TAG: digest,
            CLEAN_PATH: str(Path(cfg.clean).resolve()),
            DATA_FILES: (checkpoint or {}).get(DATA_FILES) or data_files(cfg.clean),
        }
        epoch_logger = EpochLogger(
            cfg, net, optimizer, scheduler, scaler, stopper, extra, Path(tmp), signals
        )
        if ctx.is_main:
            mlflow.log_metric("setup_seconds", stage.setup_seconds, step=first_epoch - 1)
        records = fit(
            stage,
            optimizer,
            scheduler,
            torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            stopper,
            ctx,
            first_epoch=first_epoch,
            epochs=cfg.epochs,
            scaler=scaler,
            on_epoch_end=_epoch_callbacks(epoch_logger, hooks.on_epoch_end)
            if ctx.is_main
            else None,
        )
        barrier(ctx)
        if not ctx.is_main:
            return None
        run_id = run.info.run_id
        best_epoch = _load_best(net, epoch_logger, run_id, stopper.best_epoch)
        outcome = TrainOutcome(run_id, records, best_epoch, weights_used, cfg.trainable_layers)
        mlflow.log_metric("best_epoch", best_epoch)
        scored = _predict_test(net, data, cfg, ctx)
        model_id = _logged_model(net, data, cfg, outcome)
        outcome.test_metrics = _log_test_report(scored, data, model_id)
        if cfg.register:
            _register(cfg, data, outcome, digest)
        return outcome


@runtime.cli
def main(argv: Sequence[str] | None = None) -> None:
    train(parse_config(argv))


if __name__ == "__main__":
    main()
