"""The detector's settings, made and checked in one place: `DetectorSettings`.

The six numbers that decide what the AITHU detector computes (k, the SMOTE ratio and k, SMOTE's seed,
the domain-wise normalisation and its density k) travel together as one frozen object, from the
command's options (`DetectorSettings.of`) or a bundle's member document (`DetectorSettings.from_dict`)
to the fitting (`asdtool.detect.knn`), the bundle's export and its load. They are checked when the
object is made, so nothing downstream checks them again.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from asdtool.config.choices import Normalise
from asdtool.core.errors import AsdError


def _whole(value: Any) -> bool:
    """True for an integer (Python's or numpy's), False for a bool, a float or anything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class DetectorSettings:
    """What the detector is told: the k nearest bank points, SMOTE of the target domain, the normalisation."""

    k: int = 1  # score = mean cosine distance to the k nearest bank points (the paper: 1)
    smote_ratio: float = 1.0  # SMOTE makes the target domain this many times the source clips (0: off)
    smote_k: int = 5  # neighbours SMOTE interpolates between (clipped to target clips - 1)
    seed: int = 0  # SMOTE's random seed
    normalise: str = "none"  # a `Normalise` value: none, domain-z or local-density
    density_k: int = 2  # local-density: neighbours of the density radius

    def __post_init__(self) -> None:
        if not _whole(self.k) or self.k < 1:
            raise AsdError(f"k must be 1 or more, got {self.k!r}")
        if not _whole(self.smote_k) or self.smote_k < 1:
            raise AsdError(f"SMOTE k must be 1 or more, got {self.smote_k!r}")
        ratio = self.smote_ratio
        if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool) or not (math.isfinite(ratio) and ratio >= 0):
            raise AsdError(f"SMOTE ratio must be 0 or more, got {ratio!r}")
        if not _whole(self.seed):
            raise AsdError(f"seed must be an integer, got {self.seed!r}")
        if self.normalise not in Normalise.values():
            raise AsdError(f"normalise must be one of {Normalise.listed()}, got {self.normalise!r}")
        if not _whole(self.density_k) or self.density_k < 1:
            raise AsdError(f"density k must be an integer of 1 or more, got {self.density_k!r}")
        for name, kind in (("k", int), ("smote_ratio", float), ("smote_k", int), ("seed", int), ("density_k", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))  # plain Python numbers: JSON as they are

    @classmethod
    def of(cls, options: Any) -> DetectorSettings:
        """Return the settings held by a command's options (any object with the six attributes)."""
        return cls(**{name: getattr(options, name) for name in FIELDS})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectorSettings:
        """Return the settings of a bundle member's `detector` document (every field present, no other)."""
        missing, extra = [f for f in FIELDS if f not in values], sorted(set(values) - set(FIELDS))
        if missing or extra:
            raise AsdError(f"detector settings need exactly {', '.join(FIELDS)}"
                           + (f"; missing {', '.join(missing)}" if missing else "")
                           + (f"; unknown {', '.join(extra)}" if extra else ""))  # fmt: skip
        return cls(**{name: values[name] for name in FIELDS})

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as a bundle member's `detector` document (plain JSON types, fixed key order)."""
        return asdict(self)

    def score_attrs(self) -> dict[str, Any]:
        """Return the root attributes of scores.h5 that record the normalisation ({} for none)."""
        import numpy as np

        if self.normalise == Normalise.NONE.value:
            return {}
        attrs: dict[str, Any] = {"detect_normalise": self.normalise}
        if self.normalise == Normalise.LOCAL_DENSITY.value:
            attrs["detect_density_k"] = np.int64(self.density_k)
        return attrs


FIELDS = ("k", "smote_ratio", "smote_k", "seed", "normalise", "density_k")
