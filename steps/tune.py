"""Tune the image classifier's training parameters with Optuna (MLproject entry point ``tune``).

Reads what ``train`` reads (``<clean>/images.parquet``, ``categories.json``, the cleaned JPEGs).

Writes one MLflow run, the sweep (``tune <arch> <trials> trials``): the search space and the
fixed settings as params, one nested run per trial (a full ``train`` run: its sampled params,
per-epoch ``val/loss`` and ``val/accuracy`` ..., tagged ``optuna.trial`` and
``optuna.state``), the study's summary (``best/val_loss``, ``trials_complete``,
``trials_pruned``, tag ``best_trial_run_id``), ``study/trials.csv``, ``study/best.json`` and
the plots ``study/optimization_history.png`` and ``study/param_importances.png``; and the best
trial's model registered as a new version of ``--model-name`` (never promoted: ``promote``
decides).

The search space: ``lr`` and ``weight_decay`` log-uniform between their ``--*-min`` and
``--*-max``, ``label_smoothing`` uniform in ``[0, --label-smoothing-max]``, ``batch_size`` and
``trainable_layers`` from their comma-separated choices (``trainable_layers`` not for
``simplecnn``, which trains every layer). The objective is the trial's lowest validation loss;
a trial whose validation loss after an epoch is worse than the median of earlier trials' at
that epoch is pruned (Optuna's ``MedianPruner``, after ``--prune-after`` finished trials and
the first epoch).

    mlflow run . -e tune -P trials=20 --env-manager local
    python -m steps.tune --trials 20 --arch resnet18 --image-size 64
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cli import UserError
from marketplace_models.network import SIMPLE_CNN
from registry.kinds import MODEL_NAME
from steps import runtime
from steps.train import (
    TRAINING_SETTINGS,
    TrainHooks,
    TrainOutcome,
    add_training_arguments,
    register_outcome,
    train,
    training_settings,
)
from steps.training.config import AUTO, TrainConfig
from steps.training.loop import EpochRecord
from steps.training.model import parse_trainable_layers

log = logging.getLogger(__name__)

STUDY_DIR = "study"
TRIAL_TAG = "optuna.trial"
STATE_TAG = "optuna.state"
PRUNE_FROM_EPOCH = 2  # never prune on the first epoch alone


@dataclass(frozen=True)
class TuneConfig:
    """Command-line parameters of ``steps.tune``: the fixed settings, the space, the budget."""

    clean: Path = Path("data/clean")
    arch: str = "resnet18"
    weights: str = "auto"
    image_size: int = 64
    clean_size: int | None = None
    epochs: int = 8
    patience: int = 3
    seed: int = 0
    num_workers: int = 2
    precision: str = AUTO
    trials: int = 20
    n_jobs: int = 1
    prune_after: int = 2
    lr_min: float = 1e-4
    lr_max: float = 1e-2
    weight_decay_min: float = 1e-6
    weight_decay_max: float = 1e-2
    label_smoothing_max: float = 0.2
    batch_sizes: tuple[int, ...] = (32, 64)
    trainable_layers: tuple[int, ...] = (1, 2, 5)
    register: bool = True
    model_name: str = MODEL_NAME

    def base_train_config(self) -> TrainConfig:
        """The settings every trial shares (each trial then sets the sampled ones)."""
        shared = {name: getattr(self, name) for name in TRAINING_SETTINGS}
        return TrainConfig(**{**shared, "register": False})  # the sweep registers the best


# --------------------------------------------------------------------------- arguments


def _int_choices(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(v)) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas: {text!r}"
        )
    return values


def _layer_choices(text: str) -> tuple[int, ...]:
    try:
        return tuple(parse_trainable_layers(v) for v in str(text).split(",") if v.strip())
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def get_args_parser() -> argparse.ArgumentParser:
    d = TuneConfig()
    p = runtime.ArgumentParser(
        prog="python -m steps.tune",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_arguments(p, d)
    p.add_argument("--trials", type=runtime.positive_int, default=d.trials)
    p.add_argument(
        "--n-jobs",
        type=runtime.positive_int,
        default=d.n_jobs,
        help="trials run at once, in threads sharing the cores (1: one after another)",
    )
    p.add_argument(
        "--prune-after",
        type=runtime.non_negative_int,
        default=d.prune_after,
        help="finished trials before any trial is pruned",
    )
    p.add_argument("--lr-min", type=runtime.positive_float, default=d.lr_min)
    p.add_argument("--lr-max", type=runtime.positive_float, default=d.lr_max)
    p.add_argument("--weight-decay-min", type=runtime.positive_float, default=d.weight_decay_min)
    p.add_argument("--weight-decay-max", type=runtime.positive_float, default=d.weight_decay_max)
    p.add_argument("--label-smoothing-max", type=runtime.fraction, default=d.label_smoothing_max)
    p.add_argument("--batch-sizes", type=_int_choices, default=",".join(map(str, d.batch_sizes)))
    p.add_argument(
        "--trainable-layers",
        type=_layer_choices,
        default=",".join(map(str, d.trainable_layers)),
        help="choices, as train's --trainable-layers, separated by commas",
    )
    return p


def parse_config(argv: Sequence[str] | None = None) -> TuneConfig:
    args = get_args_parser().parse_args(argv)
    for name in ("lr", "weight_decay"):
        low, high = getattr(args, f"{name}_min"), getattr(args, f"{name}_max")
        if low > high:
            flag = name.replace("_", "-")
            raise UserError(f"--{flag}-min ({low:g}) is above --{flag}-max ({high:g})")
    return TuneConfig(
        **training_settings(args),
        trials=args.trials,
        n_jobs=args.n_jobs,
        prune_after=args.prune_after,
        lr_min=args.lr_min,
        lr_max=args.lr_max,
        weight_decay_min=args.weight_decay_min,
        weight_decay_max=args.weight_decay_max,
        label_smoothing_max=args.label_smoothing_max,
        batch_sizes=args.batch_sizes,
        trainable_layers=args.trainable_layers,
    )


# ------------------------------------------------------------------------------ trials


def suggest(trial, cfg: TuneConfig) -> TrainConfig:
    """The trial's training settings: the shared ones with the sampled ones set."""
    sampled = {
        "lr": trial.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True),
        "weight_decay": trial.suggest_float(
            "weight_decay", cfg.weight_decay_min, cfg.weight_decay_max, log=True
        ),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, cfg.label_smoothing_max),
        "batch_size": trial.suggest_categorical("batch_size", list(cfg.batch_sizes)),
    }
    if cfg.arch != SIMPLE_CNN:  # simplecnn always trains every layer
        sampled["trainable_layers"] = trial.suggest_categorical(
            "trainable_layers", list(cfg.trainable_layers)
        )
    return replace(cfg.base_train_config(), **sampled)


class PruneOnValLoss:
    """The epoch callback that feeds Optuna the validation loss and prunes when it says so."""

    def __init__(self, trial) -> None:
        self.trial = trial
        self.run_id: str | None = None

    def __call__(self, record: EpochRecord, improved: bool) -> None:
        import mlflow
        import optuna

        self.run_id = mlflow.active_run().info.run_id
        self.trial.report(record.val.loss, step=record.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"val loss {record.val.loss:.4f} at epoch {record.epoch} is worse than the "
                "median of earlier trials"
            )


class Objective:
    """One trial: a nested ``train`` run; its value is the lowest validation loss."""

    def __init__(self, cfg: TuneConfig, sweep_run_id: str) -> None:
        self.cfg, self.sweep_run_id = cfg, sweep_run_id
        self.outcomes: dict[int, tuple[TrainConfig, TrainOutcome]] = {}

    def __call__(self, trial) -> float:
        import mlflow
        import optuna

        train_cfg = suggest(trial, self.cfg)
        pruner = PruneOnValLoss(trial)
        hooks = TrainHooks(
            parent_run_id=self.sweep_run_id,
            run_name=f"trial {trial.number} {self.cfg.arch}",
            on_epoch_end=pruner,
        )
        client = mlflow.MlflowClient()
        try:
            outcome = train(train_cfg, hooks)
        except optuna.TrialPruned:
            if pruner.run_id:  # the run ended FAILED with the exception: it was stopped
                client.set_terminated(pruner.run_id, "KILLED")
                client.set_tag(pruner.run_id, TRIAL_TAG, trial.number)
                client.set_tag(pruner.run_id, STATE_TAG, "PRUNED")
            raise
        client.set_tag(outcome.run_id, TRIAL_TAG, trial.number)
        client.set_tag(outcome.run_id, STATE_TAG, "COMPLETE")
        trial.set_user_attr("run_id", outcome.run_id)
        self.outcomes[trial.number] = (train_cfg, outcome)
        return min(record.val.loss for record in outcome.records)


# ------------------------------------------------------------------------------ the sweep


def sweep_params(cfg: TuneConfig) -> dict[str, object]:
    """The sweep run's params: the fixed settings, the space and the budget."""
    params = {k: v for k, v in vars(cfg).items() if k not in ("batch_sizes", "trainable_layers")}
    params["clean"] = str(cfg.clean)
    params["batch_sizes"] = ",".join(map(str, cfg.batch_sizes))
    params["trainable_layers"] = ",".join(map(str, cfg.trainable_layers))
    return params


def log_study(study, folder: Path) -> None:
    """The trials table, the best trial and the two plots, as the sweep run's artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as plots

    table = study.trials_dataframe()
    table.to_csv(folder / "trials.csv", index=False)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    best = {"number": study.best_trial.number, "value": study.best_value} if complete else {}
    if complete:
        best.update(params=study.best_params, run_id=study.best_trial.user_attrs.get("run_id"))
    (folder / "best.json").write_text(json.dumps(best, indent=2))
    with warnings.catch_warnings():  # optuna's "experimental" notice on its matplotlib plots
        warnings.simplefilter("ignore")
        figures = {"optimization_history.png": plots.plot_optimization_history(study)}
        if len(complete) >= 2:
            figures["param_importances.png"] = plots.plot_param_importances(study)
        else:
            (folder / "param_importances.txt").write_text(
                f"{len(complete)} trial(s) completed: importances need at least two\n"
            )
    for name, axes in figures.items():
        figure = axes.figure
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
    mlflow.log_artifacts(str(folder), STUDY_DIR)


def tune(cfg: TuneConfig) -> tuple[object, TrainOutcome | None]:
    """Run the study under one sweep run; the study and the best trial's outcome."""
    import mlflow
    import optuna

    name = f"tune {cfg.arch} {cfg.trials} trials"
    with runtime.start_run(name) as sweep, tempfile.TemporaryDirectory(prefix="tune-") as tmp:
        runtime.log_params(sweep_params(cfg))
        study = optuna.create_study(
            study_name=name,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=cfg.prune_after, n_warmup_steps=PRUNE_FROM_EPOCH
            ),
        )
        objective = Objective(cfg, sweep.info.run_id)
        study.optimize(objective, n_trials=cfg.trials, n_jobs=cfg.n_jobs, catch=(UserError,))
        states = [t.state for t in study.trials]
        count = {s.name: sum(1 for x in states if x == s) for s in optuna.trial.TrialState}
        mlflow.log_metrics({"trials_complete": count["COMPLETE"], "trials_pruned": count["PRUNED"]})
        log_study(study, Path(tmp))
        if not objective.outcomes:
            raise UserError(f"none of the {cfg.trials} trials completed: see the trial runs")
        best = study.best_trial
        train_cfg, outcome = objective.outcomes[best.number]
        mlflow.log_metric("best/val_loss", best.value)
        mlflow.set_tag("best_trial_run_id", outcome.run_id)
        log.info("best trial %d (run %s): %s", best.number, outcome.run_id, best.params)
        if cfg.register:
            register_outcome(replace(train_cfg, register=True), outcome)
            mlflow.MlflowClient().set_model_version_tag(
                cfg.model_name, outcome.model_version, "sweep_run_id", sweep.info.run_id
            )
        return study, outcome


@runtime.cli
def main(argv: Sequence[str] | None = None) -> None:
    tune(parse_config(argv))


if __name__ == "__main__":
    main()
