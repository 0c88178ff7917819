"""Assembling the four competition files: presets, who records what, sequences -> frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cmi.io import write_with
from cmi.schema import (
    ACC_COLUMNS,
    BEHAVIORS,
    GESTURES,
    ORIENTATIONS,
    PHASES,
    ROT_COLUMNS,
    SEQUENCE_TYPES,
    TARGET_GESTURES,
    TEST_COLUMNS,
    TEST_SCHEMA,
    THM_COLUMNS,
    TOF_COLUMNS,
    TRAIN_COLUMNS,
    TRAIN_SCHEMA,
)
from cmi.synth.kinematics import FS_HZ, lengths, sequence_motion, true_motion
from cmi.synth.sensors import sensor_readings, surfaces
from cmi.synth.subjects import SplitSpec, demographics, protocol_plan, subject_traits

FILE_NAMES = ("train.csv", "train_demographics.csv", "test.csv", "test_demographics.csv")
_ID_SPACE = 65536  # real sequence and subject numbers look drawn from 0..65535
_INFER_ROWS = 100  # polars infers dtypes from the first 100 rows: they must be full-sensor


@dataclass(frozen=True)
class SynthPreset:
    """Sizes of one synthetic data set; ``full`` mirrors the real train.csv."""

    train: SplitSpec
    test: SplitSpec
    missing_rot_share: float = 0.015  # sequences without a quaternion (at least one)


PRESETS: dict[str, SynthPreset] = {
    # 2 subjects record the whole protocol, 6 more a sample of it (CV folds need subjects).
    "tiny": SynthPreset(
        train=SplitSpec(8, n_thinned=6, thinned_sequences=6, n_upside_down=1,
                        n_imu_only_subjects=1),
        test=SplitSpec(2, n_thinned=2, thinned_sequences=10, imu_only_share=0.5),
    ),
    "demo": SynthPreset(
        train=SplitSpec(16, n_upside_down=1, n_imu_only_subjects=1),
        test=SplitSpec(5, imu_only_share=0.5),
    ),
    "full": SynthPreset(
        train=SplitSpec(81, n_upside_down=2, n_imu_only_subjects=3),
        test=SplitSpec(10, imu_only_share=0.5),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class _Cast:
    """Who is in one split and what each sequence records, before any motion is simulated.
    ``seq`` holds arrays over sequences, already in file order."""

    demographics: pl.DataFrame
    traits: dict[str, np.ndarray]
    seq: dict[str, np.ndarray]


def _cast(spec: SplitSpec, subject_ids: np.ndarray, missing_rot_share: float, rng) -> _Cast:
    demo = demographics(subject_ids, rng)
    plan, thinned = protocol_plan(spec, rng)
    traits = subject_traits(demo, spec, thinned, rng)
    seq = dict(plan)
    n = len(seq["subject"])
    seq["length"] = lengths(seq["gesture"], traits["tempo"][seq["subject"]], rng)
    imu_only = traits["imu_only"][seq["subject"]].copy()
    n_presented = round(spec.imu_only_share * n)  # the hidden test's IMU-only half
    imu_only[rng.choice(n, size=n_presented, replace=False)] = True
    no_rot = np.zeros(n, dtype=bool)
    no_rot[rng.choice(n, size=max(1, round(missing_rot_share * n)), replace=False)] = True
    seq.update(imu_only=imu_only, no_rot=no_rot)
    order = _file_order(seq, rng)
    return _Cast(demo, traits, {k: v[order] for k, v in seq.items()})


def _file_order(seq: dict, rng: np.random.Generator) -> np.ndarray:
    """Random order, except that full-sensor sequences with a quaternion come first for at
    least 100 rows, so that plain ``pl.read_csv`` infers every sensor column as Float64."""
    perm = rng.permutation(len(seq["length"]))
    complete = perm[~seq["imu_only"][perm] & ~seq["no_rot"][perm]]
    n_lead = int(np.searchsorted(np.cumsum(seq["length"][complete]), _INFER_ROWS)) + 1
    lead = complete[:n_lead]
    return np.concatenate([lead, perm[~np.isin(perm, lead)]])


def _casts(preset: SynthPreset, seed: int) -> tuple[dict[str, _Cast], dict[str, list[str]], list]:
    """Both splits' casts, their sequence ids (file order) and one simulation RNG per split.

    Separate streams keep the cast independent of the simulation: ``subject_table`` draws no
    motion, and the ``mirror_left_handed``/``upside_down`` switches of ``generate`` change
    nothing else."""
    id_rng, *split_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    specs = {"train": preset.train, "test": preset.test}
    n_subjects = [spec.n_subjects for spec in specs.values()]
    ids = id_rng.choice(_ID_SPACE, sum(n_subjects), replace=False)
    subject_ids = {"train": np.sort(ids[: n_subjects[0]]), "test": np.sort(ids[n_subjects[0] :])}
    casts = {
        split: _cast(spec, subject_ids[split], preset.missing_rot_share, split_rngs[i])
        for i, (split, spec) in enumerate(specs.items())
    }
    n_sequences = [len(cast.seq["subject"]) for cast in casts.values()]
    sequence_ids = id_rng.choice(_ID_SPACE, sum(n_sequences), replace=False)
    names = {
        "train": [f"SEQ_{i:06d}" for i in np.sort(sequence_ids[: n_sequences[0]])],
        "test": [f"SEQ_{i:06d}" for i in np.sort(sequence_ids[n_sequences[0] :])],
    }
    return casts, names, split_rngs[2:]


def _frame_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequence index and sequence_counter of every frame."""
    idx = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return idx, np.arange(len(idx)) - starts[idx]


def _lookup(values: tuple[str, ...] | list[str], codes: np.ndarray) -> pl.Series:
    return pl.Series(values, dtype=pl.String).gather(np.asarray(codes, dtype=np.int64))


def _labels(seq: dict, idx: np.ndarray, counter: np.ndarray) -> dict[str, pl.Series]:
    """The five train-only columns."""
    gesture = seq["gesture"][idx]
    move = np.where(seq["relaxed"][idx], 0, 1)  # the initial behaviour: the protocol's slot
    behavior = np.where(
        counter < seq["n_move"][idx], move, np.where(counter < seq["n_trans"][idx], 2, 3)
    )
    phase = (counter >= seq["n_trans"][idx]).astype(np.int64)
    return {
        "sequence_type": _lookup(SEQUENCE_TYPES, (gesture >= len(TARGET_GESTURES))),
        "orientation": _lookup(ORIENTATIONS, seq["orientation"][idx]),
        # "Hand at target location" rows are still Transition rows, as in the real data
        "behavior": _lookup(BEHAVIORS, behavior),
        "phase": _lookup(PHASES, phase),
        "gesture": _lookup(GESTURES, gesture),
    }


def _sensor_frame(seq: dict, names: dict, labelled: bool, rng) -> pl.DataFrame:
    """One sensor file (train.csv or test.csv) built column-wise from numpy arrays."""
    idx, counter = _frame_index(seq["length"])
    frame_keys = [k for k, v in seq.items() if isinstance(v, np.ndarray) and v.ndim >= 1]
    f = {k: seq[k][idx] for k in frame_keys}
    sensors = sensor_readings(true_motion(counter / FS_HZ, f), f, rng)
    columns: dict[str, pl.Series | np.ndarray] = {
        "sequence_id": _lookup(names["sequence_id"], idx),
        "sequence_counter": counter.astype(np.int64),
        "subject": _lookup(names["subject"], seq["subject"][idx]),
    }
    if labelled:
        columns.update(_labels(seq, idx, counter))
    for group, cols in (("acc", ACC_COLUMNS), ("rot", ROT_COLUMNS), ("thm", THM_COLUMNS)):
        columns.update({c: sensors[group][:, j] for j, c in enumerate(cols)})
    columns.update({c: sensors["tof"][j] for j, c in enumerate(TOF_COLUMNS)})
    del sensors, f
    frame = pl.DataFrame(columns, nan_to_null=True)
    row_id = pl.format(
        "{}_{}", "sequence_id", pl.col("sequence_counter").cast(pl.String).str.zfill(6)
    )
    frame = frame.with_columns(row_id.alias("row_id"))
    schema = TRAIN_SCHEMA if labelled else TEST_SCHEMA
    return frame.select(TRAIN_COLUMNS if labelled else TEST_COLUMNS).cast(schema)


def _simulate(
    cast: _Cast, sequence_ids: list[str], labelled: bool, rng, *, mirror: bool, flip: bool
) -> pl.DataFrame:
    """The sensor file of one split: motion and sensors of every sequence of its cast."""
    traits, seq = cast.traits, dict(cast.seq)
    s = seq["subject"]
    seq["left"] = traits["left"][s] & mirror
    seq["upside_down"] = traits["upside_down"][s] & flip
    seq["acc_bias"] = traits["acc_bias"][s]
    sequence_motion(seq, traits, rng)
    surfaces(seq, traits, rng)
    names = {
        "sequence_id": sequence_ids,
        "subject": cast.demographics.get_column("subject").to_list(),
    }
    return _sensor_frame(seq, names, labelled, rng)


def _preset(preset: str) -> SynthPreset:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def generate(
    preset: str, seed: int = 0, *, mirror_left_handed: bool = True, upside_down: bool = True
) -> dict[str, pl.DataFrame]:
    """The four competition files as frames with the exact real schema, for ``preset``.

    ``mirror_left_handed=False`` lets left-handed subjects move like right-handed ones and
    ``upside_down=False`` has every subject wear the device the normal way; everything else
    (every random draw) stays the same, so each switch makes a twin data set for tests and
    ablations. Which subjects are which: ``subject_table``.
    """
    p = _preset(preset)
    casts, names, sim_rngs = _casts(p, seed)
    frames = {}
    for (split, cast), rng in zip(casts.items(), sim_rngs, strict=True):
        frames[f"{split}.csv"] = _simulate(
            cast, names[split], split == "train", rng, mirror=mirror_left_handed, flip=upside_down
        )
        frames[f"{split}_demographics.csv"] = cast.demographics
    return {name: frames[name] for name in FILE_NAMES}


def subject_table(preset: str, seed: int = 0) -> pl.DataFrame:
    """One row per subject of ``generate(preset, seed)``: ``split``, ``subject``,
    ``left_handed``, ``upside_down``, ``imu_only`` (recorded without thm/ToF),
    ``whole_protocol`` (records the protocol, not a sample of it), ``n_sequences``.
    Cheap: no motion is simulated. These traits are not columns of the competition files."""
    casts, _, _ = _casts(_preset(preset), seed)
    tables = []
    for split, cast in casts.items():
        t = cast.traits
        tables.append(
            pl.DataFrame(
                {
                    "split": split,
                    "subject": cast.demographics.get_column("subject"),
                    "left_handed": t["left"],
                    "upside_down": t["upside_down"],
                    "imu_only": t["imu_only"],
                    "whole_protocol": ~t["thinned"],
                    "n_sequences": np.bincount(cast.seq["subject"], minlength=len(t["left"])),
                }
            )
        )
    return pl.concat(tables)


def write_synthetic(preset: str, out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Generate ``preset`` and write the four CSVs into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = generate(preset, seed)
    written = {}
    for name in FILE_NAMES:
        # Atomic: readers (and a killed `make repro`) never see half a file.
        written[name] = write_with(out_dir / name, frames.pop(name).write_csv)
    return written
