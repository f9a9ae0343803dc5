"""The tune entry point: an Optuna study whose trials are nested train runs."""

from __future__ import annotations

import mlflow
import optuna
import pytest

from cli import UserError
from steps.training.loop import EpochRecord, EpochResult
from steps.tune import PRUNE_FROM_EPOCH, PruneOnValLoss, parse_config
from tests.helpers.mlflow_run import mlflow_run, project_env
from tests.helpers.training import SIZE, make_tiny_clean, subprocess_env


def record(epoch: int, val_loss: float) -> EpochRecord:
    result = EpochResult(loss=val_loss, accuracy=0.5, images=8, seconds=0.1)
    return EpochRecord(epoch, result, result, 0.1)


def test_a_trial_worse_than_the_median_is_pruned_from_its_second_epoch(tracking):
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=PRUNE_FROM_EPOCH)
    )
    good = study.ask()
    for epoch in (1, 2, 3):
        good.report(0.5, step=epoch)
    study.tell(good, 0.5)

    bad = study.ask()
    callback = PruneOnValLoss(bad)
    with mlflow.start_run() as run:
        callback(record(1, 9.0), True)  # the first epoch is never pruned
        with pytest.raises(optuna.TrialPruned, match="epoch 2"):
            callback(record(2, 9.0), False)
    assert callback.run_id == run.info.run_id


def test_train_and_tune_take_the_same_training_settings():
    """An option added to the shared settings is a flag of both, and reaches every trial."""
    from steps import train, tune

    def flags(parser) -> set[str]:
        return {option for action in parser._actions for option in action.option_strings}

    shared = {f"--{name.replace('_', '-')}" for name in train.TRAINING_SETTINGS}
    assert shared <= flags(train.get_args_parser()) & flags(tune.get_args_parser())
    argv = ["--clean", "elsewhere", "--arch", "simplecnn", "--image-size", "48"]
    argv += ["--clean-size", "64", "--epochs", "3", "--patience", "1", "--seed", "7"]
    argv += ["--num-workers", "0", "--weights", "none", "--model-name", "m"]
    trial = parse_config(argv).base_train_config()
    trained = train.parse_config([*argv, "--register", "false"])
    assert {name: getattr(trial, name) for name in train.TRAINING_SETTINGS} == {
        name: getattr(trained, name) for name in train.TRAINING_SETTINGS
    }
    with pytest.raises(UserError, match="--image-size must be at least 16"):
        parse_config(["--image-size", "8"])


def test_the_space_is_checked():
    with pytest.raises(UserError, match="--lr-min"):
        parse_config(["--lr-min", "0.1", "--lr-max", "0.01"])
    assert parse_config(["--trainable-layers", "0,all"]).trainable_layers == (0, 5)
    with pytest.raises(UserError, match="--batch-sizes"):
        parse_config(["--batch-sizes", "0,8"])


@pytest.mark.slow
def test_tune_leaves_a_sweep_with_nested_trials_and_registers_the_best(tracking, tmp_path):
    clean = make_tiny_clean(tmp_path / "clean")
    params = {
        "clean": clean,
        "arch": "simplecnn",
        "image_size": SIZE,
        "clean_size": SIZE,
        "epochs": 2,
        "trials": 3,
        "batch_sizes": "8,16",
        "num_workers": 1,
    }
    env = project_env(subprocess_env(), tracking=tracking)
    mlflow_run("tune", params, cwd=tmp_path, env=env, experiment="tests", timeout=1800)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    [sweep] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sweep.info.status == "FINISHED" and sweep.info.run_name == "tune simplecnn 3 trials"
    assert len(trials) == len(runs) - 1 == 3
    assert {r.data.params["trials"] for r in [sweep]} == {"3"}
    assert sweep.data.params["n_jobs"] == "1"

    states = {r.data.tags["optuna.state"] for r in trials}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    assert sweep.data.metrics["trials_complete"] + sweep.data.metrics["trials_pruned"] == 3
    sampled = {(r.data.params["lr"], r.data.params["batch_size"]) for r in trials}
    assert len(sampled) == 3  # each trial its own settings
    for trial in trials:
        assert sorted(int(t) for t in [trial.data.tags["optuna.trial"]]) in ([0], [1], [2])
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val/loss")]
        assert steps == [1, 2]  # per-epoch validation metrics, a pruned trial's too
        assert client.get_metric_history(trial.info.run_id, "val/accuracy")

    artifacts = {a.path for a in client.list_artifacts(sweep.info.run_id, "study")}
    assert {
        "study/trials.csv",
        "study/best.json",
        "study/optimization_history.png",
        "study/param_importances.png",
    } <= artifacts

    best_run_id = sweep.data.tags["best_trial_run_id"]
    best = client.get_run(best_run_id)
    assert best.data.tags["optuna.state"] == "COMPLETE"
    assert sweep.data.metrics["best/val_loss"] == pytest.approx(
        min(m.value for m in client.get_metric_history(best_run_id, "val/loss"))
    )
    [version] = client.search_model_versions("name = 'marketplace-classifier'")
    assert version.run_id == best_run_id
    assert version.tags["sweep_run_id"] == sweep.info.run_id
    assert "test/accuracy" in version.tags
    assert client.get_registered_model("marketplace-classifier").aliases == {}  # not promoted
