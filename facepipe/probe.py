"""Stage 6: a linear probe (standardise + class-weighted logistic regression) for a 0/1 attribute such as bald.

Built for heavy class imbalance: the regularisation C is chosen by cross-validation on folds grouped by
identity (the same person is never on both sides of a fold), by the pooled out-of-fold average precision;
the decision threshold is the one that maximises F1 on those out-of-fold predictions. The probe is saved as
JSON (no pickle) and scored with plain NumPy, so a saved probe gives bit-identical probabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from facepipe import __version__
from facepipe.common import FacepipeError, file_sha256, progress
from facepipe.formats import (
    PROBE_CONFUSION_PNG,
    PROBE_METRICS_JSON,
    PROBE_PR_CURVE_PNG,
    PROBE_PREDICTIONS_CSV,
    Embeddings,
    read_csv,
    read_embeddings,
    read_probe_json,
    write_json_atomic,
    write_predictions,
    write_probe_json,
)
from facepipe.labels import attach_labels
from facepipe.locks import locks_output
from facepipe.probe_metrics import (
    best_f1_threshold,
    binary_metrics,
    dummy_baselines,
    plot_confusion_matrix,
    plot_pr_curve,
)
from facepipe.settings import DEFAULT_CS, ProbeSettings, check_settings

EXAMPLES_SHOWN = 5


@dataclass
class LinearProbe:
    """A trained probe: ``p = sigmoid(((x - scaler_mean) / scaler_scale) . coefficients + intercept)``."""

    target: str
    coefficients: np.ndarray
    intercept: float
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    threshold: float
    C: float
    embedding_model: str | None
    embedding_dimension: int
    training: dict = field(default_factory=dict)

    def decision_function(self, vectors: np.ndarray) -> np.ndarray:
        """The logit of each row (float64).

        The sum runs over the features in a fixed order, not through a BLAS matrix product or a NumPy
        reduction, whose summation order depends on memory alignment and layout: a reloaded probe, or
        the same vectors read from CSV instead of .npz, would otherwise differ in the last bit.
        """
        standardised = (np.asarray(vectors, dtype=np.float64) - self.scaler_mean) / self.scaler_scale
        logits = np.full(standardised.shape[0], self.intercept, dtype=np.float64)
        for feature, weight in enumerate(self.coefficients):
            logits += standardised[:, feature] * weight
        return logits

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Probability of the target (label 1) for each row."""
        logits = self.decision_function(vectors)
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function, without overflow warnings

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """0/1 labels: 1 where the probability reaches the tuned threshold."""
        return (self.predict_proba(vectors) >= self.threshold).astype(int)

    def check_compatible(self, embeddings: Embeddings, path: str | os.PathLike = "embeddings") -> None:
        """Refuse embeddings of another model or dimension than the probe was trained on."""
        if embeddings.dim != self.embedding_dimension or embeddings.model != self.embedding_model:
            raise FacepipeError(
                f"{path} holds {embeddings.model or 'unknown-model'} embeddings of dimension {embeddings.dim}, "
                f"but this {self.target} probe was trained on {self.embedding_model or 'unknown-model'} embeddings "
                f"of dimension {self.embedding_dimension}: embed the crops with that model first"
            )

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (floats are Python floats, so JSON keeps them exactly)."""
        return {
            "target": self.target,
            "coefficients": [float(v) for v in self.coefficients],
            "intercept": float(self.intercept),
            "scaler_mean": [float(v) for v in self.scaler_mean],
            "scaler_scale": [float(v) for v in self.scaler_scale],
            "threshold": float(self.threshold),
            "C": float(self.C),
            "embedding_model": self.embedding_model,
            "embedding_dimension": int(self.embedding_dimension),
            "training": self.training,
            "facepipe_version": __version__,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LinearProbe":
        return cls(
            target=str(data["target"]),
            coefficients=np.asarray(data["coefficients"], dtype=np.float64),
            intercept=float(data["intercept"]),
            scaler_mean=np.asarray(data["scaler_mean"], dtype=np.float64),
            scaler_scale=np.asarray(data["scaler_scale"], dtype=np.float64),
            threshold=float(data["threshold"]),
            C=float(data["C"]),
            embedding_model=data["embedding_model"],
            embedding_dimension=int(data["embedding_dimension"]),
            training=dict(data.get("training") or {}),
        )

    def save(self, path: str | os.PathLike) -> None:
        write_probe_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LinearProbe":
        return cls.from_dict(read_probe_json(path))


# --- labelled embeddings ----------------------------------------------------------------------------


@dataclass
class LabelledEmbeddings:
    """Embeddings joined to one 0/1 target of a label manifest, and what could not be joined."""

    target: str
    names: list[str]
    vectors: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # identity of each face (a face without one is its own group)
    meta: dict
    unmatched: list[str]  # embeddings with no manifest row
    unlabelled: list[str]  # embeddings whose manifest row has no value for the target
    manifest_rows_without_embedding: list[str]
    faces_without_identity: int = 0

    def missing_report(self) -> dict:
        """Counts and a few examples of everything left out, for the JSON outputs and the console."""
        return {
            "embeddings_without_manifest_row": {
                "count": len(self.unmatched),
                "examples": self.unmatched[:EXAMPLES_SHOWN],
            },
            "embeddings_without_target_value": {
                "count": len(self.unlabelled),
                "examples": self.unlabelled[:EXAMPLES_SHOWN],
            },
            "manifest_rows_without_embedding": {
                "count": len(self.manifest_rows_without_embedding),
                "examples": self.manifest_rows_without_embedding[:EXAMPLES_SHOWN],
            },
            "faces_without_identity": self.faces_without_identity,
        }

    def missing_lines(self) -> list[str]:
        """One human-readable line per kind of left-out item (none when nothing is missing)."""
        lines = []
        for what, entry in (
            ("embedding(s) match no manifest row", self.unmatched),
            (f"embedding(s) have no {self.target} label in the manifest", self.unlabelled),
            (
                "manifest row(s) have no embedding (no face found, or not embedded)",
                self.manifest_rows_without_embedding,
            ),
        ):
            if entry:
                lines.append(f"{len(entry)} {what}, left out; e.g. {', '.join(entry[:EXAMPLES_SHOWN])}")
        if self.faces_without_identity:
            lines.append(f"{self.faces_without_identity} face(s) have no identity: each counts as its own person")
        return lines


def load_labelled(
    embeddings: Embeddings,
    manifest_path: str | os.PathLike,
    target: str,
    *,
    group_column: str | None = "identity",
    crops_dir: str | os.PathLike | None = None,
) -> LabelledEmbeddings:
    """Join embeddings to the manifest's ``target`` (0/1) and ``group_column`` through ``attach_labels``.

    ``crops_dir`` (default: the embeddings sidecar's ``crops_dir``) is where ``detections.csv`` tells each
    crop's source photo. Faces without a manifest row or without a target value are left out and listed.
    """
    crops_dir = crops_dir if crops_dir is not None else embeddings.meta.get("crops_dir")
    joined = attach_labels(embeddings.names, manifest_path, crops_dir)
    if target not in joined.columns:
        usable = [c for c in joined.columns if c not in ("name", "source", "matched", "relpath")]
        raise FacepipeError(f"{manifest_path} has no column {target!r}; its columns: {', '.join(usable)}")
    if group_column and group_column not in joined.columns:
        raise FacepipeError(
            f"{manifest_path} has no column {group_column!r} to keep each person on one side of the folds; "
            "name it with --group-column, or pass --group-column none if every face is a different person"
        )
    values = pd.to_numeric(joined[target], errors="coerce")
    bad = joined[target].notna() & ~values.isin([0, 1])
    if bad.any():
        examples = ", ".join(map(str, joined.loc[bad, target].unique()[:EXAMPLES_SHOWN]))
        raise FacepipeError(f"{manifest_path}: column {target!r} must hold 0/1 (or be empty); found {examples}")
    matched = joined["matched"].to_numpy(bool)
    labelled = matched & values.notna().to_numpy()
    names = np.asarray(embeddings.names, dtype=object)

    if group_column:
        identities = joined[group_column]
        no_identity = labelled & identities.isna().to_numpy()
        groups = np.where(no_identity, "face:" + pd.Series(names).astype(str), "id:" + identities.astype(str))
    else:
        no_identity = np.zeros(len(names), dtype=bool)
        groups = "face:" + pd.Series(names).astype(str).to_numpy()

    manifest = read_csv(manifest_path, what="label manifest")
    key = "relpath" if "relpath" in manifest.columns else "name"
    found_keys = set(joined.loc[matched, key].astype(str))
    without_embedding = [k for k in manifest[key].astype(str) if k not in found_keys]
    return LabelledEmbeddings(
        target=target,
        names=[str(n) for n in names[labelled]],
        vectors=embeddings.vectors[labelled],
        labels=values.to_numpy()[labelled].astype(int),
        groups=np.asarray(groups, dtype=str)[labelled],
        meta=embeddings.meta,
        unmatched=[str(n) for n in names[~matched]],
        unlabelled=[str(n) for n in names[matched & ~labelled]],
        manifest_rows_without_embedding=without_embedding,
        faces_without_identity=int(no_identity.sum()),
    )


# --- splitting and training -------------------------------------------------------------------------


def _check_trainable(labels: np.ndarray, groups: np.ndarray, folds: int, what: str) -> None:
    for value in (0, 1):
        people = len(set(groups[labels == value]))
        if people < folds:
            raise FacepipeError(
                f"{what}: only {people} different people have label {value}; at least {folds} are needed "
                f"(one per fold): label more faces or lower --folds"
            )


def identity_folds(
    labels: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds grouped by identity: (train indices, validation indices) per fold, no person on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def identity_disjoint_split(
    labels: np.ndarray, groups: np.ndarray, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): about ``holdout`` of the faces, whole identities only, stratified."""
    if not 0 < holdout < 1:
        raise FacepipeError("the held-out share must lie strictly between 0 and 1")
    parts = max(2, int(round(1 / holdout)))
    _check_trainable(labels, groups, parts, f"held-out split of {holdout:g}")
    train, held_out = identity_folds(labels, groups, parts, seed)[0]
    return train, held_out


def _fit_logistic(vectors: np.ndarray, labels: np.ndarray, C: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(vectors)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=5000, random_state=seed)
    model.fit(scaler.transform(vectors), labels)
    return scaler, model


def train_probe(
    vectors: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    *,
    target: str,
    embedding_model: str | None,
    Cs: Sequence[float] = DEFAULT_CS,
    folds: int = ProbeSettings.folds,
    seed: int = 0,
    show_progress: bool = False,
) -> LinearProbe:
    """Fit a probe: C by grouped cross-validation (pooled out-of-fold average precision), then the F1 threshold.

    Every fold standardises on its own training part. The final model is refitted on all the faces with
    the chosen C; its threshold is the one maximising F1 on the chosen C's out-of-fold probabilities.
    """
    from sklearn.metrics import average_precision_score

    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    groups = np.asarray(groups, dtype=str)
    if not len(Cs):
        raise FacepipeError("give at least one value of C")
    _check_trainable(labels, groups, folds, "cross-validation")
    splits = identity_folds(labels, groups, folds, seed)
    out_of_fold = {float(C): np.empty(len(labels)) for C in Cs}
    bar = progress(total=len(Cs) * folds, desc=f"probe {target}: C x fold", enabled=show_progress)
    for train, validation in splits:
        for C in out_of_fold:
            scaler, model = _fit_logistic(vectors[train], labels[train], C, seed)
            out_of_fold[C][validation] = model.predict_proba(scaler.transform(vectors[validation]))[:, 1]
            bar.update()
    bar.close()

    search = []
    for C, probabilities in out_of_fold.items():
        threshold, f1 = best_f1_threshold(labels, probabilities)
        search.append(
            {
                "C": C,
                "pr_auc": float(average_precision_score(labels, probabilities)),
                "best_f1": f1,
                "threshold": threshold,
            }
        )
    best = max(search, key=lambda row: (row["pr_auc"], row["best_f1"]))
    chosen_C = best["C"]
    validation_metrics = binary_metrics(labels, out_of_fold[chosen_C], out_of_fold[chosen_C] >= best["threshold"])

    scaler, model = _fit_logistic(vectors, labels, chosen_C, seed)
    return LinearProbe(
        target=target,
        coefficients=model.coef_[0].astype(np.float64),
        intercept=float(model.intercept_[0]),
        scaler_mean=scaler.mean_.astype(np.float64),
        scaler_scale=scaler.scale_.astype(np.float64),
        threshold=best["threshold"],
        C=chosen_C,
        embedding_model=embedding_model,
        embedding_dimension=int(vectors.shape[1]),
        training={
            "faces": int(len(labels)),
            "positives": int(labels.sum()),
            "negatives": int(len(labels) - labels.sum()),
            "prior": float(labels.mean()),
            "identities": int(len(set(groups))),
            "folds": folds,
            "seed": seed,
            "selection": "C by pooled out-of-fold average precision; threshold maximises out-of-fold F1",
            "C_search": search,
            "out_of_fold_metrics": validation_metrics,
        },
    )


# --- the stage functions behind the CLI -------------------------------------------------------------


def _write_evaluation(
    out_dir: Path, probe: LinearProbe, names: list[str], labels: np.ndarray, probabilities: np.ndarray, extra: dict
) -> dict:
    """Metrics next to the dummy baselines, the two plots and the per-face predictions, written in ``out_dir``."""
    predictions = (probabilities >= probe.threshold).astype(int)
    metrics = binary_metrics(labels, probabilities, predictions)
    prior = probe.training.get("prior", float(labels.mean()))
    report = dict(
        extra,
        target=probe.target,
        threshold=probe.threshold,
        metrics=metrics,
        baselines=dummy_baselines(labels, prior),
        baseline_prior=prior,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(
        out_dir / PROBE_PREDICTIONS_CSV,
        pd.DataFrame({"name": names, "probability": probabilities, "label": predictions, "true": labels}),
    )
    if metrics["pr_auc"] is not None:
        plot_pr_curve(labels, probabilities, probe.threshold, probe.target, out_dir / PROBE_PR_CURVE_PNG)
    plot_confusion_matrix(metrics["confusion_matrix"], probe.target, out_dir / PROBE_CONFUSION_PNG)
    write_json_atomic(out_dir / PROBE_METRICS_JSON, report)
    return report


@dataclass
class ProbeTrainSummary:
    """What ``train`` did; ``lines()`` is the console report."""

    probe: LinearProbe
    out: Path
    labelled: LabelledEmbeddings | None
    skipped: bool = False
    holdout: dict | None = None

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"probe train: {self.out} is up to date (same inputs and options); --force retrains"]
        t = self.probe.training
        oof = t["out_of_fold_metrics"]
        lines = list(self.labelled.missing_lines()) if self.labelled else []
        lines.append(
            f"probe train: {self.probe.target} on {t['faces']} faces ({t['positives']} positive) of {t['identities']} "
            f"people; C {self.probe.C:.3g}, threshold {self.probe.threshold:.3f}; out-of-fold F1 {oof['f1']:.3f}, "
            f"balanced accuracy {oof['balanced_accuracy']:.3f}, PR-AUC {oof['pr_auc']:.3f} -> {self.out}"
        )
        if self.holdout:
            m = self.holdout["metrics"]
            lines.append(
                f"held-out identities ({m['count']} faces, {m['positives']} positive): F1 {_fmt(m['f1'])}, precision "
                f"{_fmt(m['precision'])}, recall {_fmt(m['recall'])}, balanced accuracy {_fmt(m['balanced_accuracy'])}, "
                f"PR-AUC {_fmt(m['pr_auc'])}, ROC-AUC {_fmt(m['roc_auc'])} -> {self.holdout['report_dir']}"
            )
        return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def holdout_dir(probe_path: str | os.PathLike) -> Path:
    """Where ``train --holdout`` writes its held-out evaluation: ``probe.json`` -> ``probe_holdout/``."""
    probe_path = Path(probe_path)
    return probe_path.with_name(probe_path.stem + "_holdout")


@locks_output(lambda args: Path(os.path.abspath(args["out"])).parent)
def train(
    embeddings_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    target: str,
    out: str | os.PathLike,
    *,
    group_column: str | None = "identity",
    crops_dir: str | os.PathLike | None = None,
    holdout: float = ProbeSettings.spec()["holdout"].command_default,
    folds: int = ProbeSettings.folds,
    Cs: Sequence[float] = ProbeSettings.cs,
    seed: int = ProbeSettings.seed,
    force: bool = False,
    show_progress: bool = True,
) -> ProbeTrainSummary:
    """Train a probe for ``target`` and save it as JSON at ``out``.

    With ``holdout`` > 0, about that share of the identities is set aside first (stratified, whole
    people only); the probe is trained on the rest and evaluated on them, and the held-out metrics,
    baselines and plots go into the probe JSON and ``<out stem>_holdout/``. A rerun with the same
    inputs and options skips; different ones on an existing ``out`` are refused unless ``force``.
    """
    check_settings(ProbeSettings, holdout=holdout, folds=folds, seed=seed, cs=Cs)
    out = Path(out)
    options = {
        "target": target,
        "group_column": group_column,
        "holdout": holdout,
        "folds": folds,
        "Cs": [float(c) for c in Cs],
        "seed": seed,
        "crops_dir": None if crops_dir is None else str(crops_dir),
    }
    inputs = {
        "embeddings_sha256": file_sha256(embeddings_path) if Path(embeddings_path).is_file() else None,
        "manifest_sha256": file_sha256(manifest_path) if Path(manifest_path).is_file() else None,
    }
    if out.exists() and not force:
        previous = LinearProbe.load(out)
        if previous.training.get("options") == options and previous.training.get("inputs") == inputs:
            return ProbeTrainSummary(probe=previous, out=out, labelled=None, skipped=True)
        raise FacepipeError(f"{out} exists and was trained on other inputs or options; use --force to replace it")

    embeddings = read_embeddings(embeddings_path)
    labelled = load_labelled(embeddings, manifest_path, target, group_column=group_column, crops_dir=crops_dir)
    if not len(labelled.labels):
        raise FacepipeError(
            f"no embedding of {embeddings_path} has a {target} label in {manifest_path}: "
            + "; ".join(labelled.missing_lines())
        )
    train_index = np.arange(len(labelled.labels))
    held_out = np.array([], dtype=int)
    if holdout:
        train_index, held_out = identity_disjoint_split(labelled.labels, labelled.groups, holdout, seed)
    probe = train_probe(
        labelled.vectors[train_index],
        labelled.labels[train_index],
        labelled.groups[train_index],
        target=target,
        embedding_model=embeddings.model,
        Cs=Cs,
        folds=folds,
        seed=seed,
        show_progress=show_progress,
    )
    probe.training.update(
        options=options,
        inputs=inputs,
        embeddings=str(embeddings_path),
        manifest=str(manifest_path),
        embeddings_meta={k: v for k, v in embeddings.meta.items() if k != "count"},
        missing_labels=labelled.missing_report(),
        names=[labelled.names[i] for i in train_index],
    )
    holdout_report = (
        _evaluate_holdout(out, probe, labelled, train_index, held_out, holdout, seed) if holdout else None
    )
    probe.save(out)
    return ProbeTrainSummary(probe=probe, out=out, labelled=labelled, holdout=holdout_report)


@locks_output(lambda args: Path(os.path.abspath(args["out"])).parent)
def _evaluate_holdout(
    out: Path, probe: LinearProbe, labelled, train_index: np.ndarray, held_out: np.ndarray, holdout: float, seed: int
) -> dict:
    """The probe's metrics on the ``held_out`` identities, written to ``<out stem>_holdout/`` and recorded in the
    probe's training record (written with it)."""
    report_dir = holdout_dir(out)
    names = [labelled.names[i] for i in held_out]
    holdout_report = _write_evaluation(
        report_dir,
        probe,
        names,
        labelled.labels[held_out],
        probe.predict_proba(labelled.vectors[held_out]),
        {
            "split": f"identity-disjoint hold-out of {holdout:g} (seed {seed})",
            "identities": int(len(set(labelled.groups[held_out]))),
            "identities_shared_with_training": int(
                len(set(labelled.groups[held_out]) & set(labelled.groups[train_index]))
            ),
        },
    )
    holdout_report["report_dir"] = str(report_dir)
    probe.training["holdout"] = {
        k: holdout_report[k]
        for k in ("split", "identities", "identities_shared_with_training", "metrics", "baselines", "report_dir")
    }
    probe.training["holdout"]["names"] = names
    return holdout_report


def predict(
    probe_path: str | os.PathLike,
    embeddings_path: str | os.PathLike,
    out: str | os.PathLike,
) -> pd.DataFrame:
    """Score every embedding with a saved probe; writes ``name, probability, label`` to ``out`` and returns it."""
    probe = LinearProbe.load(probe_path)
    embeddings = read_embeddings(embeddings_path)
    probe.check_compatible(embeddings, embeddings_path)
    probabilities = probe.predict_proba(embeddings.vectors)
    frame = pd.DataFrame(
        {
            "name": embeddings.names,
            "probability": probabilities,
            "label": (probabilities >= probe.threshold).astype(int),
        }
    )
    write_predictions(out, frame)
    return frame


@dataclass
class ProbeEvaluation:
    """What ``evaluate`` measured; ``report`` is the content of ``metrics.json``."""

    report: dict
    labelled: LabelledEmbeddings
    out_dir: Path

    def lines(self) -> list[str]:
        m = self.report["metrics"]
        lines = list(self.labelled.missing_lines())
        if self.report["faces_seen_in_training"]:
            lines.append(
                f"warning: {self.report['faces_seen_in_training']} of these faces were used to train the "
                "probe: these numbers are optimistic"
            )
        lines.append(
            f"probe evaluate: {self.report['target']} on {m['count']} faces ({m['positives']} positive): "
            f"F1 {_fmt(m['f1'])}, precision {_fmt(m['precision'])}, recall {_fmt(m['recall'])}, balanced accuracy "
            f"{_fmt(m['balanced_accuracy'])}, HTER {_fmt(m['hter'])}, ROC-AUC {_fmt(m['roc_auc'])}, "
            f"PR-AUC {_fmt(m['pr_auc'])}"
        )
        for name, b in self.report["baselines"].items():
            lines.append(f"  baseline {name}: F1 {_fmt(b['f1'])}, balanced accuracy {_fmt(b['balanced_accuracy'])}")
        lines.append(
            f"  -> {self.out_dir / PROBE_METRICS_JSON}, {PROBE_PR_CURVE_PNG}, {PROBE_CONFUSION_PNG}, "
            f"{PROBE_PREDICTIONS_CSV}"
        )
        return lines


@locks_output(lambda args: args["out_dir"])
def evaluate(
    probe_path: str | os.PathLike,
    embeddings_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    crops_dir: str | os.PathLike | None = None,
) -> ProbeEvaluation:
    """Evaluate a saved probe on labelled embeddings: metrics + baselines JSON, PR curve, confusion matrix."""
    probe = LinearProbe.load(probe_path)
    embeddings = read_embeddings(embeddings_path)
    probe.check_compatible(embeddings, embeddings_path)
    labelled = load_labelled(embeddings, manifest_path, probe.target, group_column=None, crops_dir=crops_dir)
    if not len(labelled.labels):
        raise FacepipeError(
            f"no embedding of {embeddings_path} has a {probe.target} label in {manifest_path}: "
            + "; ".join(labelled.missing_lines())
        )
    seen = len(set(labelled.names) & set(probe.training.get("names", [])))
    report = _write_evaluation(
        Path(out_dir),
        probe,
        labelled.names,
        labelled.labels,
        probe.predict_proba(labelled.vectors),
        {
            "probe": str(probe_path),
            "embeddings": str(embeddings_path),
            "manifest": str(manifest_path),
            "faces_seen_in_training": seen,
            "missing_labels": labelled.missing_report(),
        },
    )
    return ProbeEvaluation(report=report, labelled=labelled, out_dir=Path(out_dir))
