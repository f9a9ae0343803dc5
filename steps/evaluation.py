"""Classification metrics and reports, the same for the sklearn baselines and the ResNet.

Everything works on class probabilities ``(N, C)`` whose columns follow the category list
(``categories.json``) and on true labels as indices into it; :func:`align_probabilities`
and :func:`label_indices` bring an sklearn model's ``classes_`` and category names there.

* :func:`classification_metrics`: ``<prefix>/accuracy``, ``<prefix>/top3_accuracy``,
  ``<prefix>/macro_f1`` (over the classes that occur, as true or predicted) and
  ``<prefix>/loss`` (mean negative log probability of the true class);
* :func:`confusion_figure`: the row-normalised confusion matrix with counts in the cells;
* :func:`log_classification_report`: the metrics (tied to the split's dataset and the
  logged model when given: MLflow 3 keeps that tie on the model's metrics), that figure and
  the per-class report (``classification_report.json`` / ``.txt``) logged to the active
  MLflow run.

Every classifier's metrics are named here, once: ``<split>/<name>`` (``test/accuracy``,
``val/loss``), which the MLflow UI charts as one group per split, and which
:mod:`registry.versions` reads (older versions' flat ``test_accuracy`` too).

Reads and writes nothing itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

TOP_K = 3
LOG_FLOOR = 1e-12


def label_indices(names: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """Category names -> their indices in ``categories``; a name not there is a ValueError."""
    index = {name: position for position, name in enumerate(categories)}
    try:
        return np.array([index[name] for name in names], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not one of the categories") from None


def align_probabilities(
    probabilities: np.ndarray, classes: Sequence[str], categories: Sequence[str]
) -> np.ndarray:
    """Columns in ``classes`` order (an sklearn model's ``classes_``) -> ``categories`` order.

    A category the model never saw gets probability 0.
    """
    aligned = np.zeros((len(probabilities), len(categories)), dtype=np.float64)
    aligned[:, label_indices(list(classes), categories)] = probabilities
    return aligned


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> float:
    """Share of rows whose true class is among the ``k`` most probable (ties: lower index)."""
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]  # (N, k)
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def metric_key(prefix: str, name: str) -> str:
    """``("test", "accuracy")`` -> ``test/accuracy``: the one spelling of a split's metric."""
    return f"{prefix}/{name}"


def log_split_metrics(
    metrics: Mapping[str, float], dataset=None, model_id: str | None = None
) -> None:
    """Log ``metrics`` to the active run, tied to the split's ``dataset`` and the logged
    model ``model_id`` when given (the MLflow 3 way: the model's page lists them per dataset)."""
    import mlflow

    with warnings.catch_warnings():  # MLflow's hint about the dataset's integer columns
        warnings.simplefilter("ignore", UserWarning)
        mlflow.log_metrics(dict(metrics), dataset=dataset, model_id=model_id)


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, prefix: str, k: int = TOP_K
) -> dict[str, float]:
    """Accuracy, top-``k`` accuracy, macro-F1 and log loss of ``probabilities`` ``(N, C)``,
    as ``<prefix>/accuracy``, ``<prefix>/top3_accuracy``, ``<prefix>/macro_f1``,
    ``<prefix>/loss``."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    present = sorted(set(labels.tolist()) | set(predicted.tolist()))
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        metric_key(prefix, "accuracy"): float((predicted == labels).mean()),
        metric_key(prefix, f"top{k}_accuracy"): top_k_accuracy(probabilities, labels, k),
        metric_key(prefix, "macro_f1"): float(
            f1_score(labels, predicted, labels=present, average="macro", zero_division=0)
        ),
        metric_key(prefix, "loss"): float(-np.log(np.clip(picked, LOG_FLOOR, None)).mean()),
    }


def confusion_figure(
    labels: np.ndarray, predicted: np.ndarray, categories: Sequence[str], title: str
):
    """A matplotlib figure of the row-normalised confusion matrix, counts in the cells."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(labels, predicted, labels=list(range(len(categories))))
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = 3 + 0.55 * len(categories)
    figure = Figure(figsize=(side + 2, side))
    ax = figure.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(categories)), categories, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            colour = "white" if rates[row, col] > 0.5 else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=ax, fraction=0.04, label="share of the true class")
    ax.set_title(title)
    figure.tight_layout()
    return figure


def log_classification_report(
    probabilities: np.ndarray,
    labels: np.ndarray,
    categories: Sequence[str],
    *,
    prefix: str = "test",
    artifact_dir: str = "",
    title: str = "test split",
    dataset=None,
    model_id: str | None = None,
) -> dict[str, float]:
    """Log the metrics, ``confusion_matrix.png`` and ``classification_report.{json,txt}``
    (under ``artifact_dir``) to the active run; return the metrics.

    ``dataset`` (an ``mlflow.data`` dataset of the scored split) and ``model_id`` (the logged
    model scored, ``ModelInfo.model_id``) tie the metrics to them: the model's page in the
    MLflow UI lists them against that dataset."""
    import mlflow
    from sklearn.metrics import classification_report

    metrics = classification_metrics(probabilities, labels, prefix)
    log_split_metrics(metrics, dataset, model_id)
    folder = f"{artifact_dir}/" if artifact_dir else ""
    predicted = probabilities.argmax(axis=1)
    mlflow.log_figure(
        confusion_figure(labels, predicted, categories, f"{title}: confusion matrix"),
        f"{folder}confusion_matrix.png",
    )
    kwargs = {
        "labels": list(range(len(categories))),
        "target_names": list(categories),
        "zero_division": 0,
    }
    report = classification_report(labels, predicted, output_dict=True, **kwargs)
    mlflow.log_dict(report, f"{folder}classification_report.json")
    mlflow.log_text(
        classification_report(labels, predicted, digits=3, **kwargs),
        f"{folder}classification_report.txt",
    )
    return metrics
