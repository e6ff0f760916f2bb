"""Stage 4: a conditional VAE over the face crops, conditioned on each crop's cluster.

``model``: its settings, layers and loss; ``checkpoints``: its files; ``training``: train-cvae.
"""

from facepipe.cvae.checkpoints import (
    crop_aligner,
    epoch_checkpoints,
    find_checkpoint,
    load_checkpoint,
    load_cvae,
    save_checkpoint,
)
from facepipe.cvae.model import CVAEConfig, build_model, cvae_loss, encoder_sizes
from facepipe.cvae.training import CachedCrops, TrainSummary, split_train_validation, train_cvae

__all__ = [
    "CVAEConfig",
    "CachedCrops",
    "TrainSummary",
    "build_model",
    "crop_aligner",
    "cvae_loss",
    "encoder_sizes",
    "epoch_checkpoints",
    "find_checkpoint",
    "load_checkpoint",
    "load_cvae",
    "save_checkpoint",
    "split_train_validation",
    "train_cvae",
]
