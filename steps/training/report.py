"""The test-split evaluation: metrics, a confusion-matrix image and a per-class report.

Logs ``test_accuracy``, ``test_top3_accuracy``, ``test_macro_f1`` and ``test_loss``, and the
artifacts ``evaluation/confusion_matrix.png``, ``evaluation/classification_report.json``
and ``evaluation/classification_report.txt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EVALUATION_DIR = "evaluation"


def test_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, top-3 accuracy, macro-F1 and log loss of ``probabilities`` ``(N, C)``."""
    from sklearn.metrics import f1_score

    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    top = np.argsort(-probabilities, axis=1)[:, : min(3, classes)]
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "test_accuracy": float((predicted == labels).mean()),
        "test_top3_accuracy": float((top == labels[:, None]).any(axis=1).mean()),
        "test_macro_f1": float(
            f1_score(
                labels, predicted, labels=list(range(classes)), average="macro", zero_division=0
            )
        ),
        "test_loss": float(-np.log(np.clip(picked, 1e-12, None)).mean()),
    }


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, categories: Sequence[str]):
    """A matplotlib figure of the row-normalised confusion matrix, counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(labels, predicted, labels=list(range(len(categories))))
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = 3 + 0.55 * len(categories)
    fig, ax = plt.subplots(figsize=(side + 2, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(categories)), categories, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            colour = "white" if rates[row, col] > 0.5 else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the true class")
    ax.set_title("test split: confusion matrix")
    fig.tight_layout()
    return fig


def log_test_report(
    probabilities: np.ndarray, labels: np.ndarray, categories: Sequence[str]
) -> dict[str, float]:
    """Log the test metrics and artifacts to the active run; return the metrics."""
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.metrics import classification_report

    metrics = test_metrics(probabilities, labels)
    mlflow.log_metrics(metrics)
    predicted = probabilities.argmax(axis=1)
    figure = confusion_figure(labels, predicted, categories)
    mlflow.log_figure(figure, f"{EVALUATION_DIR}/confusion_matrix.png")
    plt.close(figure)
    kwargs = {
        "labels": list(range(len(categories))),
        "target_names": list(categories),
        "zero_division": 0,
    }
    report = classification_report(labels, predicted, output_dict=True, **kwargs)
    mlflow.log_dict(report, f"{EVALUATION_DIR}/classification_report.json")
    mlflow.log_text(
        classification_report(labels, predicted, digits=3, **kwargs),
        f"{EVALUATION_DIR}/classification_report.txt",
    )
    return metrics
