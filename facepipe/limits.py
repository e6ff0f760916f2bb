"""The range of every numeric setting, one table per stage, in a module that imports nothing heavy.

The command-line options take their click types from these tables (``cli.limited``), the run config is
checked through those options, and each stage function checks its own arguments against the same table
(``check_limits``), so a Python caller is refused with the same bounds as the command line. Worker counts
are not bounded here but capped by the CPUs this process may use (``usable_workers``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from facepipe.common import FacepipeError, is_auto, usable_cpus
from facepipe.cvae_settings import (
    MAX_ALIGN_PADDING,
    MAX_BASE_CHANNELS,
    MAX_DRAW_IDENTITY,
    MAX_EPOCHS,
    MAX_IDENTITY_JITTER,
    MAX_IMAGE_SIZE,
    MAX_LATENT_DIM,
    MAX_TEMPERATURE,
    MIN_IMAGE_SIZE,
)
from facepipe.models import DLIB_MAX_CHIP_PADDING


@dataclass(frozen=True)
class Limit:
    """The range of one numeric setting: whole numbers (``whole``) or finite numbers from ``low`` to ``high``
    (None: no bound on that side), each bound excluded where its ``*_open`` says so."""

    low: float | None = None
    high: float | None = None
    whole: bool = True
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """``a whole number from 1 to 100``, ``a finite number above 0 and at most 1``..."""
        kind = "a whole number" if self.whole else "a finite number"
        low = None if self.low is None else f"{'above' if self.low_open else 'at least'} {self._shown(self.low)}"
        high = None if self.high is None else f"{'below' if self.high_open else 'at most'} {self._shown(self.high)}"
        if low and high and not (self.low_open or self.high_open):
            return f"{kind} from {self._shown(self.low)} to {self._shown(self.high)}"
        return " ".join([kind, " and ".join(bound for bound in (low, high) if bound)]).strip()

    def _shown(self, bound: float) -> str:
        return str(int(bound)) if self.whole else f"{bound:g}"

    def admits(self, value) -> bool:
        """Whether ``value`` is a number of this kind within this range (True, False and nan are not)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.whole else numbers.Real):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or self.low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high or self.high_open and value == self.high)


def option_name(name: str) -> str:
    """A stage argument as the command line spells it: ``min_neighbors`` -> ``--min-neighbors``."""
    return "--" + name.replace("_", "-")


def check_limits(table: dict[str, Limit], **values) -> None:
    """Refuse the first of ``values`` outside its range in ``table``, naming the option; "auto" passes (the
    stage resolves it)."""
    for name, value in values.items():
        if is_auto(value) or table[name].admits(value):
            continue
        raise FacepipeError(f"{option_name(name)} {value!r} is out of range: it must be {table[name].describe()}")


def config_limit_problems(config: dict) -> list[str]:
    """Every numeric value of a run config (``facepipe.config.load_config``) outside its stage's range."""
    problems = []
    for section, table in CONFIG_SECTIONS.items():
        for key, value in config.get(section, {}).items():
            if key in table and key != "k_range" and not is_auto(value) and not table[key].admits(value):
                problems.append(f"[{section}] {key} = {value!r} is out of range: it must be {table[key].describe()}")
    return problems


def usable_workers(requested: int) -> int:
    """``requested`` worker processes, but no more than the CPUs this process may use (more would only wait
    for them, and hundreds of thousands would never start)."""
    return min(int(requested), usable_cpus())


SEED = Limit(0, 2**32 - 1)  # NumPy's, scikit-learn's and PyTorch's seeds all take these
WORKERS = Limit(1)  # no more than usable_workers start, however many are asked for
SAME_PERSON_THRESHOLD = Limit(0, 4, whole=False, low_open=True, high_open=True)  # L2 between unit vectors: < 2
MAX_K = 10_000

DETECT = {
    "max_side": Limit(64, 16_384),
    "scale_factor": Limit(1.01, 2.0, whole=False),
    "min_neighbors": Limit(0, 1_000),
    "min_size": Limit(1, 16_384),
    "dlib_upsample": Limit(0, 3),
    "dlib_threshold": Limit(-10, 10, whole=False),
    "cnn_max_side": Limit(64, 16_384),
    "margin": Limit(0, 2, whole=False),
    "size": Limit(16, 4_096),
    "workers": WORKERS,
    "max_pixels": Limit(1, 1_000_000_000),  # about 9 bytes a pixel while a worker decodes the photo
}

EMBED = {
    "batch_size": Limit(1, 4_096),
    "workers": WORKERS,
    "dlib_padding": Limit(0, DLIB_MAX_CHIP_PADDING, whole=False),
}

CLUSTER = {
    "threshold": SAME_PERSON_THRESHOLD,
    "min_group_size": Limit(1, 1_000_000),
    "k": Limit(1, MAX_K),
    "k_range": Limit(2, MAX_K),  # each of START, STOP and STEP (STEP from 1)
    "seed": SEED,
    "n_init": Limit(1, 100),
    "samples_per_cluster": Limit(1, 400),
}

TRAIN_CVAE = {
    "image_size": Limit(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    "align_padding": Limit(0, MAX_ALIGN_PADDING, whole=False),
    "latent_dim": Limit(1, MAX_LATENT_DIM),
    "base_channels": Limit(1, MAX_BASE_CHANNELS),
    "max_channels": Limit(1, MAX_BASE_CHANNELS),
    "epochs": Limit(1, MAX_EPOCHS),
    "batch_size": Limit(1, 1 << 16),
    "learning_rate": Limit(0, 1, whole=False, low_open=True),
    "beta": Limit(0, 10_000, whole=False),
    "mean_anchor": Limit(0, 1e6, whole=False),
    "detail_weight": Limit(0, 1e6, whole=False),
    "identity_weight": Limit(0, 1e6, whole=False),
    "draw_identity": Limit(0, MAX_DRAW_IDENTITY, whole=False),
    "identity_jitter": Limit(0, MAX_IDENTITY_JITTER, whole=False),
    "val_fraction": Limit(0, 1, whole=False, high_open=True),
    "seed": SEED,
    "keep_last": Limit(1, MAX_EPOCHS),
    "workers": Limit(0),  # DataLoader processes: 0 loads in this one
}

GENERATE = {
    "cluster": Limit(0, 2**31 - 1),  # each --cluster; which ones the model knows is the checkpoint's
    "samples": Limit(0, 1_024),
    "temperature": Limit(0, MAX_TEMPERATURE, whole=False),
    "seed": SEED,
}

PROBE = {
    "holdout": Limit(0, 0.9, whole=False),
    "folds": Limit(2, 100),
    "cs": Limit(1e-8, 1e8, whole=False),  # each value of C in --cs
    "seed": SEED,
}

ASSIGN = {
    "threshold": SAME_PERSON_THRESHOLD,
    "workers": WORKERS,
}

SUGGEST = {
    "outlier_distance": SAME_PERSON_THRESHOLD,
}

REVIEW = {
    "port": Limit(0, 65_535),  # 0: a free port
}

CONFIG_SECTIONS = {"detect": DETECT, "embed": EMBED, "cluster": CLUSTER, "train_cvae": TRAIN_CVAE,
                   "generate": GENERATE, "probe": PROBE}  # run-config section -> its stage's table
