"""Blend weights as inference applies them: a light module on the Kaggle path.

``cmi.blend`` fits the weights on OOF tables (and needs scikit-learn for that);
``cmi.inference`` and the bundle reader only need this record of the result, so it lives
here, with nothing heavier than the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class BlendError(ValueError):
    """The OOF tables or the ensemble params cannot be blended; the message says which."""


def normalize_weights(w_lgbm: float, w_torch: float, source: str = "params.yaml") -> dict:
    """``{"lgbm": w, "torch": w}`` summing to 1; negative, non-finite or all-zero is an error."""
    for key, value in (("w_lgbm", w_lgbm), ("w_torch", w_torch)):
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise BlendError(f"{source}: ensemble.{key} must be a finite number (got {value!r})")
        if value < 0:
            raise BlendError(f"{source}: ensemble.{key} must be >= 0 (got {value})")
    total = float(w_lgbm) + float(w_torch)
    if total <= 0:
        raise BlendError(
            f"{source}: ensemble.w_lgbm + ensemble.w_torch must be > 0 "
            f"(got {w_lgbm} + {w_torch}); set at least one of them positive"
        )
    if abs(total - 1.0) < 1e-9:  # already normalized: keep the values exactly (idempotent)
        return {"lgbm": float(w_lgbm), "torch": float(w_torch)}
    return {"lgbm": float(w_lgbm) / total, "torch": float(w_torch) / total}


@dataclass(frozen=True)
class BlendWeights:
    """What models/blend/weights.json holds and inference applies."""

    default: dict
    by_sensor_group: dict | None
    optimize: str

    def for_group(self, sensor_group: str | None) -> dict:
        if self.by_sensor_group and sensor_group in self.by_sensor_group:
            return self.by_sensor_group[sensor_group]
        return self.default

    def to_json(self) -> dict:
        return {
            "default": self.default,
            "by_sensor_group": self.by_sensor_group,
            "optimize": self.optimize,
        }

    @classmethod
    def from_json(cls, payload: dict, source: str = "weights.json") -> BlendWeights:
        try:
            default = normalize_weights(
                payload["default"]["lgbm"], payload["default"]["torch"], source
            )
            groups = payload.get("by_sensor_group")
            by_group = (
                {g: normalize_weights(w["lgbm"], w["torch"], source) for g, w in groups.items()}
                if groups
                else None
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise BlendError(f"{source}: malformed blend weights ({err!r})") from err
        return cls(default, by_group, str(payload.get("optimize", "none")))
