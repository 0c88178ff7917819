"""The `cmi` command: validate raw data, make synthetic data, predict, package a submission."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cmi.fallback import TooManyFallbacksError
from cmi.schema import RAW_FILES, SchemaError, read_raw_dir


def _cmd_validate(args: argparse.Namespace) -> int:
    raw = read_raw_dir(args.dir)
    print(
        f"{args.dir}: OK ({', '.join(RAW_FILES)}): "
        f"{raw.train['sequence_id'].n_unique()} train sequences, {raw.train.height} rows, "
        f"{raw.train_demographics.height} train subjects, "
        f"{raw.test['sequence_id'].n_unique()} test sequences"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from cmi.synth import write_synthetic

    paths = write_synthetic(args.preset, Path(args.out), seed=args.seed)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cmi.submission import predict_file

    predict_file(
        test_csv=Path(args.test),
        demographics_csv=Path(args.demographics),
        out=Path(args.out),
        bundle_dir=Path(args.bundle) if args.bundle else None,
        seed=args.seed,
    )
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from cmi.submission import package_submission

    package_submission(Path(args.out), bundle_dir=Path(args.bundle))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmi", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser(
        "validate",
        help="check the four competition CSVs in DIR against the real schema (columns, "
        "types, truncated or ragged rows, ids, counters, labels); errors name file, column "
        "and 1-based data row",
    )
    validate.add_argument(
        "dir", type=Path, help="folder with train.csv, test.csv, *_demographics.csv"
    )
    validate.set_defaults(func=_cmd_validate)

    synth = sub.add_parser("synth", help="write a realistic synthetic dataset with the real schema")
    synth.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo")
    synth.add_argument("--out", required=True, help="output folder (e.g. data/raw)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synth)

    predict = sub.add_parser(
        "predict",
        help="run a bundle over test.csv like Kaggle's local gateway; write submission.parquet",
    )
    predict.add_argument("--test", required=True, help="test.csv")
    predict.add_argument("--demographics", required=True, help="test_demographics.csv")
    predict.add_argument("--out", default="submission.parquet")
    predict.add_argument(
        "--bundle", default=None, help="bundle folder (default: $MODEL_PATH or models/bundle)"
    )
    predict.add_argument("--seed", type=int, default=None, help="seed of the random sequence order")
    predict.set_defaults(func=_cmd_predict)

    package = sub.add_parser(
        "package",
        help="write a folder to upload as a Kaggle dataset (bundle, wheel, notebook script)",
    )
    package.add_argument("--out", required=True)
    package.add_argument(
        "--bundle", default="models/bundle", help="pulled from the DVC remote if missing"
    )
    package.set_defaults(func=_cmd_package)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (SchemaError, FileNotFoundError, ValueError, TooManyFallbacksError) as err:
        print(f"cmi {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
