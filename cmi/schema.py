"""Column lists, the 18 gestures in their fixed class order, and validation of raw files.

The class index every model uses is the position of a gesture in ``GESTURES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

TARGET_GESTURES: tuple[str, ...] = (
    "Above ear - pull hair",
    "Cheek - pinch skin",
    "Eyebrow - pull hair",
    "Eyelash - pull hair",
    "Forehead - pull hairline",
    "Forehead - scratch",
    "Neck - pinch skin",
    "Neck - scratch",
)
NON_TARGET_GESTURES: tuple[str, ...] = (
    "Write name on leg",
    "Wave hello",
    "Glasses on/off",
    "Text on phone",
    "Write name in air",
    "Feel around in tray and pull out an object",
    "Scratch knee/leg skin",
    "Pull air toward your face",
    "Drink from bottle/cup",
    "Pinch knee/leg skin",
)
GESTURES: tuple[str, ...] = TARGET_GESTURES + NON_TARGET_GESTURES
N_CLASSES = len(GESTURES)
GESTURE_INDEX: dict[str, int] = {g: i for i, g in enumerate(GESTURES)}
TARGET_INDICES: frozenset[int] = frozenset(range(len(TARGET_GESTURES)))
# Column names of the 18 class probabilities in every OOF table and prediction frame.
PROBA_COLUMNS: tuple[str, ...] = tuple(f"p{i:02d}" for i in range(N_CLASSES))

ORIENTATIONS: tuple[str, ...] = (
    "Seated Straight",
    "Seated Lean Non Dom - FACE DOWN",
    "Lie on Back",
    "Lie on Side - Non Dominant",
)
BEHAVIORS: tuple[str, ...] = (
    "Relaxes and moves hand to target location",
    "Moves hand to target location",
    "Hand at target location",
    "Performs gesture",
)
PHASES: tuple[str, ...] = ("Transition", "Gesture")
SEQUENCE_TYPES: tuple[str, ...] = ("Target", "Non-Target")

ID_COLUMNS: tuple[str, ...] = ("row_id", "sequence_id", "sequence_counter", "subject")
# Present in train.csv only; never features.
TRAIN_ONLY_COLUMNS: tuple[str, ...] = (
    "sequence_type",
    "orientation",
    "behavior",
    "phase",
    "gesture",
)
ACC_COLUMNS: tuple[str, ...] = ("acc_x", "acc_y", "acc_z")
ROT_COLUMNS: tuple[str, ...] = ("rot_w", "rot_x", "rot_y", "rot_z")
IMU_COLUMNS: tuple[str, ...] = ACC_COLUMNS + ROT_COLUMNS
THM_COLUMNS: tuple[str, ...] = tuple(f"thm_{i}" for i in range(1, 6))
N_TOF_SENSORS = 5
N_TOF_PIXELS = 64
TOF_COLUMNS: tuple[str, ...] = tuple(
    f"tof_{s}_v{p}" for s in range(1, N_TOF_SENSORS + 1) for p in range(N_TOF_PIXELS)
)
SENSOR_COLUMNS: tuple[str, ...] = IMU_COLUMNS + THM_COLUMNS + TOF_COLUMNS

TRAIN_COLUMNS: tuple[str, ...] = (
    "row_id",
    "sequence_type",
    "sequence_id",
    "sequence_counter",
    "subject",
    "orientation",
    "behavior",
    "phase",
    "gesture",
    *SENSOR_COLUMNS,
)
TEST_COLUMNS: tuple[str, ...] = ID_COLUMNS + SENSOR_COLUMNS
DEMOGRAPHICS_COLUMNS: tuple[str, ...] = (
    "subject",
    "adult_child",
    "age",
    "sex",
    "handedness",
    "height_cm",
    "shoulder_to_wrist_cm",
    "elbow_to_wrist_cm",
)

_STRING_COLUMNS = {"row_id", "sequence_id", "subject", *TRAIN_ONLY_COLUMNS}
_DEMOGRAPHICS_DTYPES: dict[str, type[pl.DataType]] = {
    "subject": pl.String,
    "adult_child": pl.Int64,
    "age": pl.Int64,
    "sex": pl.Int64,
    "handedness": pl.Int64,
    "height_cm": pl.Float64,
    "shoulder_to_wrist_cm": pl.Int64,
    "elbow_to_wrist_cm": pl.Float64,
}


def _sensor_frame_dtype(column: str) -> type[pl.DataType]:
    if column in _STRING_COLUMNS:
        return pl.String
    if column == "sequence_counter":
        return pl.Int64
    return pl.Float64


TRAIN_SCHEMA: dict[str, type[pl.DataType]] = {c: _sensor_frame_dtype(c) for c in TRAIN_COLUMNS}
TEST_SCHEMA: dict[str, type[pl.DataType]] = {c: _sensor_frame_dtype(c) for c in TEST_COLUMNS}
DEMOGRAPHICS_SCHEMA: dict[str, type[pl.DataType]] = dict(_DEMOGRAPHICS_DTYPES)

RAW_FILES: dict[str, dict[str, type[pl.DataType]]] = {
    "train.csv": TRAIN_SCHEMA,
    "train_demographics.csv": DEMOGRAPHICS_SCHEMA,
    "test.csv": TEST_SCHEMA,
    "test_demographics.csv": DEMOGRAPHICS_SCHEMA,
}


class SchemaError(ValueError):
    """A raw file does not match the competition schema; the message names file and problem."""


@dataclass(frozen=True)
class RawData:
    train: pl.DataFrame
    train_demographics: pl.DataFrame
    test: pl.DataFrame
    test_demographics: pl.DataFrame


def read_csv_checked(
    path: Path,
    schema: dict[str, type[pl.DataType]],
    reader: Callable[..., pl.DataFrame] = pl.read_csv,
) -> pl.DataFrame:
    """Read one raw CSV with the expected dtypes, raising SchemaError that names the file (and,
    for a bad value, its column and 1-based data row). ``reader`` parses the checked file
    (``pl.read_csv``'s call; the extract stage's also computes features while it parses)."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(
            f"{path}: file not found. Download the competition files with "
            "`kaggle competitions download -c cmi-detect-behavior-with-sensor-data` and unzip "
            f"them into {path.parent}/ (or run `cmi synth --preset demo --out {path.parent}`)."
        )
    if path.stat().st_size == 0:
        raise SchemaError(f"{path}: file is empty")
    header = pl.read_csv(path, n_rows=0).columns
    _check_columns(path, header, tuple(schema))
    # polars fills a short row with nulls without a word: count the fields first.
    check_row_shapes(path, len(schema))
    try:
        frame = reader(path, schema=schema)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError) as err:
        # polars refuses a row with too many fields; the counts above let one through if a
        # short row makes up for it: name the first ragged row before any bad value.
        _check_row_shapes_by_line(path, len(schema))
        raise SchemaError(_first_bad_value(path, schema)) from err
    if frame.height == 0:
        raise SchemaError(f"{path}: file has a header but no rows")
    return frame


def _at(path: Path, column: str, row_index: int) -> str:
    """Where a problem is: file, column and the 1-based data row (the header is line 1)."""
    return f"{path}: column {column!r}, data row {row_index + 1} (line {row_index + 2})"


def check_row_shapes(path: Path, n_columns: int) -> None:
    """Every data row has exactly ``n_columns`` fields and the last one a line end; a file cut
    short (an interrupted download or copy) fails here, naming the row.

    The file's commas, line ends and quotes are counted with numpy first (about 4x less CPU
    than splitting 1 GB into lines in Python); only when the totals are off are the lines
    checked one by one, to name the row. Right totals with a short row are possible only
    with a long row making up for it, and polars refuses a row with more fields than the
    schema: ``read_csv_checked`` then runs the line-by-line check before anything else.
    """
    counts = _byte_counts(path)
    if (
        not counts.quotes  # quoted fields may hold commas or line ends: the lines decide
        and counts.ends_with_line_end
        and counts.commas == (n_columns - 1) * counts.line_ends
    ):
        return
    _check_row_shapes_by_line(path, n_columns)


@dataclass(frozen=True)
class _ByteCounts:
    line_ends: int  # b"\n", the header's included
    commas: int
    quotes: int
    ends_with_line_end: bool  # False for an empty file


# Bytes per numpy step of _byte_counts: small enough that the chunk and its mask stay in cache.
_COUNT_CHUNK_BYTES = 1 << 21


def _byte_counts(path: Path) -> _ByteCounts:
    """Line ends, commas and quotes in the file, read in chunks into one reused buffer."""
    # numpy here, not at the top: bench/extract.py's floor (a plain polars read) imports
    # this module for TRAIN_SCHEMA, and should not pay for numpy's import.
    import numpy as np

    chunk = np.empty(_COUNT_CHUNK_BYTES, dtype=np.uint8)
    is_byte = np.empty(_COUNT_CHUNK_BYTES, dtype=bool)
    line_ends = commas = quotes = 0
    last = -1
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(chunk):
            data, mask = chunk[:size], is_byte[:size]
            line_ends += int(np.count_nonzero(np.equal(data, ord("\n"), out=mask)))
            commas += int(np.count_nonzero(np.equal(data, ord(","), out=mask)))
            quotes += int(np.count_nonzero(np.equal(data, ord('"'), out=mask)))
            last = int(data[-1])
    return _ByteCounts(line_ends, commas, quotes, last == ord("\n"))


def _check_row_shapes_by_line(path: Path, n_columns: int) -> None:
    """``check_row_shapes`` line by line: exact, and names the first bad row."""
    with open(path, "rb") as handle:
        next(handle, None)  # the header, already checked
        row, line = -1, b"\n"
        for row, line in enumerate(handle):
            if b'"' in line:  # quoted fields may hold commas or line ends: parse properly
                return _check_quoted_row_shapes(path, n_columns)
            fields = line.count(b",") + 1
            if fields != n_columns:
                _ragged(path, row, fields, n_columns)
    if row >= 0 and not line.endswith(b"\n"):
        raise SchemaError(
            f"{path}: data row {row + 1} (line {row + 2}) has no line end: the file looks "
            "truncated; download or copy it again"
        )
    return None


def _check_quoted_row_shapes(path: Path, n_columns: int) -> None:
    """The same check for files with quoted fields (slower, exact for commas in quotes)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row, fields in enumerate(reader):
            if len(fields) != n_columns:
                _ragged(path, row, len(fields), n_columns)


def _ragged(path: Path, row: int, fields: int, n_columns: int) -> None:
    raise SchemaError(
        f"{path}: data row {row + 1} (line {row + 2}) has {fields} field(s), the header "
        f"{n_columns}: a truncated or ragged row"
    )


def _check_columns(path: Path, found: list[str], expected: tuple[str, ...]) -> None:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if missing:
        raise SchemaError(
            f"{path}: missing column(s) {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    if extra:
        raise SchemaError(
            f"{path}: unexpected column(s) {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    if tuple(found) != expected:
        raise SchemaError(f"{path}: columns are not in the competition's order")


def _first_bad_value(path: Path, schema: dict[str, type[pl.DataType]]) -> str:
    """Why a typed read failed: the first value that does not parse, by column and row."""
    raw = pl.read_csv(path, infer_schema=False)
    for column, dtype in schema.items():
        if dtype is pl.String:
            continue
        values = raw.get_column(column)
        cast = values.cast(dtype, strict=False)
        bad = cast.is_null() & values.is_not_null() & (values.str.strip_chars() != "")
        if bad.any():
            row = int(bad.arg_max())
            return f"{_at(path, column, row)}: wrong type: {values[row]!r} is not {dtype.__name__}"
    return f"{path}: wrong type: a value does not parse"


def _first_row(mask: pl.Series) -> int | None:
    """Index of the first True in ``mask`` (nulls count as False), or None."""
    mask = mask.fill_null(False)
    return int(mask.arg_max()) if mask.any() else None


def _check_no_nulls(path: Path, frame: pl.DataFrame, columns: tuple[str, ...]) -> None:
    for column in columns:
        row = _first_row(frame.get_column(column).is_null())
        if row is not None:
            raise SchemaError(f"{_at(path, column, row)}: empty (null) value")


def _check_one_value_per_sequence(path: Path, frame: pl.DataFrame, column: str, what: str) -> None:
    """A column constant within each sequence: name the first row that differs."""
    differs = frame.select(pl.col(column) != pl.col(column).first().over("sequence_id")).to_series()
    row = _first_row(differs)
    if row is not None:
        sequence = frame["sequence_id"][row]
        raise SchemaError(
            f"{_at(path, column, row)}: sequence {sequence!r} has more than one {what} "
            f"({frame[column][row]!r} here)"
        )


def _check_counters(path: Path, frame: pl.DataFrame) -> None:
    """sequence_counter: no nulls, and strictly increasing within each sequence in file order
    (features order frames by it; a gap-free 0..n-1 is not required)."""
    _check_no_nulls(path, frame, ("sequence_counter",))
    step = frame.select(pl.col("sequence_counter").diff().over("sequence_id")).to_series()
    row = _first_row(step <= 0)
    if row is not None:
        counter = frame["sequence_counter"]
        raise SchemaError(
            f"{_at(path, 'sequence_counter', row)}: {counter[row]} does not increase "
            f"(the sequence's previous row has {counter[row] - step[row]}) in sequence "
            f"{frame['sequence_id'][row]!r}"
        )


def validate_sensor_frame(path: Path, frame: pl.DataFrame, *, labelled: bool) -> None:
    """Checks that go beyond dtypes: ids, duplicates, counters, one subject (and one gesture)
    per sequence, known gestures. Each error names file, column and 1-based data row."""
    if _passes_by_neighbours(frame, labelled=labelled):
        _check_known_gestures(path, frame, labelled=labelled)
        return
    _check_no_nulls(path, frame, ("row_id", "sequence_id", "subject"))
    repeated = _first_row(~frame.get_column("row_id").is_first_distinct())
    if repeated is not None:
        row_id = frame["row_id"][repeated]
        first = _first_row(frame.get_column("row_id") == row_id)
        assert first is not None
        raise SchemaError(
            f"{_at(path, 'row_id', repeated)}: duplicate row_id {row_id!r} "
            f"(also data row {first + 1})"
        )
    _check_counters(path, frame)
    _check_one_value_per_sequence(path, frame, "subject", "subject")
    _check_known_gestures(path, frame, labelled=labelled)
    if labelled:
        _check_one_value_per_sequence(path, frame, "gesture", "gesture")


def _check_known_gestures(path: Path, frame: pl.DataFrame, *, labelled: bool) -> None:
    if labelled:
        unknown = _first_row(~frame.get_column("gesture").is_in(list(GESTURES)))
        if unknown is not None:
            raise SchemaError(
                f"{_at(path, 'gesture', unknown)}: unknown gesture {frame['gesture'][unknown]!r}"
            )


def _passes_by_neighbours(frame: pl.DataFrame, *, labelled: bool) -> bool:
    """Whether the id, counter, subject (and gesture) checks of ``validate_sensor_frame``
    would pass, seen from neighbouring rows only (no hashing of 500k strings: ~5x less CPU
    on the full data). Holds for files sorted by sequence_id with increasing row_ids, as the
    competition's are; anything else (a failure included) goes the exact way, which also
    names the row."""
    columns = ["row_id", "sequence_id", "sequence_counter", "subject"]
    columns += ["gesture"] if labelled else []
    if frame.height < 2 or any(frame.get_column(c).null_count() for c in columns):
        return False

    def after_previous(column: str) -> pl.Expr:
        return pl.col(column) > pl.col(column).shift(1)

    def as_previous(column: str) -> pl.Expr:
        return pl.col(column) == pl.col(column).shift(1)

    same_sequence = as_previous("sequence_id")
    rules = [
        same_sequence | after_previous("sequence_id"),  # sorted: each sequence one run
        after_previous("row_id"),  # strictly increasing: no repeats
        ~same_sequence | after_previous("sequence_counter"),
        *(~same_sequence | as_previous(c) for c in columns[3:]),  # one subject (gesture)
    ]
    return bool(frame.select(pl.all_horizontal(rules).slice(1).all()).item())


def validate_demographics(
    path: Path, demographics: pl.DataFrame, sensor_frame: pl.DataFrame, sensor_path: Path
) -> None:
    """One row per subject, and one for every subject of ``sensor_frame``."""
    _check_no_nulls(path, demographics, ("subject",))
    repeated = _first_row(~demographics.get_column("subject").is_first_distinct())
    if repeated is not None:
        raise SchemaError(
            f"{_at(path, 'subject', repeated)}: duplicate subject "
            f"{demographics['subject'][repeated]!r}"
        )
    known = demographics.get_column("subject").to_list()
    row = _first_row(~sensor_frame.get_column("subject").is_in(known))
    if row is not None:
        missing = sorted(set(sensor_frame.get_column("subject").to_list()) - set(known))
        raise SchemaError(
            f"{path}: column 'subject': no demographics row for subject(s) {missing[:5]} "
            f"(first seen in {_at(sensor_path, 'subject', row)})"
        )


def read_raw_dir(
    raw_dir: Path,
    *,
    with_test: bool = True,
    train_reader: Callable[..., pl.DataFrame] = pl.read_csv,
) -> RawData:
    """Read and validate the competition CSVs in ``raw_dir``; SchemaError names the bad file.
    ``train_reader`` parses train.csv (see ``read_csv_checked``)."""
    raw_dir = Path(raw_dir)
    train_path = raw_dir / "train.csv"
    train = read_csv_checked(train_path, TRAIN_SCHEMA, train_reader)
    validate_sensor_frame(train_path, train, labelled=True)
    train_demo_path = raw_dir / "train_demographics.csv"
    train_demo = read_csv_checked(train_demo_path, DEMOGRAPHICS_SCHEMA)
    validate_demographics(train_demo_path, train_demo, train, train_path)
    test = pl.DataFrame(schema=TEST_SCHEMA)
    test_demo = pl.DataFrame(schema=DEMOGRAPHICS_SCHEMA)
    if with_test:
        test_path = raw_dir / "test.csv"
        test = read_csv_checked(test_path, TEST_SCHEMA)
        validate_sensor_frame(test_path, test, labelled=False)
        test_demo_path = raw_dir / "test_demographics.csv"
        test_demo = read_csv_checked(test_demo_path, DEMOGRAPHICS_SCHEMA)
        validate_demographics(test_demo_path, test_demo, test, test_path)
    return RawData(train, train_demo, test, test_demo)
