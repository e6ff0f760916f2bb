"""Clustering quality against known identities: NMI, ARI, BCubed and pairwise precision/recall/F.

All four are computed from the contingency table of (true identity, predicted cluster), so they cost
O(n + classes x clusters), never O(n^2). Conventions for the degenerate cases follow scikit-learn
(NMI, ARI) and the literature (BCubed: Amigo et al. 2009; pairwise: a clustering with no pairs
has precision 1, a labelling with no pairs has recall 1). A predicted cluster of UNKNOWN_CLUSTER (-1) is
the cluster stage's "matches no group": each such item counts as a cluster of its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from facepipe.formats import UNKNOWN_CLUSTER


def contingency(labels_true: Sequence, labels_pred: Sequence) -> np.ndarray:
    """Counts ``n[i, j]`` of items with true class i and predicted cluster j (dense int64 array).

    Each item predicted UNKNOWN_CLUSTER (-1) gets a column of its own: unknown faces are never grouped together.
    """
    true_index, pred_index = _indices(labels_true, labels_pred)
    table = np.zeros((true_index.max() + 1, pred_index.max() + 1), dtype=np.int64)
    np.add.at(table, (true_index, pred_index), 1)
    return table


def _indices(labels_true: Sequence, labels_pred: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Each item's row (true class) and column (predicted cluster; a column of its own for each unknown)."""
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise ValueError("labels_true and labels_pred must be 1-D and of the same length")
    if labels_true.size == 0:
        raise ValueError("no items to compare")
    _, true_index = np.unique(labels_true, return_inverse=True)
    _, pred_index = np.unique(labels_pred, return_inverse=True)
    unknown = np.flatnonzero(labels_pred == UNKNOWN_CLUSTER)
    if unknown.size:
        pred_index[unknown] = pred_index.max() + 1 + np.arange(unknown.size)
        _, pred_index = np.unique(pred_index, return_inverse=True)  # drop the emptied column of -1
    return true_index, pred_index


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default)."""
    table = contingency(labels_true, labels_pred)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = table.sum()
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    nz = table > 0
    joint = table[nz] / n
    outer = np.outer(rows, cols)[nz] / (n * n)
    mutual = float((joint * np.log(joint / outer)).sum())
    normaliser = (_entropy(rows) + _entropy(cols)) / 2
    return 1.0 if normaliser == 0 else max(0.0, mutual / normaliser)


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def ari(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Adjusted Rand index (Hubert and Arabie 1985)."""
    table = contingency(labels_true, labels_pred)
    n = table.sum()
    both = _pairs(table)
    same_true, same_pred = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    total = n * (n - 1) / 2
    expected = same_true * same_pred / total if total else 0.0
    maximum = (same_true + same_pred) / 2
    if maximum == expected:  # both labellings trivial (one group, or all singletons)
        return 1.0
    return (both - expected) / (maximum - expected)


def _f_score(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def bcubed(labels_true: Sequence, labels_pred: Sequence) -> dict[str, float]:
    """BCubed precision, recall and F: per item, the share of its cluster that shares its identity
    (precision) and the share of its identity that shares its cluster (recall), averaged over items."""
    # over the non-empty cells of the contingency table only, so that a million faces fit in memory
    true_index, pred_index = _indices(labels_true, labels_pred)
    cells, cell_of = np.unique(true_index * (pred_index.max() + 1) + pred_index, return_inverse=True)
    counts = np.bincount(cell_of).astype(np.float64)
    rows, cols = cells // (pred_index.max() + 1), cells % (pred_index.max() + 1)
    n = float(len(true_index))
    precision = float((counts * counts / np.bincount(pred_index)[cols]).sum() / n)
    recall = float((counts * counts / np.bincount(true_index)[rows]).sum() / n)
    return {"precision": precision, "recall": recall, "f": _f_score(precision, recall)}


def pairwise(labels_true: Sequence, labels_pred: Sequence) -> dict[str, float]:
    """Pairwise precision, recall and F over all pairs of items put in the same cluster / same identity."""
    table = contingency(labels_true, labels_pred)
    both = _pairs(table)
    same_pred, same_true = _pairs(table.sum(axis=0)), _pairs(table.sum(axis=1))
    precision = both / same_pred if same_pred else 1.0
    recall = both / same_true if same_true else 1.0
    return {"precision": precision, "recall": recall, "f": _f_score(precision, recall)}


def clustering_metrics(labels_true: Sequence, labels_pred: Sequence) -> dict[str, float]:
    """All of the above in one flat dict (the metrics JSON of the cluster stage).

    Each item predicted UNKNOWN_CLUSTER (-1) is scored as a singleton cluster (see ``contingency``);
    ``clusters`` counts the predicted groups other than -1 and ``unknown`` the items predicted -1.
    """
    b3 = bcubed(labels_true, labels_pred)
    pw = pairwise(labels_true, labels_pred)
    table = contingency(labels_true, labels_pred)
    unknown = int(np.count_nonzero(np.asarray(labels_pred) == UNKNOWN_CLUSTER))
    return {
        "items": int(table.sum()),
        "identities": int(table.shape[0]),
        "clusters": int(table.shape[1]) - unknown,
        "unknown": unknown,
        "nmi": nmi(labels_true, labels_pred),
        "ari": ari(labels_true, labels_pred),
        "bcubed_precision": b3["precision"],
        "bcubed_recall": b3["recall"],
        "bcubed_f": b3["f"],
        "pairwise_precision": pw["precision"],
        "pairwise_recall": pw["recall"],
        "pairwise_f": pw["f"],
    }
