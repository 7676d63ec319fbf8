"""``negspace score`` and ``negspace embed``: a large image collection, one Parquet row per image.

The options become a :class:`~negspace.collections_api.ScoreConfig`, a
:class:`~negspace.collections_api.CollectionConfig` and a model config; the runs are
:func:`negspace.collections_api.score_collection` and :func:`~negspace.collections_api.embed_collection`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from negspace.cli import options
from negspace.cli.eval import CLASSES_HELP
from negspace.collections_api import (
    STATIC_METHODS,
    CollectionConfig,
    ScoreConfig,
    embed_collection,
    model_of_detector,
    score_collection,
)


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    sc = commands.add_parser(
        "score", parents=[common], help="score a large image collection: one Parquet row per image, resumable"
    )
    sc.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image folders, .txt path lists, or .parquet/.csv tables of paths (FILE:COLUMN; column 'path' by default)",
    )
    sc.add_argument(
        "--out", type=Path, required=True, help="folder of Parquet parts to write (a re-run skips what is in it)"
    )
    sc.add_argument("--detector", type=Path, help="a detector saved by `negspace eval --save-detector` or det.save()")
    sc.add_argument(
        "--method",
        metavar="{" + ",".join(STATIC_METHODS) + "}",
        help="or a static method, built from --classes (methods that learn from the stream are "
        "saved with `negspace eval --save-detector` and scored with --detector)",
    )
    sc.add_argument("--classes", help="with --method: " + CLASSES_HELP)
    sc.add_argument("--threshold", type=options.finite_float, help="flag images scoring below this as OOD")
    sc.add_argument(
        "--threshold-id",
        metavar="ID_IMAGES",
        help="or choose the threshold that keeps 95%% of these ID images (folder or list)",
    )
    sc.add_argument(
        "--overwrite",
        action="store_true",
        help="start --out afresh: remove the rows (and records) a previous score run wrote there; without "
        "it, --out must hold this detector's and model's rows or none",
    )
    options.add_collection_options(sc)
    sc.set_defaults(run=run_score)

    em = commands.add_parser(
        "embed", parents=[common], help="image features as Parquet (path, sha256, feature), for eval, bench and score"
    )
    em.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="image folders, .txt path lists, or .parquet/.csv tables of paths"
    )
    em.add_argument(
        "--out", type=Path, required=True, help="folder of Parquet parts to write (a re-run skips what is in it)"
    )
    options.add_collection_options(em)
    em.set_defaults(run=run_embed)


def collection_config(args: argparse.Namespace) -> CollectionConfig:
    return CollectionConfig(
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        ray_timeout=args.ray_timeout,
    )


def _model_given(args: argparse.Namespace) -> bool:
    return any(a == "--model" or a.startswith("--model=") for a in args.command_line)


def run_score(args: argparse.Namespace) -> int:
    """`negspace score`."""
    config = ScoreConfig(
        detector=args.detector,
        method=args.method,
        classes=args.classes,
        threshold=args.threshold,
        threshold_id=args.threshold_id,
        scoring_backend=args.scoring_backend,
    )
    config.check()
    model = options.model_config(args)
    if not _model_given(args):  # the detector's own model, with this command's other model options
        model = model_of_detector(args.detector, model)
    summary = score_collection(
        args.sources, args.out, config, model=model, collection=collection_config(args), overwrite=args.overwrite
    )
    skipped_log = args.out / "_skipped.csv"
    duplicates = summary["duplicate_paths"]
    listed = f", listed in {skipped_log}" if summary["skipped_unreadable"] else ""
    repeated = f", {duplicates:,} paths named a file already listed" if duplicates else ""
    threshold = f"{summary['threshold']:.6g} ({summary['threshold_source']})"
    print(
        f"{summary['scored']:,} images scored ({summary['already_written']:,} already written, "
        f"{summary['skipped_unreadable']:,} unreadable{listed}{repeated}); "
        f"{summary['flagged_ood']:,} flagged OOD at threshold {threshold}."
    )
    in_folder = summary["flagged_ood_in_folder"]
    print(
        f"{summary['rows_in_folder']:,} rows in {args.out}, {in_folder:,} flagged OOD (Parquet "
        f"parts; read them with pandas.read_parquet('{args.out}'))"
    )
    return 0


def run_embed(args: argparse.Namespace) -> int:
    """`negspace embed`."""
    counts = embed_collection(
        args.sources, args.out, model=options.model_config(args), collection=collection_config(args)
    )
    if args.engine == "ray":
        print(
            f"{counts['written']:,} image features written with Ray to {args.out} ({counts['already_there']:,} "
            f"already there, {counts['skipped_unreadable']:,} unreadable)"
        )
        return 0
    print(
        f"{counts['written']:,} image features written to {args.out} ({counts['already_there']:,} already there, "
        f"{counts['skipped_unreadable']:,} unreadable); use it as --id/--ood of `negspace eval`, a source of "
        f"`negspace score`, or --features of eval, bench and score"
    )
    return 0
