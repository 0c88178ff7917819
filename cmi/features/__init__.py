"""The one feature code path: per-frame channels (Torch) and per-sequence statistics (LightGBM).

Training (``stages/extract.py``, the whole train table at once) and inference (one sequence
per call) run exactly the same two functions: ``prepare_sensor_frame`` then
``compute_features``. After ``prepare_sensor_frame`` everything is numpy over the rows sorted
by (sequence_id, sequence_counter), where each sequence is a contiguous run of rows; the
batch is vectorized over blocks of ~16k rows of whole sequences (no Python loop per
sequence) and a single sequence is simply a batch of one, so both give the same numbers.

Frame channels (``frame_channels``), all Float32:
- IMU, never null: raw ``acc_x/y/z``; the unit quaternion ``rot_w/x/y/z`` with w >= 0;
  ``linear_acc_x/y/z`` (gravity removed); ``angular_vel_x/y/z`` (rad/s, device frame) and
  ``angular_distance`` (rad to the next frame; the last frame repeats the previous value);
  ``acc_mag``, ``linear_acc_mag``; ``acc_mag_jerk`` (d|acc|/dt; the first frame repeats the
  second's).
- modality (names start with "thm"/"tof"): ``thm_1..5``; per ToF sensor s ``tof_s_mean`` and
  ``tof_s_min`` of the valid pixels, ``tof_s_invalid`` (share of -1 pixels) and, with
  ``tof_regions``, ``tof_s_r0..r3`` (mean of valid pixels of the four 4x4 quadrants). They are
  null when the sensor reported nothing in the whole sequence (all of them for IMU-only
  sequences); gaps inside a sequence are forward/backward filled.

Sequence features (``sequence_feature_names``): for every frame channel the statistics in
``WHOLE_STATS`` over the whole sequence and ``SEGMENT_STATS`` over each of ``n_segments``
consecutive segments (``<channel>__<stat>``, ``<channel>__seg<k>_<stat>``), then ``length``
and the demographics (``DEMOGRAPHIC_FEATURES``; null for an unknown subject).

Handedness: ``handedness`` is a feature (and a column of the sequence table). With
``ExtractParams.mirror_left_handed`` the sensors of left-handed subjects (demographics
handedness == 0; unknown subjects are not mirrored) are first turned into their right-handed
mirror image (``channels.SensorBlock.mirrored``), inside ``compute_features``: training and
inference take the same path, so they cannot disagree.

The five train-only columns never reach this module's outputs: ``prepare_sensor_frame``
keeps only ids and sensor columns.

Modules: ``names`` (what is computed, in which order), ``prepare`` (input coercion),
``groups`` (row runs of sequences, gap filling), ``channels`` (frame channels), ``stats``
(sequence statistics), ``compute`` (``compute_features`` and its output tables).
"""

from cmi.features.channels import TOF_NO_REFLECTION
from cmi.features.compute import FeatureSet, compute_features
from cmi.features.names import (
    DEMOGRAPHIC_FEATURES,
    IMU_CHANNELS,
    QUANTILES,
    SEGMENT_STATS,
    SEQUENCE_TABLE_COLUMNS,
    WHOLE_STATS,
    frame_channels,
    is_modality_channel,
    sequence_feature_names,
)
from cmi.features.prepare import MISSING_SEQUENCE_ID, PREPARED_SCHEMA, prepare_sensor_frame

__all__ = [
    "DEMOGRAPHIC_FEATURES",
    "IMU_CHANNELS",
    "MISSING_SEQUENCE_ID",
    "PREPARED_SCHEMA",
    "QUANTILES",
    "SEGMENT_STATS",
    "SEQUENCE_TABLE_COLUMNS",
    "TOF_NO_REFLECTION",
    "WHOLE_STATS",
    "FeatureSet",
    "compute_features",
    "frame_channels",
    "is_modality_channel",
    "prepare_sensor_frame",
    "sequence_feature_names",
]
