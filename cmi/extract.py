"""The extract stage's work: raw CSVs -> the sequences table and both feature tables.

train.csv is parsed once, in batches, from the start, and a second thread computes the
features of each batch's complete sequences while the next batch parses: polars keeps about
one core busy parsing, the features and read_raw_dir's own line checks use the other.
Validation is exactly ``cmi.schema.read_raw_dir``'s: the parsed rows are its train table, and
nothing is returned (so nothing written) unless every file validates. The features are the
shared path's (``cmi.features.compute_features``), one batch of whole sequences at a time;
every feature depends on one sequence only, so batches change nothing.

With ``extract.fix_upside_down`` the upside-down detector (``cmi.wear``) is fitted on the
whole parsed table once the parse is done; the sequences of the subjects it flags are computed
again from their rows rotated back (``cmi.wear.pipeline.rotate_subjects``, the raw-frame
transform inference applies too), the sequences table gets an ``upside_down`` column and
``wear_model.json`` the fitted detector (``{"enabled": false}`` when off).
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cmi.features import FeatureSet, compute_features, prepare_sensor_frame
from cmi.io import atomic_path, write_json, write_with
from cmi.params import ExtractParams
from cmi.paths import ProjectPaths
from cmi.schema import (
    DEMOGRAPHICS_SCHEMA,
    TRAIN_SCHEMA,
    SchemaError,
    read_csv_checked,
    read_raw_dir,
)
from cmi.sequences import sequence_labels, sequences_table
from cmi.wear.fit import WearFit
from cmi.wear.pipeline import fit_for_extract, rotate_subjects, upside_down_column, wear_record

# Rows per parsed batch: ~120 MB of CSV, so the features thread starts early and the batches
# in flight stay small next to the whole table.
BATCH_ROWS = 65_536
# lz4: the tables are an intermediate cache, written once and read by every model stage;
# lz4 writes and reads ~2x faster than zstd for files ~25% larger.
PARQUET_COMPRESSION = "lz4"


@dataclass(frozen=True)
class ExtractOutputs:
    sequences: pl.DataFrame  # cmi.sequences.SEQUENCES_COLUMNS (+ upside_down when fixed)
    features: FeatureSet
    wear: WearFit | None = None  # the upside-down detector, when extract.fix_upside_down


def extract(raw_dir: Path, params: ExtractParams) -> ExtractOutputs:
    """Validate every raw file and compute the features of train.csv's sequences."""
    return _extract(FeatureStream(raw_dir, params).start())


def extract_to(paths: ProjectPaths, params: ExtractParams) -> ExtractOutputs:
    """``extract``, and the three tables written to ``paths``. The feature tables are written
    while the test files still validate, beside their targets, and put in place only once
    every file has validated: a bad input leaves earlier outputs untouched."""
    stream = FeatureStream(paths.raw_dir, params, stage_to=paths).start()
    outputs = _extract(stream)
    tables = [(outputs.sequences, paths.sequences)]
    try:
        if not stream.settle_writes(outputs.features):
            tables += _feature_tables(paths, outputs.features)
        _write_parquets(tables, json_files=[(wear_record(outputs.wear), paths.wear_model)])
    except BaseException:
        stream.cancel()
        raise
    return outputs


def _extract(stream: FeatureStream) -> ExtractOutputs:
    try:
        raw = read_raw_dir(stream.raw_dir, train_reader=stream.read_csv)
        features = stream.result(raw.train, raw.train_demographics)
        sequences = sequences_table(features.sequences, sequence_labels(raw.train))
        wear = stream.wear
        if wear is not None:
            sequences = sequences.with_columns(upside_down_column(sequences["subject"], wear))
    except BaseException:
        stream.cancel()  # a bad file: stop the threads, delete what they wrote
        raise
    return ExtractOutputs(sequences, features, wear)


def _feature_tables(paths: ProjectPaths, features: FeatureSet) -> list[tuple[pl.DataFrame, Path]]:
    return [
        (features.sequence_features, paths.sequence_features),
        (features.frame_features, paths.frame_features),
    ]


def _write_parquets(
    tables: list[tuple[pl.DataFrame, Path]], json_files: list[tuple[dict, Path]] = ()
) -> None:
    """Each table (and JSON file) atomically, side by side (compression and fsync of one
    overlap the others)."""
    with ThreadPoolExecutor(len(tables) + len(json_files)) as pool:
        done = [pool.submit(_write_parquet, frame, target) for frame, target in tables]
        done += [pool.submit(write_json, payload, target) for payload, target in json_files]
        for future in done:
            future.result()


def _write_parquet(frame: pl.DataFrame, target: Path) -> None:
    write_with(target, lambda tmp: frame.write_parquet(tmp, compression=PARQUET_COMPRESSION))


class _Discarded(Exception):
    """A staged table is not wanted: atomic_path then deletes its temp file."""


class _StagedWrite:
    """A table written now, on a thread of its own, to a temp file beside ``target``, and
    put in place only by ``settle(True)``; ``settle(False)`` deletes it (cmi.io.atomic_path
    does both)."""

    def __init__(self, frame: pl.DataFrame, target: Path) -> None:
        self._decided = threading.Event()
        self._keep = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, args=(frame, target), name="write")
        self._thread.start()

    def settle(self, keep: bool) -> None:
        self._keep = keep
        self._decided.set()
        self._thread.join()
        if keep and self._error is not None:
            raise self._error

    def _write(self, frame: pl.DataFrame, target: Path) -> None:
        try:
            with atomic_path(target) as tmp:
                frame.write_parquet(tmp, compression=PARQUET_COMPRESSION)
                self._decided.wait()
                if not self._keep:
                    raise _Discarded
        except _Discarded:
            pass
        except BaseException as err:  # raised by settle(True), on the main thread
            self._error = err


_END = object()  # the parse finished: compute what is left


class FeatureStream:
    """Parses train.csv and computes its features on two threads of their own, for
    ``read_raw_dir``, which takes the parsed table through ``read_csv``.

    ``start`` begins parsing at once, in batches, so the parse overlaps read_raw_dir's header
    and row-shape checks; a second thread computes the features of each batch's complete
    sequences (a sequence cut by a batch boundary waits for the rest of its rows). read_raw_dir
    still decides: ``read_csv`` hands it the parsed table, or re-raises the parse error, only
    when it asks for it, after its own checks. ``result`` then gives the FeatureSet of the
    whole table; if the file's layout does not allow batches (a sequence's rows not
    contiguous) or the validated demographics differ from those the thread used, it computes
    everything again from the validated table.
    """

    def __init__(
        self, raw_dir: Path, params: ExtractParams, stage_to: ProjectPaths | None = None
    ) -> None:
        self.raw_dir = Path(raw_dir)
        self._train_path = self.raw_dir / "train.csv"
        self._demographics_path = self.raw_dir / "train_demographics.csv"
        self._params = params
        self._stage_to = stage_to
        self._staged: list[_StagedWrite] = []
        self._batches: queue.SimpleQueue[pl.DataFrame | object] = queue.SimpleQueue()
        self._parsed: list[pl.DataFrame] = []
        self._parse_error: BaseException | None = None
        self._parts: list[FeatureSet] = []
        self._features: FeatureSet | None = None  # of every part, once the parse is done
        self._wear: WearFit | None = None  # fitted by the features thread (fix_upside_down)
        self._wear_from: pl.DataFrame | None = None  # ... on this table
        self._demographics: pl.DataFrame | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._parser = threading.Thread(target=self._parse, name="parse")
        self._computer = threading.Thread(target=self._compute_batches, name="features")

    def start(self) -> FeatureStream:
        self._parser.start()
        self._computer.start()
        return self

    def read_csv(self, path: Path, schema: dict[str, type[pl.DataType]]) -> pl.DataFrame:
        """``pl.read_csv(path, schema=schema)`` for read_raw_dir: train.csv as the parse
        thread read it (its parse error, if any, raised here unchanged, so read_raw_dir names
        the bad value), anything else read now."""
        if Path(path) != self._train_path or schema != TRAIN_SCHEMA:
            return pl.read_csv(path, schema=schema)
        self._parser.join()
        if self._parse_error is not None:
            raise self._parse_error
        return pl.concat(self._parsed) if self._parsed else pl.DataFrame(schema=schema)

    def result(self, train: pl.DataFrame, demographics: pl.DataFrame) -> FeatureSet:
        """Features of every sequence of ``train`` (the validated table ``read_csv`` gave)."""
        self._computer.join()
        if self._error is not None:
            raise self._error
        features = self._features
        usable = self._demographics is not None and self._demographics.equals(demographics)
        if (
            not usable
            or features is None
            or features.sequences["sequence_id"].is_duplicated().any()
            or (self._params.fix_upside_down and not _same_table(self._wear_from, train))
        ):
            self._wear = fit_for_extract(train, self._params)
            flagged = self._wear.upside_down_subjects if self._wear is not None else ()
            sensor = prepare_sensor_frame(rotate_subjects(train, flagged))
            return compute_features(sensor, demographics, self._params)
        return features

    @property
    def wear(self) -> WearFit | None:
        """The upside-down detector the features used (after ``result``); None when off."""
        return self._wear

    def cancel(self) -> None:
        """Stop both threads (a raw file failed validation): the parse after the batch it is
        on, the features after the one they are on."""
        self._cancelled.set()
        self._batches.put(_END)
        for thread in (self._parser, self._computer):
            if thread.is_alive():
                thread.join()
        for staged in self._staged:
            staged.settle(keep=False)

    def settle_writes(self, features: FeatureSet) -> bool:
        """Put the feature tables written while the other files validated in place if they
        are ``features`` (the validated result), else delete them; whether they were."""
        keep = bool(self._staged) and features is self._features
        for staged in self._staged:
            staged.settle(keep)
        return keep

    def _parse(self) -> None:
        try:
            scan = pl.scan_csv(self._train_path, schema=TRAIN_SCHEMA)
            for batch in scan.collect_batches(chunk_size=BATCH_ROWS):
                if self._cancelled.is_set():
                    break  # dropping the batch iterator stops polars' query
                self._parsed.append(batch)
                self._batches.put(batch)
        except BaseException as err:  # re-raised by read_csv, on the main thread
            self._parse_error = err
        finally:
            self._batches.put(_END)

    def _compute_batches(self) -> None:
        try:
            self._demographics = _read_demographics(self._demographics_path)
            carry: pl.DataFrame | None = None
            while (batch := self._batches.get()) is not _END:
                if self._cancelled.is_set():
                    return
                rows = batch if carry is None else pl.concat([carry, batch])
                cut = _last_sequence_start(rows)
                if cut:
                    self._compute(rows.slice(0, cut))
                carry = rows.slice(cut)
            if carry is not None and carry.height and not self._cancelled.is_set():
                self._compute(carry)
            if self._parts and not self._cancelled.is_set():
                if self._params.fix_upside_down:
                    if self._parse_error is not None:
                        return  # read_csv raises it; no table to fit on
                    self._fix_upside_down(pl.concat(self._parsed))
                # here, not in result(): it overlaps with the validation of the other files
                self._features = _concat(self._parts)
                if self._stage_to is not None:
                    tables = _feature_tables(self._stage_to, self._features)
                    self._staged = [_StagedWrite(frame, target) for frame, target in tables]
        except BaseException as err:  # re-raised by result(), on the main thread
            self._error = err

    def _compute(self, rows: pl.DataFrame) -> None:
        # NaN/inf are left to compute_features (the same numbers): one pass less over the rows
        sensor = prepare_sensor_frame(rows, non_finite_to_null=False)
        self._parts.append(compute_features(sensor, self._demographics, self._params))

    def _fix_upside_down(self, train: pl.DataFrame) -> None:
        """Fit the detector on the whole table and replace the features of the flagged
        subjects' sequences (computed as recorded) by those of their rows rotated back."""
        self._wear = fit_for_extract(train, self._params)
        self._wear_from = train
        flagged = self._wear.upside_down_subjects if self._wear is not None else ()
        if not flagged:
            return
        rows = rotate_subjects(train.filter(pl.col("subject").is_in(list(flagged))), flagged)
        fixed = compute_features(prepare_sensor_frame(rows), self._demographics, self._params)
        ids = fixed.sequences.get_column("sequence_id").implode()
        others = pl.col("sequence_id").is_in(ids).not_()
        kept = [
            FeatureSet(
                part.sequences.filter(others),
                part.sequence_features.filter(others),
                part.frame_features.filter(others),
            )
            for part in self._parts
        ]
        self._parts = [*kept, fixed]


def _same_table(fitted_on: pl.DataFrame | None, train: pl.DataFrame) -> bool:
    """Whether the detector was fitted on ``train`` (the parse thread's table is the one
    read_csv handed to validation; its height and ids are a cheap check of that)."""
    return (
        fitted_on is not None
        and fitted_on.height == train.height
        and fitted_on.get_column("sequence_id").equals(train.get_column("sequence_id"))
    )


def _read_demographics(path: Path) -> pl.DataFrame | None:
    """The demographics the features use; None if the file is bad (read_raw_dir then fails
    on it with the full message, and nothing is written)."""
    try:
        return read_csv_checked(path, DEMOGRAPHICS_SCHEMA)
    except SchemaError:
        return None


def _last_sequence_start(rows: pl.DataFrame) -> int:
    """Row where the table's last run of one sequence_id begins (it may go on in the next
    batch); 0 if the table is one run."""
    ids = rows.get_column("sequence_id").to_numpy()
    changes = np.flatnonzero(ids[1:] != ids[:-1])
    return int(changes[-1]) + 1 if len(changes) else 0


def _concat(parts: list[FeatureSet]) -> FeatureSet:
    """One FeatureSet from per-batch ones, in the contract's order (by sequence_id, frames
    by counter: each part is sorted, and a sequence lives in one part). Parts that follow one
    another in sequence_id order (train.csv's own order) are only concatenated: a stable sort
    would keep them as they are, after gathering all ~100 frame columns once more."""
    parts = [part for part in parts if part.sequences.height] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    in_order = _in_id_order(parts)

    def joined(table: str) -> pl.DataFrame:
        rows = pl.concat([getattr(part, table) for part in parts])
        return rows if in_order else rows.sort("sequence_id", maintain_order=True)

    return FeatureSet(*(joined(t) for t in ("sequences", "sequence_features", "frame_features")))


def _in_id_order(parts: list[FeatureSet]) -> bool:
    """Whether each part's last sequence_id comes before the next part's first (each part
    being sorted, their concatenation then is)."""
    bounds = [part.sequences.get_column("sequence_id") for part in parts]
    return all(a[-1] < b[0] for a, b in itertools.pairwise(bounds))
