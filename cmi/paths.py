"""Where every stage reads and writes, relative to the project root (the DVC workspace)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path = Path(".")

    def _p(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    @property
    def params(self) -> Path:
        return self._p("params.yaml")

    @property
    def raw_dir(self) -> Path:
        return self._p("data", "raw")

    # extract
    @property
    def features_dir(self) -> Path:
        return self._p("data", "features")

    @property
    def sequences(self) -> Path:
        """sequence_id, subject, gesture, label, sensor_group, length, handedness."""
        return self.features_dir / "sequences.parquet"

    @property
    def sequence_features(self) -> Path:
        """sequence_id + one column per LightGBM feature, in feature order."""
        return self.features_dir / "sequence_features.parquet"

    @property
    def frame_features(self) -> Path:
        """sequence_id, sequence_counter + one Float32 column per Torch input channel."""
        return self.features_dir / "frame_features.parquet"

    @property
    def wear_model(self) -> Path:
        """The upside-down detector (cmi.wear) extract fitted, or {"enabled": false}."""
        return self.features_dir / "wear_model.json"

    # folds
    @property
    def folds(self) -> Path:
        """sequence_id, fold."""
        return self._p("data", "folds", "folds.parquet")

    # model stages
    @property
    def oof_dir(self) -> Path:
        return self._p("data", "oof")

    def oof(self, model: str) -> Path:
        """sequence_id, fold, y_true, sensor_group, p00..p17 for model in {lgbm, torch, blend}."""
        return self.oof_dir / f"{model}.parquet"

    @property
    def lgbm_dir(self) -> Path:
        return self._p("models", "lgbm")

    @property
    def torch_dir(self) -> Path:
        return self._p("models", "torch")

    @property
    def orientation_dir(self) -> Path:
        """The orientation stage's fold models (fold_k.txt) and meta.json."""
        return self._p("models", "orientation")

    @property
    def blend_dir(self) -> Path:
        return self._p("models", "blend")

    @property
    def bundle_dir(self) -> Path:
        return self._p("models", "bundle")

    @property
    def metrics_dir(self) -> Path:
        return self._p("metrics")

    def metrics(self, name: str) -> Path:
        return self.metrics_dir / f"{name}.json"

    def live_dir(self, stage: str) -> Path:
        """dvclive's folder of a training stage: metrics.json (its metrics) and plots/."""
        return self._p("dvclive", stage)

    @property
    def plots_dir(self) -> Path:
        return self._p("plots")

    @property
    def checkpoints_dir(self) -> Path:
        """Undeclared in dvc.yaml and git-ignored: survives DVC's output cleanup."""
        return self._p("checkpoints")
