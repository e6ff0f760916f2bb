"""Metrics for a binary probe on imbalanced labels, the seed's dummy baselines, and the two plots."""

from __future__ import annotations

import os

import numpy as np

from facepipe.common import atomic_path

BASELINE_SEED = 0


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, predictions: np.ndarray) -> dict:
    """F1, precision, recall, balanced accuracy, FAR, FRR, HTER, ROC-AUC, PR-AUC and the confusion matrix.

    FAR (false acceptance) = FP / negatives, FRR (false rejection) = FN / positives, HTER = (FAR + FRR) / 2
    = 1 - balanced accuracy. PR-AUC is sklearn's average precision. Ratios with an empty denominator,
    and the AUCs when only one class is present, are ``None``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    predictions = np.asarray(predictions).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    tp = int(np.sum((predictions == 1) & (labels == 1)))
    fp = int(np.sum((predictions == 1) & (labels == 0)))
    tn = int(np.sum((predictions == 0) & (labels == 0)))
    fn = int(np.sum((predictions == 0) & (labels == 1)))

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    far, frr = ratio(fp, fp + tn), ratio(fn, fn + tp)
    hter = (far + frr) / 2 if far is not None and frr is not None else None
    both_classes = 0 < labels.sum() < len(labels)
    return {
        "count": int(len(labels)),
        "positives": int(labels.sum()),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "balanced_accuracy": None if hter is None else 1 - hter,
        "accuracy": ratio(tp + tn, len(labels)),
        "far": far,
        "frr": frr,
        "hter": hter,
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else None,
        "pr_auc": float(average_precision_score(labels, probabilities)) if both_classes else None,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def dummy_baselines(labels: np.ndarray, prior: float, seed: int = BASELINE_SEED) -> dict:
    """The BaldOrNot seed's dummy models on the same labels: always 0, always 1, and random at ``prior``.

    ``prior`` is the positive share of the probe's training labels (not of the evaluated ones);
    the random model draws each label from Bernoulli(prior) with a fixed seed and scores it with that label.
    """
    labels = np.asarray(labels).astype(int)
    n = len(labels)
    random_labels = (np.random.default_rng(seed).random(n) < prior).astype(int)
    return {
        "always_0": binary_metrics(labels, np.zeros(n), np.zeros(n, dtype=int)),
        "always_1": binary_metrics(labels, np.ones(n), np.ones(n, dtype=int)),
        f"random_at_prior_{prior:.4f}": binary_metrics(labels, random_labels.astype(float), random_labels),
    }


def best_f1_threshold(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """The probability threshold (predict 1 when ``p >= threshold``) that maximises F1, and that F1."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(np.asarray(labels).astype(int), probabilities)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def _save_figure(figure, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_pr_curve(labels, probabilities, threshold: float, target: str, path: str | os.PathLike) -> None:
    """Precision-recall curve with the probe's operating point and the prior (a random model's precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    predictions = probabilities >= threshold
    tp = int(np.sum(predictions & (labels == 1)))
    figure, axes = plt.subplots(figsize=(5, 4.5))
    axes.step(
        recall, precision, where="post", label=f"probe (PR-AUC {average_precision_score(labels, probabilities):.3f})"
    )
    if predictions.any():
        axes.plot([tp / labels.sum()], [tp / predictions.sum()], "o", color="C3", label=f"threshold {threshold:.3f}")
    axes.axhline(labels.mean(), color="gray", linestyle="--", label=f"random (prevalence {labels.mean():.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title=f"{target}: precision-recall")
    axes.legend(loc="lower left")
    _save_figure(figure, path)


def plot_confusion_matrix(confusion: dict, target: str, path: str | os.PathLike) -> None:
    """2x2 confusion matrix (rows: true label, columns: predicted label) with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    figure, axes = plt.subplots(figsize=(4, 3.6))
    axes.imshow(cells, cmap="Blues")
    for (row, column), count in np.ndenumerate(cells):
        axes.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            color="white" if count > cells.max() / 2 else "black",
            fontsize=13,
        )
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=[f"not {target}", target],
        yticklabels=[f"not {target}", target],
        xlabel="predicted",
        ylabel="true",
        title=f"{target}: confusion matrix",
    )
    _save_figure(figure, path)
