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

from negspace.errors import DatasetError

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
    """A ``.parquet`` file, or a folder of ``part-*.parquet`` files, with a ``feature`` column."""
    path = Path(spec)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path] if path.suffix == ".parquet" else []
    if not files or not files[0].is_file():
        return False
    import pyarrow.parquet as pq

    return "feature" in pq.read_schema(files[0]).names


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
    import pyarrow.parquet as pq

    path = Path(spec)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DatasetError(f"{path} is not a feature table (a .parquet file or a folder of part-*.parquet files).")
    paths, hashes, blocks, meta = [], [], [], None
    for file in files:
        table = pq.read_table(file)
        if "feature" not in table.column_names:
            raise DatasetError(f"{file} has no 'feature' column: it is not a feature table from `negspace embed`.")
        part_meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        if meta is None:
            meta = part_meta
        elif part_meta != meta:
            raise DatasetError(f"{file} was written by another model ({part_meta.get('model')}) than the rest of "
                               f"{path} ({meta.get('model')}).")
        paths += table.column("path").to_pylist()
        hashes += table.column("sha256").to_pylist() if "sha256" in table.column_names else [""] * table.num_rows
        column = table.column("feature").combine_chunks()
        blocks.append(np.asarray(column.flatten(), dtype=np.float32).reshape(table.num_rows, -1))
    features = np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
    if not len(features):
        raise DatasetError(f"The feature table {path} has no rows.")
    if not np.isfinite(features).all():
        raise DatasetError(f"The feature table {path} has rows that are not finite.")
    return FeatureTable(name or path.stem, path, paths, hashes, features, meta or {})


def check_model(table: FeatureTable, encoder: Any) -> None:
    """Refuse features of another model than ``encoder``'s (when the table says which)."""
    fingerprint = table.meta.get("weights_fingerprint")
    if fingerprint and fingerprint != encoder.fingerprint:
        raise DatasetError(f"The features in {table.path} were made by {table.meta.get('model')} (weights "
                           f"{fingerprint}), not by this run's {encoder.spec} (weights {encoder.fingerprint}).")


def import_into_cache(table: FeatureTable, encoder: Any) -> int:
    """Put a table's features into the encoder's feature cache under their content hashes, so the
    image files with those contents are not encoded again; returns how many were added."""
    check_model(table, encoder)
    if encoder.store is None:
        raise DatasetError("--features needs the feature cache; drop --no-cache.")
    items = {encoder.image_key(h): f for h, f in zip(table.hashes, table.features) if h}
    encoder.store.put_many(items)
    return len(items)
