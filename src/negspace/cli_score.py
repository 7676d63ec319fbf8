"""``negspace score``: apply a detector to a large image collection, one Parquet row per image.

The CLI layer: the collection is listed and the output folder checked before any model loads;
images are encoded and scored a chunk at a time (bounded memory), each chunk written as one
complete Parquet part, so a re-run (after a crash, a ``kill -9``) skips what is written.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from negspace.collection import PartWriter, chunks, collection_paths
from negspace.errors import NegspaceError

log = logging.getLogger("negspace")

PROVENANCE = "provenance.json"  # written beside a detector saved by `negspace eval --save-detector`
_STATIC = ("mcm", "neglabel")


def write_provenance(folder: Path, info: dict[str, Any]) -> None:
    """What `negspace score` needs to know about a saved detector: its model and ID threshold."""
    (folder / PROVENANCE).write_text(json.dumps(info, indent=1), encoding="utf-8")


def read_provenance(folder: Path) -> dict[str, Any]:
    path = folder / PROVENANCE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _detector(args: argparse.Namespace, encoder: Any) -> Any:
    """The saved detector (frozen), or a static method built from its options."""
    if args.detector is not None:
        from negspace.detectors.registry import load_detector

        try:
            return load_detector(args.detector, backend=args.scoring_backend, device=str(encoder.device))
        except ValueError as err:
            raise NegspaceError(f"--detector: {err}.") from None
    from negspace.classnames import load_class_names
    from negspace.cli import METHODS, BuildContext
    from negspace.cli_bench import _eval_namespace

    classes = load_class_names(args.classes)
    eval_args = _eval_namespace(args, args.method, args.classes)
    return METHODS[args.method](BuildContext(eval_args, encoder, classes.names, 0))


def _threshold(args: argparse.Namespace, detector: Any, encoder: Any, provenance: dict[str, Any]) -> tuple[float, str]:
    """The flag threshold and where it came from: given, chosen at 95% recall of --threshold-id
    images, or the one saved with the detector."""
    from negspace.metrics import threshold_at_id_recall

    if args.threshold is not None:
        return args.threshold, "--threshold"
    if args.threshold_id is not None:
        from negspace.data import open_image_set

        id_set = open_image_set(args.threshold_id)
        encoding = encoder.encode_image_files(id_set.paths, batch_size=args.batch_size, progress=not args.quiet)
        if len(encoding.features) == 0:
            raise NegspaceError(f"--threshold-id {args.threshold_id}: none of its images could be read.")
        scores = detector.score_features(encoding.features)
        return float(threshold_at_id_recall(scores)), f"95% recall of the {len(scores)} ID images of {args.threshold_id}"
    if "threshold_95_id_recall" in provenance:
        return float(provenance["threshold_95_id_recall"]), f"saved with the detector ({provenance.get('id_set', 'its ID set')})"
    raise NegspaceError("No threshold for the OOD flag: give --threshold T, or --threshold-id ID_IMAGES to choose "
                        "the one that keeps 95% of them, or a --detector saved by `negspace eval --save-detector`.")


def run(args: argparse.Namespace) -> int:
    """`negspace score`."""
    if (args.detector is None) == (args.method is None):
        raise NegspaceError("Give either --detector DIR (a saved detector) or --method with --classes.")
    if args.method is not None and args.classes is None:
        raise NegspaceError(f"--method {args.method} needs --classes.")
    if args.method is not None and args.method not in _STATIC:
        raise NegspaceError(f"--method {args.method} learns from the stream; learn it on a sample with "
                            f"`negspace eval --method {args.method} --save-detector DIR`, then score with --detector DIR.")
    provenance = read_provenance(args.detector) if args.detector is not None else {}
    if args.detector is not None and not args.detector.is_dir():
        raise NegspaceError(f"--detector {args.detector} is not a folder.")
    from negspace.features_table import is_feature_table, read_feature_table

    is_table = {s: is_feature_table(s) for s in args.sources}
    if args.engine == "ray" and (any(is_table.values()) or args.detector is None):
        raise NegspaceError("--engine ray scores image files with a saved --detector DIR (save one with "
                            "`negspace eval --save-detector DIR` or det.save(DIR)); feature tables need no encoding: "
                            "score them with --engine local.")
    tables = [read_feature_table(s) for s, table in is_table.items() if table]  # features: no encoding
    image_sources = [s for s, table in is_table.items() if not table]
    paths = collection_paths(image_sources) if image_sources else []  # listed before any model loads
    paths += [Path(p) for table in tables for p in table.paths]
    writer = PartWriter(args.out)
    done = writer.done()
    todo = [p for p in paths if str(p) not in done]
    if provenance and args.model_was_default and "model" in provenance:
        args.model, args.weights = provenance["model"], args.weights or _existing(provenance.get("weights"))
    from negspace.cli import _encoder

    encoder = _encoder(args)
    detector = _detector(args, encoder)
    if getattr(detector, "frozen", True) is False:
        raise NegspaceError("The detector learns from the stream; freeze it first (negspace.load_detector gives it frozen).")
    _check_model(provenance, encoder)
    threshold, threshold_source = _threshold(args, detector, encoder, provenance)
    names = detector.class_names or []
    summary = {"engine": args.engine, "sources": list(args.sources), "images": len(paths),
               "already_written": len(paths) - len(todo), "scored": 0, "flagged_ood": 0, "skipped_unreadable": 0,
               "threshold": threshold, "threshold_source": threshold_source, "model": args.model,
               "detector": str(args.detector or args.method)}
    skipped_log = args.out / "_skipped.csv"  # "_" files are not read as parts by pyarrow/pandas
    if args.engine == "ray":
        _score_with_ray(args, todo, writer, encoder, threshold, summary)
    else:
        _score_locally(args, todo, tables, writer, encoder, detector, threshold, names, summary)
    (args.out / "_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"{summary['scored']:,} images scored ({summary['already_written']:,} already written, "
          f"{summary['skipped_unreadable']:,} unreadable{', listed in ' + str(skipped_log) if summary['skipped_unreadable'] else ''}); "
          f"{summary['flagged_ood']:,} flagged OOD at threshold {threshold:.6g} ({threshold_source}).")
    print(f"Rows in {args.out} (Parquet parts; read them with pandas.read_parquet('{args.out}'))")
    return 0


def _score_locally(args, todo, tables, writer, encoder, detector, threshold, names, summary) -> None:
    """This process: chunks of images (or feature-table rows) scored and written; counts into ``summary``."""
    from tqdm import tqdm

    from negspace.features_table import check_model

    known = {}  # path -> (table, row) for the rows given as features
    for table in tables:
        check_model(table, encoder)
        known.update({p: (table, i) for i, p in enumerate(table.paths)})
    with tqdm(total=len(todo), desc="Scoring images", unit="img", disable=args.quiet or not todo) as bar:
        for chunk in chunks(todo, args.chunk_size):
            encoding = _features_of(chunk, known, encoder, args.batch_size)
            if len(encoding.features):
                rows = score_rows(detector, encoding, threshold, names, args.batch_size)
                writer.write(rows)
                summary["flagged_ood"] += int(np.sum(rows["ood"]))
            summary["scored"] += len(encoding.features)
            if encoding.skipped:
                _append_skipped(args.out / "_skipped.csv", encoding.skipped)
                summary["skipped_unreadable"] += len(encoding.skipped)
            bar.update(len(chunk))


def score_rows(detector: Any, encoding: Any, threshold: float, names: list[str], batch_size: int) -> dict[str, Any]:
    """One row per encoded image: path, content hash, score, OOD flag, nearest ID class and negative."""
    from negspace.evaluate import score_in_batches

    scores = score_in_batches(detector.score_features, encoding.features, batch_size)
    nearest_id, nearest_negative = detector.nearest_labels(encoding.features)
    flags = scores < threshold
    return {"path": [str(p) for p in encoding.paths], "sha256": list(encoding.hashes), "score": scores,
            "ood": flags, "id_class": [names[i] if i < len(names) else str(i) for i in nearest_id],
            "top_negative": nearest_negative}


def _features_of(chunk: Any, known: dict[str, Any], encoder: Any, batch_size: int) -> Any:
    """A chunk's features: the rows of feature tables as they are, image files encoded (cached)."""
    from negspace.encoders.base import ImageEncoding

    files = [p for p in chunk if str(p) not in known]
    encoded = encoder.encode_image_files(files, batch_size=batch_size, progress=False) if files else None
    rows = [known[str(p)] for p in chunk if str(p) in known]
    if not rows:
        return encoded
    given = ImageEncoding(np.stack([t.features[i] for t, i in rows]), [Path(t.paths[i]) for t, i in rows], [],
                          [t.hashes[i] for t, i in rows])
    if encoded is None:
        return given
    return ImageEncoding(np.concatenate([encoded.features, given.features]), encoded.paths + given.paths,
                         encoded.skipped, encoded.hashes + given.hashes)


def run_embed(args: argparse.Namespace) -> int:
    """`negspace embed`: image features as Parquet parts of (path, sha256, feature), resumable."""
    from tqdm import tqdm

    from negspace.features_table import embedding_rows, table_metadata, with_metadata

    paths = collection_paths(args.sources)
    writer = PartWriter(args.out)
    done = writer.done()
    todo = [p for p in paths if str(p) not in done]
    from negspace.cli import _encoder

    encoder = _encoder(args)
    meta = table_metadata(encoder)
    if args.engine == "ray":
        return _embed_with_ray(args, todo, len(paths), writer, encoder, meta)
    written = skipped = 0
    with tqdm(total=len(todo), desc="Embedding images", unit="img", disable=args.quiet or not todo) as bar:
        for chunk in chunks(todo, args.chunk_size):
            encoding = encoder.encode_image_files(chunk, batch_size=args.batch_size, progress=False)
            if len(encoding.features):
                writer.write_table(with_metadata(embedding_rows(encoding), meta))
            if encoding.skipped:
                _append_skipped(args.out / "_skipped.csv", encoding.skipped)
            written, skipped = written + len(encoding.features), skipped + len(encoding.skipped)
            bar.update(len(chunk))
    print(f"{written:,} image features written to {args.out} ({len(paths) - len(todo):,} already there, "
          f"{skipped:,} unreadable); use it as --id/--ood of `negspace eval`, a source of `negspace score`, "
          f"or --features of eval, bench and score")
    return 0


def _ray_rows(args: argparse.Namespace, todo: list[Path], encoder: Any, **kwargs: Any) -> Any:
    """The Ray pipeline's row batches for ``todo`` (model actors on GPUs where the cluster has them)."""
    from negspace.engines import ray_engine

    if not todo:  # everything is written already: no cluster to start
        return iter(())
    ray_engine.start_ray(args.ray_address)
    gpus = ray_engine.cluster_gpus()
    actors = args.ray_actors or max(1, gpus)
    recipe = ray_engine.ModelRecipe(args.model, str(args.weights) if args.weights else None,
                                    "cuda" if gpus else "cpu", args.preprocess)
    log.info("Ray engine: %d model actor(s)%s", actors, f" on {gpus} GPU(s)" if gpus else " on CPUs")
    return ray_engine.run_pipeline(todo, recipe, encoder.backend.pixel_transform(), batch_size=args.batch_size,
                                   chunk_size=args.chunk_size, actors=actors, gpus_per_actor=1.0 if gpus else 0.0,
                                   address=args.ray_address, **kwargs)


class _Failed:
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


def _split_failed(batch: dict[str, Any], out: Path) -> tuple[np.ndarray, int]:
    """Which rows of a Ray batch were decoded; the others go to ``_skipped.csv``."""
    ok = np.array([not r for r in batch["reason"]], dtype=bool)
    failed = [_Failed(str(p), str(r)) for p, r, good in zip(batch["path"], batch["reason"], ok) if not good]
    if failed:
        _append_skipped(out / "_skipped.csv", failed)
    return ok, len(failed)


def _score_with_ray(args, todo, writer, encoder, threshold, summary) -> None:
    """The Ray pipeline's rows written as the local engine writes them; counts into ``summary``."""
    columns = ("path", "sha256", "score", "ood", "id_class", "top_negative")
    for batch in _ray_rows(args, todo, encoder, detector_dir=str(args.detector), threshold=threshold):
        ok, failed = _split_failed(batch, args.out)
        summary["skipped_unreadable"] += failed
        if ok.any():
            rows = {c: [str(v) for v in batch[c][ok]] if c in ("path", "sha256", "id_class", "top_negative")
                    else batch[c][ok] for c in columns}
            writer.write(rows)
            summary["scored"] += int(ok.sum())
            summary["flagged_ood"] += int(np.sum(batch["ood"][ok]))


def _embed_with_ray(args, todo, n_paths, writer, encoder, meta) -> int:
    import pyarrow as pa

    from negspace.features_table import with_metadata

    written = skipped = 0
    for batch in _ray_rows(args, todo, encoder):
        ok, failed = _split_failed(batch, args.out)
        skipped += failed
        if ok.any():
            features = np.asarray(batch["feature"][ok], dtype=np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), features.shape[1])
            table = pa.table({"path": [str(p) for p in batch["path"][ok]],
                              "sha256": [str(h) for h in batch["sha256"][ok]], "feature": column})
            writer.write_table(with_metadata(table, meta))
            written += int(ok.sum())
    print(f"{written:,} image features written with Ray to {args.out} ({n_paths - len(todo):,} already there, "
          f"{skipped:,} unreadable)")
    return 0


def _append_skipped(path: Path, skipped: list[Any]) -> None:
    import csv

    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["path", "reason"])
        writer.writerows([str(s.path), s.reason] for s in skipped)


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).exists() else None


def _check_model(provenance: dict[str, Any], encoder: Any) -> None:
    saved = provenance.get("weights_fingerprint")
    if saved and saved != encoder.fingerprint:
        raise NegspaceError(f"The detector was built with model {provenance.get('model')} (weights {saved}); this run "
                            f"loads {encoder.spec} (weights {encoder.fingerprint}): pass the detector's --model and --weights.")

