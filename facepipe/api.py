"""facepipe from Python, array in and array out: the stages' own code on photos and vectors in memory (for
notebooks; the commands work on files). Run from the repository root, the examples use the bundled photos:

>>> import facepipe
>>> from facepipe.images import load_image_rgb
>>> photos = [load_image_rgb(f"assets/samples/images/{name}") for name in (
...     "Kofi_Annan/Kofi_Annan_0001.jpg", "Kofi_Annan/Kofi_Annan_0002.jpg", "Hans_Blix/Hans_Blix_0001.jpg")]
>>> crops = [crop for photo in photos for crop in facepipe.find_faces(photo)]
>>> len(crops), crops[0].shape  # Hans Blix's photo also holds the man behind him
(4, (224, 224, 3))
>>> vectors = facepipe.embed_faces(crops)
>>> vectors.shape
(4, 128)
>>> facepipe.group_faces(vectors).tolist()  # Kofi Annan twice: a group; the other two once each: unknown (-1)
[0, 0, -1, -1]
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from facepipe.detectors import COMBINED
from facepipe.models import DLIB_RESNET128, unit_rows
from facepipe.settings import ClusterSettings, GenerateSettings


def find_faces(rgb: np.ndarray, detector: str = COMBINED, **settings) -> list[np.ndarray]:
    """The faces of one RGB photo (H, W, 3 uint8) as detect cuts them: square crops grown by the margin and
    resized (224 px by default), largest face first. ``settings`` are ``detect.DetectorParams`` fields
    (``min_neighbors``, ``margin``, ``size``, ``max_side``...)."""
    from facepipe.detect import DetectorParams, check_params, face_finder, square_crop
    from facepipe.detectors import find_faces as faces_in

    params = DetectorParams(detector=detector, **settings)
    check_params(params)
    faces = faces_in(np.ascontiguousarray(rgb, dtype=np.uint8), face_finder(params), params.max_side)
    return [
        square_crop(rgb, face.box, params.margin, params.size) for face in faces[: 1 if params.largest_only else None]
    ]


def embed_faces(
    crops: Sequence[np.ndarray], model: str = DLIB_RESNET128, device: str = "auto", face_margin: float | None = 0.2
) -> np.ndarray:
    """Face crops (H, W, 3 uint8; from ``find_faces``, whose margin ``face_margin`` is) -> float32 (n, dim)
    embeddings of ``model`` (models.MODEL_NAMES), as embed computes them."""
    from facepipe.models.registry import load_embedder

    return load_embedder(model, device=device, face_margin=face_margin, show_progress=False).embed(list(crops))


def group_faces(
    vectors: np.ndarray,
    model: str = DLIB_RESNET128,
    threshold: float | str = ClusterSettings.threshold,
    min_group_size: int = ClusterSettings.min_group_size,
    seed: int = ClusterSettings.seed,
    restarts: int = ClusterSettings.n_init,
) -> np.ndarray:
    """Group embeddings (n, dim) of ``model`` as ``cluster --method graph`` does: faces closer than the
    same-person distance (``threshold``; "auto": the model's measured rule) are linked, Chinese whispers picks
    the groups -> int64 (n,) group ids, 0 the largest, -1 for faces that match no group. The settings are
    checked as cluster's (``settings.ClusterSettings``)."""
    from facepipe.common import FacepipeError
    from facepipe.grouping import best_whispers, finish_groups, neighbour_graph, same_person_distance, unmatched_faces

    ClusterSettings(threshold=threshold, min_group_size=min_group_size, seed=seed, n_init=restarts)  # checks them
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = unit_rows(vectors)
    distance = same_person_distance(threshold, model, True)
    if distance is None:
        raise FacepipeError(f"no same-person distance is known for {model}: give a threshold")
    graph = neighbour_graph(vectors, distance)
    labels = best_whispers(graph, seed, restarts)
    photos = np.arange(len(vectors))  # each face its own photo: no same-photo rule
    return finish_groups(vectors, labels, unmatched_faces(labels, graph), photos, min_group_size).labels


def decode(
    checkpoint: str | Path = "weights",
    clusters: Sequence[int] | None = None,
    samples: int = 0,
    temperature: float = GenerateSettings.temperature,
    seed: int = GenerateSettings.seed,
    device: str = GenerateSettings.device,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A trained CVAE's face of each cluster (z = 0) -> uint8 (n, S, S, 3), and ``samples`` random draws per
    cluster (z ~ N(0, temperature^2 I)), as generate decodes them; ``checkpoint`` is a file or a weights folder."""
    from facepipe.common import resolve_device
    from facepipe.cvae import find_checkpoint, load_cvae
    from facepipe.generate import decode_faces

    device = resolve_device(device)
    model, config, _ = load_cvae(find_checkpoint(checkpoint), device)
    return decode_faces(
        model,
        config,
        list(config.clusters) if clusters is None else list(clusters),
        samples,
        seed,
        device,
        temperature,
    )
