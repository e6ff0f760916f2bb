"""How generated faces compare with the real crops of their person, whatever model made them: sharpness (the
variance of the Laplacian), spread (the mean difference between the faces of a set, in pixels, after each face's
brightness and contrast are taken out, and in an embedding) and realism (a kernel distance between the feature
vectors of generated and real faces). generate's fidelity.json and the benchmarks use them."""

from __future__ import annotations

import numpy as np

KID_DEGREE = 3  # KID's cubic polynomial kernel (Binkowski et al. 2018), here on unit-length face descriptors


def laplacian_sharpness(images: np.ndarray) -> np.ndarray:
    """Sharpness of uint8 RGB images (n, S, S, 3): the variance of the Laplacian (3x3) of their grey levels
    (0..255) -> (n,). A blurred or ghosted face scores lower; compare images of the same size only."""
    import cv2

    grey = np.asarray(images, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.array([cv2.Laplacian(g, cv2.CV_64F, ksize=1).var() for g in grey])


def standardised(images: np.ndarray) -> np.ndarray:
    """Each image (n, S, S, 3) shifted and scaled to mean 0 and standard deviation 1 over its pixels: what is
    left differs in more than brightness and contrast."""
    values = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    values = (values - values.mean(axis=1, keepdims=True)) / np.maximum(values.std(axis=1, keepdims=True), 1e-6)
    return values.reshape(np.shape(images))


def pairwise_difference(images: np.ndarray, standardise: bool = False) -> float:
    """The mean absolute difference between every two images of a set (uint8 (n, S, S, 3)), in levels 0..1, or
    with ``standardise`` in standard deviations of each image (``standardised``); NaN for fewer than 2."""
    if len(images) < 2:
        return float("nan")
    values = standardised(images) if standardise else np.asarray(images, dtype=np.float64) / 255.0
    values = values.reshape(len(values), -1)
    first, second = np.triu_indices(len(values), 1)
    return float(np.mean([np.abs(values[i] - values[j]).mean() for i, j in zip(first, second)]))


def pairwise_cosine_distance(vectors: np.ndarray) -> float:
    """The mean 1 - cosine between every two feature vectors (n, d); NaN for fewer than 2."""
    if len(vectors) < 2:
        return float("nan")
    unit = np.asarray(vectors, dtype=np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    first, second = np.triu_indices(len(unit), 1)
    return float(np.mean(1.0 - np.sum(unit[first] * unit[second], axis=1)))


def kernel_distance(generated: np.ndarray, real: np.ndarray) -> float:
    """KID: the unbiased squared maximum mean discrepancy between two sets of feature vectors (n, d) and
    (m, d) under the cubic polynomial kernel (cosine + 1) ^ 3: face descriptors are compared by their
    direction, so each is taken at unit length (where the usual x . y / d + 1 would be about 1 for any two).
    About 0 when both come from one distribution; NaN for sets under 2."""
    x, y = (np.asarray(v, dtype=np.float64) for v in (generated, real))
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y))

    def kernel(a, b):
        return (a @ b.T + 1.0) ** KID_DEGREE

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean()
    )


def relative(values, references) -> float:
    """The mean over clusters of value / reference (each a per-cluster list), NaN pairs left out."""
    ratios = [v / r for v, r in zip(values, references) if np.isfinite(v) and np.isfinite(r) and r > 0]
    return float(np.mean(ratios)) if ratios else float("nan")
