"""Training: the ResNet classifier's step, loop, transforms, weights, resume and DDP.

The data is a tiny export in the clean layout made here (three categories of coloured
shapes at 32 px), so that a resnet18 learns it in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from cli import UserError
from marketplace_models.network import build_network, eval_transform, forward_features
from steps.train import main, parse_config, train
from steps.training import distributed, loop, stages
from steps.training.config import TrainConfig
from steps.training.data import decode_images, load_clean_data
from steps.training.distributed import Context, choose_precision
from steps.training.loop import BatchSource, EarlyStopping, train_one_epoch
from steps.training.model import (
    build_model,
    freeze,
    parse_trainable_layers,
    resolve_weights,
    set_train_mode,
)
from steps.training.transforms import eval_batch, train_transform
from tests.helpers.mlflow_run import REPO, mlflow_run, project_env
from tests.helpers.training import (
    CATEGORIES,
    SIZE,
    make_tiny_clean,
    subprocess_env,
    tiny_args,
)

CPU = Context(torch.device("cpu"))
EPOCH_METRICS = (
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "lr",
    "epoch_seconds",
    "images_per_second",
)
TEST_METRICS = ("test/accuracy", "test/top3_accuracy", "test/macro_f1", "test/loss")


@pytest.fixture(scope="module")
def tiny_clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clean(tmp_path_factory.mktemp("tiny") / "clean")


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict file of a randomly initialised resnet18 (ImageNet-shaped head)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(build_network("resnet18", 1000).state_dict(), path)
    return path


def metric_steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


# ---------------------------------------------------------------------- arguments


def test_the_command_line_defaults_are_the_config_defaults():
    """argparse reads TrainConfig's defaults; test_project checks MLproject against argparse."""
    assert parse_config([]) == TrainConfig()


def test_mlproject_style_numbers_parse():
    cfg = parse_config(["--epochs", "15.0", "--trainable-layers", "2.0", "--register", "false"])
    assert (cfg.epochs, cfg.trainable_layers, cfg.register) == (15, 2, False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1", 1), ("4", 4), ("all", 5), ("9", 5), ("auto", None), ("Auto", None)],
)
def test_trainable_layers_parse(text, expected):
    assert parse_trainable_layers(text) == expected


@pytest.mark.parametrize("text", ["-1", "1.5", "some"])
def test_trainable_layers_reject_nonsense(text):
    with pytest.raises(UserError, match="trainable-layers"):
        parse_trainable_layers(text)


@pytest.mark.parametrize(
    ("layers", "trained"),
    [
        (0, {"fc"}),
        (1, {"fc", "layer4"}),
        (2, {"fc", "layer4", "layer3"}),
        (5, {"fc", "layer4", "layer3", "layer2", "layer1", "conv1", "bn1"}),
    ],
)
def test_freeze_trains_the_blocks_nearest_the_head(layers, trained):
    net = build_network("resnet18", 3)
    freeze(net, layers)
    with_grad = {name.split(".")[0] for name, p in net.named_parameters() if p.requires_grad}
    assert with_grad == trained
    set_train_mode(net, layers)
    assert net.layer4.training == ("layer4" in trained)
    assert not net.layer1.training or "layer1" in trained  # frozen BatchNorm stays in eval


# ---------------------------------------------------------------------- weights


def test_weights_file_loads_the_backbone_and_replaces_a_different_head(resnet18_weights):
    net, used = build_model("resnet18", 3, str(resnet18_weights))
    saved = torch.load(resnet18_weights, weights_only=True)
    assert used == f"file:{resnet18_weights}"
    assert torch.equal(net.state_dict()["layer3.0.conv1.weight"], saved["layer3.0.conv1.weight"])
    assert net.fc.out_features == 3


def test_weights_file_for_another_arch_is_refused(resnet18_weights):
    with pytest.raises(UserError, match="do not fit resnet34"):
        build_model("resnet34", 3, str(resnet18_weights))


def test_auto_weights_fall_back_to_random_when_imagenet_cannot_be_had(monkeypatch, caplog):
    def offline(arch, *, download):
        raise OSError("Name or service not known")

    monkeypatch.setattr("steps.training.model._imagenet_state", offline)
    state, used = resolve_weights("auto", "resnet18")
    assert state is None and used.startswith("random")
    assert "random initialisation" in caplog.text
    with pytest.raises(UserError, match="ImageNet weights for resnet18 could not be had"):
        resolve_weights("imagenet", "resnet18")
    assert resolve_weights("none", "resnet18") == (None, "none")


# ---------------------------------------------------------------------- transforms


def test_train_preset_makes_normalised_per_image_crops():
    images = torch.full((4, 3, 40, 40), 128, dtype=torch.uint8)
    images[:, :, :, :20] = 0  # left half black: crops and flips move the edge
    augment = train_transform(32)
    first = augment(images, torch.Generator().manual_seed(0))
    again = augment(images, torch.Generator().manual_seed(0))
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again)  # seeded: a resumed epoch sees the same augmentation
    assert not torch.allclose(first[0], first[1])  # each image gets its own crop
    assert float(first.min()) > -2.2 and float(first.max()) < 2.7  # ImageNet mean/std


def test_eval_cache_is_the_served_preprocessing(tiny_clean):
    data = load_clean_data(tiny_clean, SIZE)
    path = data.paths(data.split("test"))[0]
    cached = eval_batch(decode_images([path], 24))[0]
    assert torch.allclose(cached, eval_transform(24)(path.read_bytes()), atol=1e-6)


# ---------------------------------------------------------------------- the loop


@pytest.mark.slow
def test_overfits_one_batch(tiny_clean):
    torch.manual_seed(0)
    data = load_clean_data(tiny_clean, SIZE)
    batch = data.split("train").groupby("label").head(2)
    images = decode_images(data.paths(batch), SIZE)
    labels = torch.tensor(batch["label"].to_numpy())
    net = build_network("resnet18", len(CATEGORIES))
    source = BatchSource(images, labels, len(labels), CPU.device, transform=stages.eval_images)
    optimizer = loop.build_optimizer(list(net.parameters()), 2e-3, 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    criterion = torch.nn.CrossEntropyLoss()
    net.train()
    results = [
        train_one_epoch(net, source, optimizer, scheduler, criterion, CPU, epoch)
        for epoch in range(15)
    ]
    assert results[-1].loss < 0.05 < results[0].loss
    assert results[-1].accuracy == 1.0


def test_head_only_computes_backbone_features_once_per_image(tiny_clean, monkeypatch):
    data = load_clean_data(tiny_clean, SIZE)
    cfg = TrainConfig(
        clean=tiny_clean,
        arch="resnet18",
        image_size=SIZE,
        clean_size=SIZE,
        trainable_layers=0,
        batch_size=8,
        num_workers=1,
    )
    net = build_network("resnet18", len(CATEGORIES))
    freeze(net, 0)
    seen = []

    def counting(module, images):
        seen.append(len(images))
        return forward_features(module, images)

    monkeypatch.setattr(stages, "forward_features", counting)
    stage = stages.build_stage(net, data, cfg, CPU)
    optimizer = loop.build_optimizer(list(net.fc.parameters()), 1e-2, 0.0)
    records = loop.fit(
        stage,
        optimizer,
        loop.build_scheduler(optimizer, 6 * len(stage.train)),
        torch.nn.CrossEntropyLoss(),
        EarlyStopping(0),
        CPU,
        first_epoch=1,
        epochs=6,
    )
    assert len(records) == 6
    assert sum(seen) == len(data.split("train")) + len(data.split("val"))  # not x 6 epochs
    assert records[-1].train.loss < records[0].train.loss


def test_early_stopping_waits_patience_epochs():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(1.0, 1) and not stopper.should_stop
    assert not stopper.update(1.1, 2) and not stopper.should_stop
    assert not stopper.update(1.2, 3) and stopper.should_stop
    assert stopper.best_epoch == 1


# ---------------------------------------------------------------------- the step


def test_the_default_trainable_layers_is_auto():
    assert parse_config([]).trainable_layers is None
    assert "trainable_layers: {type: string, default: auto}" in (REPO / "MLproject").read_text()


@pytest.mark.parametrize("pretrained", [True, False], ids=["pretrained", "random"])
def test_auto_trains_layer4_over_pretrained_weights_and_everything_over_random_ones(
    tiny_clean, resnet18_weights, tracking, pretrained
):
    weights = str(resnet18_weights) if pretrained else "none"
    args = ["--epochs", "1", "--register", "false", "--weights", weights]
    main(tiny_args(tiny_clean, *args, "--trainable-layers", "auto"))

    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    params = run.data.params
    assert params["trainable_layers"] == "auto"
    assert params["trainable_layers_used"] == ("1" if pretrained else "5")
    reason = params["trainable_layers_reason"]
    assert ("pretrained" in reason) if pretrained else ("random" in reason)
    note = run.data.tags["mlflow.note.content"]
    assert ("trainable layers 1" in note) if pretrained else ("all layers" in note)


@pytest.mark.parametrize(
    ("support", "dtype", "reason"),
    [("AMX", torch.bfloat16, "CPU has AMX"), (None, None, "neither AMX nor AVX-512 BF16")],
    ids=["bf16-cpu", "older-cpu"],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(
    monkeypatch, support, dtype, reason
):
    monkeypatch.setattr(distributed, "cpu_bf16_support", lambda: support)
    chosen, why = choose_precision(torch.device("cpu"))
    assert chosen is dtype and reason in why
    # Asked for, either precision is used whatever the CPU has.
    assert choose_precision(torch.device("cpu"), "fp32") == (None, "asked for fp32")
    assert choose_precision(torch.device("cpu"), "bf16")[0] is torch.bfloat16
    assert Context(torch.device("cpu"), amp_dtype=chosen).precision == ("bf16" if dtype else "fp32")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert {"avx512_bf16", "amx_tile"} <= distributed.cpu_flags(cpuinfo)
    assert distributed.cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: fp32


def test_an_unknown_precision_is_refused():
    with pytest.raises(UserError, match="--precision: invalid choice: 'fp16'"):
        parse_config(["--precision", "fp16"])
    with pytest.raises(UserError, match="one of auto, fp32, bf16"):
        choose_precision(torch.device("cpu"), "half")


def test_test_figures_are_computed_in_fp32_after_bf16_training(tiny_clean, monkeypatch):
    """The test metrics are the logged model's (fp32, as served), not the autocast's."""
    import steps.train as train_step

    seen = []

    def predict(module, source, ctx):
        seen.append(ctx.amp_dtype)
        return torch.zeros(len(source.labels), len(CATEGORIES))

    monkeypatch.setattr(train_step, "predict_logits", predict)
    cfg = TrainConfig(clean=tiny_clean, image_size=SIZE, clean_size=SIZE, num_workers=1)
    bf16 = Context(torch.device("cpu"), amp_dtype=torch.bfloat16)
    data = load_clean_data(tiny_clean, SIZE, SIZE)
    train_step._predict_test(build_network("resnet18", 3), data, cfg, bf16)
    assert seen == [None]  # no autocast, whatever the training's


@pytest.mark.parametrize("support", ["AVX-512 BF16", None], ids=["bf16-cpu", "older-cpu"])
def test_the_run_logs_the_precision_asked_used_and_why(tiny_clean, tracking, monkeypatch, support):
    monkeypatch.setattr(distributed, "cpu_bf16_support", lambda: support)
    main(tiny_args(tiny_clean, "--epochs", "1", "--register", "false", "--weights", "none"))

    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    params = run.data.params
    assert params["precision"] == "auto"
    assert params["precision_used"] == ("bf16" if support else "fp32")
    assert params["precision_reason"].startswith("CPU has")
    assert run.data.metrics["train/loss"] > 0  # the bf16 step trained like the fp32 one


@pytest.mark.slow
def test_smoke_run_logs_every_epoch_registers_and_serves(
    tiny_clean, resnet18_weights, tracking, monkeypatch
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a sample a second
    main(tiny_args(tiny_clean, "--epochs", "2", "--weights", str(resnet18_weights)))
    monitors = [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    assert monitors == []  # the system metrics' thread ended with the run

    client = mlflow.MlflowClient()
    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"train resnet18 e2 {SIZE}px"  # what the runs table shows
    assert "up to 2 epochs" in run.data.tags["mlflow.note.content"]  # the run's description
    for key in EPOCH_METRICS:
        assert metric_steps(client, run_id, key) == [1, 2], key
    losses = [m.value for m in client.get_metric_history(run_id, "train/loss")]
    assert losses[1] < losses[0]
    for key in TEST_METRICS[:3]:
        assert 0.0 <= run.data.metrics[key] <= 1.0
    assert run.data.metrics["best_epoch"] in (1, 2)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    assert not [k for k in run.data.metrics if k.startswith(("train_", "val_", "test_"))]
    assert run.data.params["arch"] == "resnet18"
    assert run.data.params["weights_used"] == f"file:{resnet18_weights}"
    assert run.data.params["register"] == "true"  # one spelling of booleans
    assert "" not in run.data.params.values() and "resume" not in run.data.params  # unset: out
    assert "weights_used" not in run.data.tags  # a param, not logged twice
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"train", "val", "test"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [logged] = client.search_logged_models([run.info.experiment_id])
    assert logged.name == "marketplace-classifier" and logged.source_run_id == run_id
    tied = {m.key: m.dataset_name for m in logged.metrics}
    assert {key: tied.get(key) for key in TEST_METRICS} == dict.fromkeys(
        TEST_METRICS, "images-test"
    )
    artifacts = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert artifacts == {"checkpoints/last.pt", "checkpoints/best.pt"}
    evaluation = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in evaluation
    assert "evaluation/classification_report.json" in evaluation

    [version] = client.search_model_versions("name = 'marketplace-classifier'")
    assert version.run_id == run_id
    accuracy = run.data.metrics["test/accuracy"]
    assert float(version.tags["test/accuracy"]) == pytest.approx(accuracy)
    assert len(version.tags["data_digest"]) == 16
    registered = client.get_registered_model("marketplace-classifier")
    assert registered.aliases == {}
    assert "3 root categories" in registered.description
    assert "How a version reaches production" in registered.description
    described = client.get_model_version("marketplace-classifier", version.version).description
    assert described.startswith("Not promoted yet: registered by training")  # its status
    assert f"**resnet18** at {SIZE} px, trained by run `train resnet18 e2" in described
    assert run_id[:8] in described and version.tags["data_digest"] in described
    assert f"accuracy {accuracy:.4f}" in described
    # The int8 export was tried behind its gate, and the verdict recorded where a reader looks.
    kept = run.data.metrics["int8/kept"] == 1.0
    assert {"int8/agreement", "int8/accuracy", "onnx/accuracy"} <= set(run.data.metrics)
    assert run.data.metrics["int8/calibration_images"] > 0
    assert version.tags["int8_gate"].startswith("passed" if kept else "refused")
    assert ("int8_onnx" in version.tags) is kept
    assert "**int8 export**: " + ("kept" if kept else "not kept") in described

    model = mlflow.pyfunc.load_model(f"models:/marketplace-classifier/{version.version}")
    data = load_clean_data(tiny_clean, SIZE)
    test = data.split("test")
    images = [p.read_bytes() for p in data.paths(test)]
    out = model.predict(pd.DataFrame({"image": images}))
    accuracy = float((out["category"] == test["label"].map(CATEGORIES.__getitem__)).mean())
    assert accuracy == pytest.approx(run.data.metrics["test/accuracy"], abs=0.1)


@pytest.mark.slow
def test_trains_head_only_on_the_cleaned_demo_export(demo_clean, tracking):
    """The real clean layout (clean_tabular + clean_images) feeds training as it is."""
    argv = ["--clean", str(demo_clean), "--clean-size", "64", "--image-size", "32"]
    argv += ["--arch", "resnet18", "--weights", "none", "--trainable-layers", "0"]
    outcome = train(parse_config([*argv, "--epochs", "2", "--register", "false"]))
    categories = json.loads((demo_clean / "categories.json").read_text())
    assert [r.epoch for r in outcome.records] == [1, 2]
    assert set(outcome.test_metrics) == set(TEST_METRICS)
    model = mlflow.pyfunc.load_model(outcome.model_uri)
    assert model.unwrap_python_model().categories == categories


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_killed_and_resume_continues_it(
    tiny_clean, tracking, monkeypatch, signum, code
):
    real_epoch = loop.train_one_epoch

    def signalled_in_epoch_2(*args, **kwargs):
        if args[6] == 2:
            os.kill(os.getpid(), signum)  # Ctrl-C, or `kill`, in the middle of epoch 2
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", signalled_in_epoch_2)
    with pytest.raises(SystemExit) as stopped:
        main(tiny_args(tiny_clean, "--epochs", "3", "--weights", "none", "--register", "false"))
    assert stopped.value.code == code
    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    client = mlflow.MlflowClient()
    assert run.info.status == "KILLED"
    assert metric_steps(client, run.info.run_id, "val/loss") == [1]  # only epoch 2 is lost
    assert signal.getsignal(signum) is not None  # the handlers were put back

    monkeypatch.setattr(loop, "train_one_epoch", real_epoch)
    outcome = train(
        parse_config(tiny_args(tiny_clean, "--resume", run.info.run_id, "--epochs", "9"))
    )

    assert outcome.run_id == run.info.run_id
    assert [r.epoch for r in outcome.records] == [2, 3]  # epochs come from the checkpoint
    for key in EPOCH_METRICS:
        assert metric_steps(client, run.info.run_id, key) == [1, 2, 3], key
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert mlflow.MlflowClient().search_model_versions("name = 'marketplace-classifier'") == []
    assert "test/accuracy" in finished.data.metrics
    assert finished.info.run_name == f"train resnet18 e3 {SIZE}px"  # the checkpoint's settings
    assert len(mlflow.search_runs(experiment_names=["tests"], output_format="list")) == 1
    with pytest.raises(UserError, match="nothing to resume"):
        train(parse_config(tiny_args(tiny_clean, "--resume", run.info.run_id)))


def torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] + [
        "-m",
        "steps.train",
        *argv,
    ]


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 600):
    """Poll ``condition()`` until it is true; fail if ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(
                f"ended ({process.returncode}) before {what}: {process_log(process)}"
            )
        time.sleep(0.25)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def start(command: list[str], log: Path) -> subprocess.Popen:
    """``command`` in its own session (a signal reaches it alone), stderr to ``log``."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stderr=stderr, env=subprocess_env(), start_new_session=True
        )
    process.log = log  # type: ignore[attr-defined]
    return process


def process_log(process: subprocess.Popen) -> str:
    return process.log.read_text()[-3000:]  # type: ignore[attr-defined]


def stop_and_check(process: subprocess.Popen, run_id: str) -> list[int]:
    """SIGTERM ``process``; it ends, the run is KILLED with the last complete epoch's
    checkpoint; the epochs logged."""
    client = mlflow.MlflowClient()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) != 0, process_log(process)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED", process_log(process)
    epochs = metric_steps(client, run_id, "val/loss")
    assert epochs == list(range(1, len(epochs) + 1))  # one history, no gap, no repeat
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt")
    assert torch.load(local, weights_only=True)["epoch"] == epochs[-1]
    return epochs


def epochs_logged(run_id: str | None, after: int = 0):
    def condition():
        if mlflow.MlflowClient().get_experiment_by_name("tests") is None:
            return None
        runs = mlflow.search_runs(experiment_names=["tests"], output_format="list")
        if not runs:
            return None
        steps = metric_steps(mlflow.MlflowClient(), run_id or runs[0].info.run_id, "val/loss")
        return (run_id or runs[0].info.run_id) if steps and max(steps) > after else None

    return condition


@pytest.mark.slow
@pytest.mark.parametrize("ddp", [False, True], ids=["one-process", "ddp-2-cpu"])
def test_sigterm_to_a_real_training_process_and_its_resume(tiny_clean, tracking, tmp_path, ddp):
    """A training killed with SIGTERM (alone, or torchrun with 2 gloo ranks) ends KILLED
    with the last complete epoch's checkpoint; its resume (every rank from that checkpoint)
    continues the same run at the next epoch, and is stopped the same way."""
    argv = tiny_args(tiny_clean, "--epochs", "1000", "--patience", "0", "--weights", "none")
    argv += ["--register", "false"]
    command = torchrun(*argv) if ddp else [sys.executable, "-m", "steps.train", *argv]
    first = start(command, tmp_path / "first.log")
    run_id = wait_for(epochs_logged(None), first, "a first epoch")
    stopped = stop_and_check(first, run_id)

    resume = [*argv, "--resume", run_id]
    command = torchrun(*resume) if ddp else [sys.executable, "-m", "steps.train", *resume]
    second = start(command, tmp_path / "second.log")
    wait_for(epochs_logged(run_id, after=stopped[-1]), second, "an epoch after resuming")
    resumed = stop_and_check(second, run_id)
    assert "resuming run" in second.log.read_text()
    assert resumed[: len(stopped)] == stopped and len(resumed) > len(stopped)
    [run] = mlflow.search_runs(experiment_names=["tests"], output_format="list")  # one run
    assert run.data.tags["world_size"] == ("2" if ddp else "1")


# ---------------------------------------------------------------------- bad input


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_no_clean_data_says_which_step_to_run(tmp_path, tracking, capsys):
    message = one_line_error(capsys, ["--clean", str(tmp_path / "nothing")])
    assert "clean_tabular" in message and "clean_images" in message


def test_missing_image_size_folder_names_the_sizes_there(tiny_clean, tracking, capsys):
    message = one_line_error(capsys, ["--clean", str(tiny_clean), "--clean-size", "256"])
    assert "--size 256" in message and "found: 32" in message


def test_unknown_arch(tiny_clean, tracking, capsys):
    message = one_line_error(capsys, tiny_args(tiny_clean, "--arch", "vgg16"))
    assert "resnet18, resnet34, resnet50" in message


def test_weights_that_do_not_fit_the_arch(tiny_clean, resnet18_weights, tracking, capsys):
    argv = tiny_args(tiny_clean, "--arch", "resnet50", "--weights", str(resnet18_weights))
    message = one_line_error(capsys, argv)
    assert "do not fit resnet50" in message and "--arch" in message


def test_epochs_below_one(tiny_clean, tracking, capsys):
    message = one_line_error(capsys, tiny_args(tiny_clean, "--epochs", "0"))
    assert "--epochs" in message and ">= 1" in message


def test_tracking_server_down(tiny_clean, tracking, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    message = one_line_error(capsys, tiny_args(tiny_clean, "--epochs", "1"))
    assert "cannot reach the MLflow tracking server" in message


def test_resume_of_an_unknown_run(tiny_clean, tracking, capsys):
    message = one_line_error(capsys, tiny_args(tiny_clean, "--resume", "0123456789abcdef"))
    assert "--resume" in message


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_in_a_real_process(tmp_path, tracking):
    done = subprocess.run(
        [sys.executable, "-m", "steps.train", "--clean", str(tmp_path), "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: argument --epochs")


# ---------------------------------------------------------------------- the simple CNN


def test_simplecnn_refuses_weights_it_cannot_use(tiny_clean, tracking):
    cfg = parse_config(tiny_args(tiny_clean, "--arch", "simplecnn", "--weights", "imagenet"))
    with pytest.raises(UserError, match="does not apply to simplecnn"):
        train(cfg)


@pytest.mark.slow
def test_simplecnn_trains_from_scratch_registers_and_serves_like_a_resnet(
    tiny_clean, tracking, tmp_path
):
    from marketplace_models.image import read_logged_classifier
    from serve.engines import build_engine

    params = {
        "clean": tiny_clean,
        "clean_size": SIZE,
        "image_size": SIZE,
        "arch": "simplecnn",
        "trainable_layers": 0,  # does not apply: simplecnn trains every layer
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.003,
        "num_workers": 1,
    }
    env = project_env(subprocess_env(), tracking=tracking)
    mlflow_run("train", params, cwd=tmp_path, env=env, experiment="tests")
    client = mlflow.MlflowClient()
    [run] = [
        r
        for r in mlflow.search_runs(experiment_names=["tests"], output_format="list")
        if r.data.params.get("arch") == "simplecnn"
    ]
    params = run.data.params
    assert run.info.run_name == f"train simplecnn e3 {SIZE}px"
    assert (params["weights_used"], params["trainable_layers_used"]) == ("none", "5")
    assert "from scratch" in params["arch_note"]
    assert metric_steps(client, run.info.run_id, "val/loss") == [1, 2, 3]
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses[-1] < losses[0]

    [version] = client.search_model_versions("name = 'marketplace-classifier'")
    assert version.run_id == run.info.run_id and version.tags["arch"] == "simplecnn"
    registered = client.get_registered_model("marketplace-classifier")
    assert "trained from scratch" in registered.description
    local = Path(mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path)))
    logged = read_logged_classifier(local)
    assert logged.config.arch == "simplecnn" and logged.onnx is not None  # parity check passed

    data = load_clean_data(tiny_clean, SIZE)
    images = [p.read_bytes() for p in data.paths(data.split("test"))]
    model = mlflow.pyfunc.load_model(f"models:/marketplace-classifier/{version.version}")
    expected = np.stack(model.predict(pd.DataFrame({"image": images}))["probabilities"].to_list())
    pixels = np.stack([eval_pixels(image) for image in images])
    for engine in ("onnx", "torch"):
        probabilities, embedding = build_engine(logged, engine).forward(pixels)
        assert embedding.shape == (len(images), 256), engine
        assert np.allclose(probabilities, expected, atol=1e-4), engine


def eval_pixels(image: bytes) -> np.ndarray:
    from marketplace_models.network import preprocess_image

    return preprocess_image(image, SIZE)
