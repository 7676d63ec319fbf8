"""Features as data: ``(path, sha256, feature)`` rows in Parquet, what `negspace embed` writes.

A cluster job writes them once; ``eval`` and ``score`` read them in place of image folders (a
table is a set: its rows are the images), and ``--features TABLE`` lets ``eval``, ``bench`` and
``score`` reuse them for the image files they do have (looked up by content hash, so paths may
differ between machines). Each Parquet part carries the model that made it in its schema
metadata (key ``negspace``): features of another model are refused, never mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negspace.collection import read_parquet
from negspace.errors import DatasetError, arg

META_KEY = b"negspace"


def table_metadata(encoder: Any) -> dict[str, Any]:
    return {"model": encoder.spec, "weights_fingerprint": encoder.fingerprint, "dim": int(encoder.dim)}


def embedding_rows(encoding: Any) -> Any:
    """A pyarrow table of one encoded chunk: path, sha256, feature (fixed-size float32 lists)."""
    import pyarrow as pa

    features = np.ascontiguousarray(encoding.features, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), features.shape[1] if features.size else 0)
    return pa.table({"path": [str(p) for p in encoding.paths], "sha256": list(encoding.hashes), "feature": column})


def with_metadata(table: Any, meta: dict[str, Any]) -> Any:
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def is_feature_table(spec: str | Path) -> bool:
    """A ``.parquet`` file, or a folder of ``part-*.parquet`` files, with a ``feature`` column.

    Raises:
        DatasetError: a ``.parquet`` file that cannot be read as Parquet.
    """
    path = Path(spec)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path] if path.suffix == ".parquet" else []
    if not files or not files[0].is_file():
        return False
    return "feature" in read_parquet(files[0], schema_only=True).names


@dataclass(frozen=True)
class FeatureTable:
    """An opened feature table: the images' paths, hashes and features, and the model's metadata."""

    name: str
    path: Path
    paths: list[str]
    hashes: list[str]
    features: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.paths)


def read_feature_table(spec: str | Path, name: str | None = None) -> FeatureTable:
    """Read every row of a feature table (checked: one model, finite unit-length rows).

    Raises:
        DatasetError: not a feature table, parts of different models, or bad rows.
    """

    path = Path(spec)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DatasetError(f"{path} is not a feature table (a .parquet file or a folder of part-*.parquet files).")
    paths: list[str] = []
    hashes: list[str] = []
    blocks: list[np.ndarray] = []
    meta: dict[str, Any] | None = None
    for file in files:
        table = read_parquet(file)
        if "feature" not in table.column_names:
            raise DatasetError(f"{file} has no 'feature' column: it is not a feature table from `negspace embed`.")
        part_meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        if meta is None:
            meta = part_meta
        elif part_meta != meta:
            raise DatasetError(
                f"{file} was written by another model ({part_meta.get('model')}) than the rest of "
                f"{path} ({meta.get('model')})."
            )
        paths += table.column("path").to_pylist()
        hashes += table.column("sha256").to_pylist() if "sha256" in table.column_names else [""] * table.num_rows
        if table.num_rows:
            column = table.column("feature").combine_chunks()
            blocks.append(np.asarray(column.flatten(), dtype=np.float32).reshape(table.num_rows, -1))
    if not blocks:
        raise DatasetError(f"The feature table {path} has no rows.")
    if len({block.shape[1] for block in blocks}) > 1:
        raise DatasetError(f"The feature table {path} mixes features of different dimensions.")
    features = np.concatenate(blocks)
    if not np.isfinite(features).all():
        raise DatasetError(f"The feature table {path} has rows that are not finite.")
    zero = np.flatnonzero(~np.any(features, axis=1))
    if len(zero):
        raise DatasetError(
            f"The feature table {path} has {len(zero)} all-zero row(s) (e.g. {paths[zero[0]]}), "
            "which are no image's features."
        )
    _check_one_feature_per_hash(path, hashes, features)
    return FeatureTable(name or path.stem, path, paths, hashes, features, meta or {})


def _check_one_feature_per_hash(path: Path, hashes: list[str], features: np.ndarray) -> None:
    """Rows of one content hash are one image: their features must agree (to float32 rounding)."""
    first: dict[str, int] = {}
    for row, digest in enumerate(hashes):
        if not digest:
            continue
        if digest in first:
            if not np.allclose(features[row], features[first[digest]], rtol=0, atol=1e-5):
                raise DatasetError(
                    f"The feature table {path} has rows of the same image (sha256 {digest}) with "
                    "different features; it mixes models or runs."
                )
        else:
            first[digest] = row


def check_model(table: FeatureTable, encoder: Any) -> None:
    """Refuse features of another model than ``encoder``'s, or of another dimension."""
    fingerprint = table.meta.get("weights_fingerprint")
    if fingerprint and fingerprint != encoder.fingerprint:
        raise DatasetError(
            f"The features in {table.path} were made by {table.meta.get('model')} (weights "
            f"{fingerprint}), not by this run's {encoder.spec} (weights {encoder.fingerprint})."
        )
    if table.features.shape[1] != encoder.dim:
        raise DatasetError(
            f"The features in {table.path} have dimension {table.features.shape[1]}, but the model "
            f"{encoder.spec} gives {encoder.dim}."
        )


def import_into_cache(table: FeatureTable, encoder: Any) -> int:
    """Put a table's features into the encoder's feature cache under their content hashes, so the
    image files with those contents are not encoded again; returns how many were added.

    Only features the table says this very model made enter the persistent cache: a table
    without negspace's model metadata (not written by `negspace embed`), or of another model or
    dimension, is refused, since every later run on those images would score with its features.
    """
    if not table.meta.get("weights_fingerprint"):
        raise DatasetError(
            f"{arg('features')} {table.path} does not say which model made it (no negspace metadata: it "
            "was not written by `negspace embed`); its features cannot be trusted into the cache. "
            "Use it as a set or source instead, or write it with `negspace embed`."
        )
    check_model(table, encoder)
    if table.meta.get("dim") not in (None, encoder.dim):
        raise DatasetError(
            f"{arg('features')} {table.path} says its features have dimension {table.meta.get('dim')}, "
            f"the model {encoder.spec} {encoder.dim}."
        )
    if encoder.store is None:
        raise DatasetError(f"{arg('features')} needs the feature cache; drop {arg('use_cache=False', '--no-cache')}.")
    items = {encoder.image_key(h): f for h, f in zip(table.hashes, table.features, strict=True) if h}
    encoder.store.put_many(items)
    return len(items)
