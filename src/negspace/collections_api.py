"""Score or embed a large image collection from Python: what ``negspace score`` and ``embed`` do.

    from negspace import ScoreConfig, score_collection
    summary = score_collection(["photos/"], "scored/", ScoreConfig(detector=Path("det/")))

The collection is listed and the output folder read before any model loads; images are encoded
and scored a chunk at a time (bounded memory), each chunk written as one complete Parquet part, so
a re-run (after a crash, a ``kill -9``) skips what is written. ``engine="ray"`` runs the decoding
in Ray tasks and the model in an actor pool (``pip install 'negspace[ray]'``).

One output folder holds one detector's rows: ``_detector.json`` records its identity (method,
parameters, a digest of its arrays, the model and its weights), and a run with another detector
or model is refused unless ``overwrite`` starts the folder afresh. One file is one row however
its path is spelt (see :class:`negspace.collection.FileKeys`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace.collection import FileKeys, PartWriter, chunks, collection_paths, read_parquet, unique_files
from negspace.detectors.saved import read_provenance
from negspace.errors import DatasetError, NegspaceError, arg
from negspace.jsonio import to_json
from negspace.methods import METHODS
from negspace.reprs import with_config_repr
from negspace.runconfig import EvalConfig, ModelConfig

if TYPE_CHECKING:
    from negspace.features_table import FeatureTable

log = logging.getLogger("negspace")

STATIC_METHODS = ("mcm", "neglabel", "csp", "negrefine")
ENGINES = ("local", "ray")
RAY = arg("engine=" + repr("ray"), "--engine ray")
IDENTITY_FILE = "_detector.json"  # which detector and model wrote a score folder's rows
# What `score` writes into its folder: all that `overwrite` removes (never another file).
SCORE_OUTPUTS = ("part-*.parquet", "_part-*.tmp", "_summary.json", "_skipped.csv", IDENTITY_FILE)


@with_config_repr
@dataclass(frozen=True)
class CollectionConfig:
    """How a collection is processed: parts of ``chunk_size`` images, batches, the engine."""

    chunk_size: int = 4096
    batch_size: int = 256
    engine: str = "local"
    ray_address: str | None = None  # an existing Ray cluster (default: start a local one)
    ray_actors: int | None = None  # model actors (default: one per GPU of the cluster, else 1)
    ray_timeout: float = 30.0  # seconds to wait for the cluster at ray_address

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.chunk_size < 1 or self.batch_size < 1:
            raise ValueError("chunk_size and batch_size must be >= 1")


@with_config_repr
@dataclass(frozen=True)
class ScoreConfig:
    """Which detector scores and where its OOD flag is: a saved ``detector`` folder, or a static
    ``method`` built from ``classes`` (with ``params``, its config); the threshold is given, chosen
    to keep 95% of the ``threshold_id`` images, or the one saved with the detector."""

    detector: Path | None = None
    method: str | None = None
    classes: str | None = None
    params: Any = None
    threshold: float | None = None
    threshold_id: str | None = None
    scoring_backend: str = "numpy"

    def check(self) -> None:
        """What can be refused before any model loads, in one sentence."""
        method, detector = arg("method"), arg("detector")
        if (self.detector is None) == (self.method is None):
            raise NegspaceError(f"Give either {detector} DIR (a saved detector) or {method} with {arg('classes')}.")
        if self.method is not None and self.classes is None:
            raise NegspaceError(f"{method} {self.method} needs {arg('classes')}.")
        if self.method is not None and self.method not in METHODS:
            raise NegspaceError(f"{method} {self.method}: expected one of {', '.join(STATIC_METHODS)}.")
        if self.method is not None and self.method not in STATIC_METHODS:
            raise NegspaceError(
                f"{method} {self.method} learns from the stream; learn it on a sample with "
                f"`negspace eval --method {self.method} --save-detector DIR`, then score with "
                f"{detector} DIR."
            )
        if self.detector is not None and not Path(self.detector).is_dir():
            raise NegspaceError(f"{detector} {self.detector} is not a folder.")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise NegspaceError(f"{arg('threshold')} must be a finite number, got {self.threshold}.")


def score_collection(
    sources: Sequence[str | Path],
    out: str | Path,
    config: ScoreConfig,
    *,
    model: ModelConfig | None = None,
    collection: CollectionConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every image of ``sources`` (folders, path lists, Parquet/CSV tables of paths, feature
    tables) into Parquet parts under ``out``: one row ``path, sha256, score, ood, id_class,
    top_negative`` per image (one per file, however many spellings of its path are listed).
    Returns the summary written to ``out/_summary.json``.

    ``out`` holds one detector's rows: a re-run with the same detector and model scores only the
    images not yet written; one with another detector (method, parameters or arrays) or model is
    refused, unless ``overwrite``, which removes the previous rows (only the files ``score``
    writes) before this run writes its own.

    ``model=None`` loads the model the saved detector was built with (its provenance), else the
    default one. Everything that can be checked before the model loads is: the detector folder,
    ``threshold_id``'s images, the sources, that ``out`` can be written and that no other run is
    writing it, that a saved detector is the one whose rows ``out`` holds, the Ray cluster.
    """
    from negspace.features_table import is_feature_table, read_feature_table

    collection = collection or CollectionConfig()
    out = Path(out)
    specs = [str(s) for s in sources]
    config.check()
    provenance = detector_provenance(config.detector)
    saved = _saved_detector(config.detector) if config.detector is not None else None
    threshold_images = open_threshold_images(config.threshold_id) if config.threshold is None else None
    is_table = {s: is_feature_table(s) for s in specs}
    if collection.engine == "ray" and (any(is_table.values()) or config.detector is None):
        raise NegspaceError(
            f"{RAY} scores image files with a saved {arg('detector')} DIR (save one with "
            "`negspace eval --save-detector DIR` or det.save(DIR)); feature tables need no encoding: "
            f"score them with {arg('engine=' + repr('local'), '--engine local')}."
        )
    tables = [read_feature_table(s) for s, table in is_table.items() if table]  # features: no encoding
    image_sources = [s for s, table in is_table.items() if not table]
    listed = collection_paths(image_sources) if image_sources else []  # listed before any model loads
    listed += [Path(p) for table in tables for p in table.paths]
    keys = FileKeys()
    paths, duplicates = unique_files(listed, keys)
    if duplicates:
        log.warning("%d path(s) name a file already listed; scored once", duplicates)
    model = model if model is not None else model_of_detector(config.detector, ModelConfig())
    if collection.engine == "ray":
        from negspace.engines.ray_engine import check_ray_address

        check_ray_address(collection.ray_address, collection.ray_timeout)
    with _locked_output(out) as writer:
        recorded = None if overwrite else _recorded_identity(out, writer)
        if recorded is not None:  # the parts of the detector already known refused before the model loads
            known = {"method": config.method, "model": model.spec, "preprocess": model.preprocess}
            if saved is not None:
                known.update(detector_identity(saved))
            _refuse_another_detector(out, recorded, known)
        done = set() if overwrite else {keys(p) for p in writer.done()}
        todo = [p for p in paths if keys(p) not in done]
        from negspace.runs import load_model

        encoder = load_model(model)
        detector = _detector(config, saved, encoder, model)
        if getattr(detector, "frozen", True) is False:
            raise NegspaceError(
                "The detector learns from the stream; freeze it first (negspace.load_detector gives it frozen)."
            )
        named = f"{arg('detector')} {config.detector}" if config.detector else f"{arg('method')} {config.method}"
        check_detector_model(provenance, detector, encoder, named)
        identity = {
            **detector_identity(saved if saved is not None else detector),
            "model": encoder.spec,
            "weights_fingerprint": encoder.fingerprint,
            "preprocess": model.preprocess,
        }
        if recorded is not None:
            _refuse_another_detector(out, recorded, identity)
        threshold, threshold_source = resolve_threshold(
            config.threshold,
            config.threshold_id,
            detector,
            encoder,
            provenance,
            threshold_images,
            collection.batch_size,
            model.progress,
        )
        if recorded is not None:
            _refuse_another_threshold(out, recorded, threshold, threshold_source)
        if overwrite:
            from negspace.outdir import clear_outputs

            removed = clear_outputs(out, SCORE_OUTPUTS, folders=False)
            if removed:
                log.info("%d file(s) of the previous results in %s removed (overwrite)", removed, out)
        _write_identity(
            out,
            {
                **identity,
                "source": str(config.detector or config.method),
                "threshold": threshold,
                "threshold_source": threshold_source,
            },
        )
        todo, unnamed = _named_in_utf8(todo, out)
        names = detector.class_names or []
        summary = {
            "engine": collection.engine,
            "sources": specs,
            "images": len(paths),
            "duplicate_paths": duplicates,
            "already_written": len(paths) - len(todo) - unnamed,
            "scored": 0,
            "flagged_ood": 0,
            "skipped_unreadable": unnamed,
            "threshold": threshold,
            "threshold_source": threshold_source,
            "model": model.spec,
            "detector": str(config.detector or config.method),
            "method": identity["method"],
            "detector_digest": identity["digest"],
        }
        if collection.engine == "ray":
            _score_with_ray(todo, out, writer, encoder, model, collection, config.detector, threshold, summary)
        else:
            _score_locally(
                todo, tables, out, writer, encoder, detector, threshold, names, summary, collection, model.progress
            )
        summary.update(_folder_totals(writer))
        (out / "_summary.json").write_text(to_json(summary, indent=1), encoding="utf-8")
    return summary


def detector_identity(detector: Any) -> dict[str, Any]:
    """What makes a detector's scores what they are: its method, parameters and a digest (SHA-256)
    of everything it saves (parameters, labels and arrays, as :meth:`to_saved` gives them; ANTS:
    its negative space), so that two detectors with the same digest score alike."""
    method, params, arrays, extra = _saved_form(detector)
    described = {
        "method": method,
        "params": params,
        "extra": extra,
        "arrays": {name: [np.asarray(a).dtype.str, list(np.shape(a))] for name, a in sorted(arrays.items())},
    }
    digest = hashlib.sha256(to_json(described, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for name in sorted(arrays):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return {"method": method, "params": json.loads(to_json(params)), "digest": "sha256:" + digest.hexdigest()}


def _saved_form(detector: Any) -> tuple[str, dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """A detector's method, parameters, arrays and JSON extras: what it saves."""
    try:
        saved = detector.to_saved()
    except NotImplementedError:  # ANTS saves its negative space instead
        doc, state_arrays = detector.state.to_files()
        arrays = {
            "id_text_features": detector.id_text_features,
            "neg_text_features": detector.neg_text_features,
            **{f"state.{name}": np.asarray(a) for name, a in state_arrays.items()},
        }
        doc = {k: v for k, v in doc.items() if k != "mllm_requests"}  # a counter, not the space
        return (
            "ants",
            detector.config.as_dict(),
            arrays,
            {"class_names": detector.class_names, "neg_labels": detector.neg_labels, "state": doc},
        )
    return saved.method, saved.params, saved.arrays, saved.extra


def _short(fingerprint: Any) -> str:
    """A digest or fingerprint short enough for a sentence (``sha256:0123456789ab``)."""
    text = str(fingerprint)
    kind, sep, value = text.rpartition(":")
    return f"{kind}{sep}{value[:12]}" if sep and len(value) == 64 else text


def _describe(identity: dict[str, Any], differs: set[str]) -> str:
    """A detector and model in words, with what tells it from the other one (``differs``)."""
    text = identity.get("method") or "an unknown detector"
    if identity.get("digest"):
        text += f" (detector {_short(identity['digest'])})"
    text += f" with {identity.get('model') or 'an unknown model'}"
    if "weights_fingerprint" in differs and identity.get("weights_fingerprint"):
        text += f" (weights {_short(identity['weights_fingerprint'])})"
    if "preprocess" in differs and identity.get("preprocess"):
        text += f", preprocess {identity['preprocess']}"
    return text


def _refuse_another_detector(out: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """One sentence naming both when ``out`` holds rows of another detector or model than
    ``current`` (which may know only some fields yet: those are compared)."""
    fields = ("method", "digest", "model", "weights_fingerprint", "preprocess")
    differs = {
        f for f in fields if current.get(f) is not None and recorded.get(f) is not None and current[f] != recorded[f]
    }
    if not differs:
        return
    this = _describe({**current, "method": current.get("method") or "its detector"}, differs)
    raise NegspaceError(
        f"{arg('out')} {out} holds scores of {_describe(recorded, differs)}; this run is {this}; "
        f"pass {arg('overwrite')} to start afresh or choose another {arg('out')}."
    )


def _refuse_another_threshold(out: Path, recorded: dict[str, Any], threshold: float, source: str) -> None:
    """One sentence when ``out``'s rows were flagged at another threshold: one table, one flag."""
    before = recorded.get("threshold")
    if before is None or math.isclose(float(before), threshold, rel_tol=1e-6, abs_tol=1e-12):
        return
    raise NegspaceError(
        f"{arg('out')} {out} holds rows flagged OOD below {before:.6g} "
        f"({recorded.get('threshold_source') or 'an earlier run'}); this run flags below "
        f"{threshold:.6g} ({source}); pass {arg('overwrite')} to start afresh or choose another "
        f"{arg('out')}."
    )


def _recorded_identity(out: Path, writer: PartWriter) -> dict[str, Any] | None:
    """The detector and model whose rows ``out`` holds; ``None`` when it holds no rows."""
    if not writer.parts():
        return None
    path = out / IDENTITY_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DatasetError(
                f"{arg('out')} {out}: its {IDENTITY_FILE} cannot be read ({err}); pass "
                f"{arg('overwrite')} to start afresh or choose another {arg('out')}."
            ) from None
        if isinstance(recorded, dict):
            return recorded
    # a folder written before the identity was recorded: its summary names the detector and model
    summary_path = out / "_summary.json"
    summary = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            summary = {}
    if not isinstance(summary, dict) or "detector" not in summary:
        raise DatasetError(
            f"{arg('out')} {out} holds Parquet parts that do not say which detector wrote them (no "
            f"{IDENTITY_FILE}); pass {arg('overwrite')} to start afresh or choose another {arg('out')}."
        )
    method = summary["detector"] if summary["detector"] in METHODS else None
    return {
        "method": method or _saved_method(summary["detector"]),
        "model": summary.get("model"),
        "threshold": summary.get("threshold"),
        "threshold_source": summary.get("threshold_source"),
    }


def _saved_method(folder: str) -> str | None:
    """The method of the detector saved in ``folder``, if it can still be read."""
    try:
        return _saved_form(_saved_detector(Path(folder)))[0]
    except (NegspaceError, NotImplementedError, AttributeError):
        return None


def _write_identity(out: Path, identity: dict[str, Any]) -> None:
    tmp = out / f"_{IDENTITY_FILE}.tmp"
    tmp.write_text(to_json(identity, indent=1), encoding="utf-8")
    tmp.replace(out / IDENTITY_FILE)


def embed_collection(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    model: ModelConfig | None = None,
    collection: CollectionConfig | None = None,
) -> dict[str, int]:
    """Image features of ``sources`` as Parquet parts of (path, sha256, feature) under ``out``, each
    part recording the model that made it; resumable. An ``out`` holding another model's features
    is refused. Returns the counts."""
    from tqdm import tqdm

    from negspace.features_table import embedding_rows, table_metadata, with_metadata
    from negspace.runs import load_model

    model, collection, out = model or ModelConfig(), collection or CollectionConfig(), Path(out)
    keys = FileKeys()
    paths, duplicates = unique_files(collection_paths([str(s) for s in sources]), keys)
    if duplicates:
        log.warning("%d path(s) name a file already listed; embedded once", duplicates)
    if collection.engine == "ray":
        from negspace.engines.ray_engine import check_ray_address

        check_ray_address(collection.ray_address, collection.ray_timeout)
    with _locked_output(out) as writer:
        done = {keys(p) for p in writer.done()}
        todo, unnamed = _named_in_utf8([p for p in paths if keys(p) not in done], out)
        encoder = load_model(model)
        meta = table_metadata(encoder)
        _check_table_model(out, writer, meta)
        counts = {
            "images": len(paths),
            "already_there": len(paths) - len(todo) - unnamed,
            "written": 0,
            "skipped_unreadable": unnamed,
        }
        if collection.engine == "ray":
            _embed_with_ray(todo, out, writer, encoder, model, collection, meta, counts)
            return counts
        with tqdm(total=len(todo), desc="Embedding images", unit="img", disable=not model.progress or not todo) as bar:
            for chunk in chunks(todo, collection.chunk_size):
                encoding = encoder.encode_image_files(chunk, batch_size=collection.batch_size, progress=False)
                if len(encoding.features):
                    writer.write_table(with_metadata(embedding_rows(encoding), meta))
                if encoding.skipped:
                    _append_skipped(out / "_skipped.csv", encoding.skipped)
                counts["written"] += len(encoding.features)
                counts["skipped_unreadable"] += len(encoding.skipped)
                bar.update(len(chunk))
    return counts


def model_of_detector(folder: Path | None, base: ModelConfig) -> ModelConfig:
    """``base`` with the model a saved detector was built with (its provenance), when it names
    one; ``base``'s weights win over the saved path, which is used only where it still exists."""
    provenance = detector_provenance(folder)
    if "model" not in provenance:
        return base
    return replace(base, spec=provenance["model"], weights=base.weights or _existing(provenance.get("weights")))


def _folder_totals(writer: PartWriter) -> dict[str, int]:
    """Rows and OOD flags in the whole folder: what a resumed run's summary must still say."""
    import pyarrow.compute as pc

    rows = flagged = 0
    for part in writer.parts():
        column = read_parquet(part, columns=["ood"]).column("ood")
        rows += len(column)
        flagged += int(pc.sum(pc.cast(column, "int64")).as_py() or 0)
    return {"rows_in_folder": rows, "flagged_ood_in_folder": flagged}


@contextmanager
def _locked_output(out: Path) -> Iterator[PartWriter]:
    """The output folder, locked for this run; a folder this run created and left empty (it
    failed before writing anything) is removed again."""
    created = not out.exists()
    writer = PartWriter(out)
    writer.lock()
    try:
        yield writer
    except BaseException:
        writer.close()
        if created and {p.name for p in out.iterdir()} <= {"_lock", IDENTITY_FILE}:
            for name in ("_lock", IDENTITY_FILE):
                (out / name).unlink(missing_ok=True)
            out.rmdir()
        raise
    writer.close()


def _named_in_utf8(paths: list[Path], out: Path) -> tuple[list[Path], int]:
    """The paths whose names Parquet can store (UTF-8), and how many others were listed in
    ``_skipped.csv`` instead (a name that is not UTF-8 must not stop the collection)."""
    good, bad = [], []
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            bad.append(
                _Failed(str(path), "the file name is not valid UTF-8, which Parquet strings must be; rename the file")
            )
        else:
            good.append(path)
    if bad:
        log.warning("%d file(s) with names that are not UTF-8 skipped; listed in %s", len(bad), out / "_skipped.csv")
        _append_skipped(out / "_skipped.csv", bad)
    return good, len(bad)


def detector_provenance(folder: Path | None) -> dict[str, Any]:
    """What was saved beside a detector (its model and threshold); a damaged file is one sentence."""
    if folder is None:
        return {}
    try:
        provenance = read_provenance(folder)
    except (OSError, ValueError) as err:
        raise NegspaceError(f"{arg('detector')} {folder}: its provenance.json cannot be read ({err}).") from None
    if not isinstance(provenance, dict):
        raise NegspaceError(f"{arg('detector')} {folder}: its provenance.json is not a JSON object.")
    return provenance


def _saved_detector(folder: Path) -> Any:
    """The saved detector, loaded (NumPy) before any model: a damaged folder fails in a second."""
    from negspace.methods import load_detector

    try:
        return load_detector(folder)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise NegspaceError(f"{arg('detector')} {folder} cannot be loaded: {err}.") from None


def open_threshold_images(spec: str | None) -> Any:
    """The ID images ``threshold_id`` names, opened (not read) before any model loads."""
    if spec is None:
        return None
    from negspace.data import open_image_set

    option = arg("threshold_id")
    head, sep, _ = str(spec).rpartition(":")
    if not Path(spec).expanduser().exists() and not (sep and Path(head).expanduser().is_file()):
        raise DatasetError(f"{option} {spec} does not exist (give a folder of ID images or a .txt list of them).")
    try:
        return open_image_set(spec)
    except DatasetError as err:
        raise DatasetError(f"{option} {spec}: {err.message}") from None


def _check_table_model(out: Path, writer: PartWriter, meta: dict[str, Any]) -> None:
    """``embed`` adds to a folder only the features of the same model (and dimension)."""

    from negspace.features_table import META_KEY

    for part in writer.parts():
        found = json.loads((read_parquet(part, schema_only=True).metadata or {}).get(META_KEY, b"{}"))
        if (found.get("weights_fingerprint"), found.get("dim")) != (meta["weights_fingerprint"], meta["dim"]):
            same_spec = found.get("model") == meta["model"]
            theirs = found.get("model", "unknown") + (
                f", weights {_short(found.get('weights_fingerprint'))}" if same_spec else ""
            )
            ours = meta["model"] + (f", weights {_short(meta['weights_fingerprint'])}" if same_spec else "")
            raise NegspaceError(
                f"{arg('out')} {out} holds features of another model ({theirs}, dimension "
                f"{found.get('dim', '?')}) than this run's ({ours}, dimension {meta['dim']}); "
                "choose another folder."
            )


def _detector(config: ScoreConfig, saved: Any, encoder: Any, model: ModelConfig) -> Any:
    """The saved detector (frozen; reloaded on the encoder's device for the torch backend), or a
    static method built from its classes."""
    from negspace.methods import backend_keywords, build_detector, load_detector

    if saved is not None and config.detector is not None:  # saved: the detector folder, read
        backend = backend_keywords(config.scoring_backend, encoder)
        detector = load_detector(config.detector, **backend) if backend else saved
        detector.encoder = encoder  # NegRefine encodes its label pairs with it
        return detector
    from negspace.runs import build_inputs, class_list

    assert config.method is not None and config.classes is not None  # ScoreConfig.check(): no detector, a method
    eval_config = EvalConfig(config.method, config.params, scoring_backend=config.scoring_backend)
    return build_detector(build_inputs(eval_config, encoder, class_list(config.classes), model, model.spec))


def resolve_threshold(
    threshold: float | None,
    threshold_id: str | None,
    detector: Any,
    encoder: Any,
    provenance: dict[str, Any],
    id_images: Any,
    batch_size: int,
    progress: bool = True,
) -> tuple[float, str]:
    """The OOD flag's threshold and where it came from: ``threshold`` as given, else the one that
    keeps 95% of the ``id_images`` (opened by :func:`open_threshold_images`), else the one saved
    with the detector; what ``negspace score`` and ``negspace serve`` flag with."""
    from negspace.evaluation import score_in_batches
    from negspace.metrics import threshold_at_id_recall

    if threshold is not None:
        return float(threshold), "--threshold"
    if id_images is not None:
        encoding = encoder.encode_image_files(id_images.paths, batch_size=batch_size, progress=progress)
        if len(encoding.features) == 0:
            raise NegspaceError(f"{arg('threshold_id')} {threshold_id}: none of its images could be read.")
        scores = score_in_batches(detector.score_features, encoding.features, batch_size)
        return float(threshold_at_id_recall(scores)), f"95% recall of the {len(scores)} ID images of {threshold_id}"
    saved = provenance.get("threshold_95_id_recall")
    if isinstance(saved, (int, float)) and math.isfinite(saved):
        return float(saved), f"saved with the detector ({provenance.get('id_set', 'its ID set')})"
    raise NegspaceError(
        f"No threshold for the OOD flag: give {arg('threshold')} T, or {arg('threshold_id')} ID_IMAGES "
        f"to choose the one that keeps 95% of them, or a {arg('detector')} saved by "
        "`negspace eval --save-detector`."
    )


def _score_locally(
    todo: list[Path],
    tables: list[FeatureTable],
    out: Path,
    writer: PartWriter,
    encoder: Any,
    detector: Any,
    threshold: float,
    names: list[str],
    summary: dict[str, Any],
    collection: CollectionConfig,
    progress: bool,
) -> None:
    """This process: chunks of images (or feature-table rows) scored and written; counts into ``summary``."""
    from tqdm import tqdm

    from negspace.features_table import check_model

    known: dict[str, tuple[FeatureTable, int]] = {}  # path -> (table, row) for the rows given as features
    for table in tables:
        check_model(table, encoder)
        known.update({p: (table, i) for i, p in enumerate(table.paths)})
    with tqdm(total=len(todo), desc="Scoring images", unit="img", disable=not progress or not todo) as bar:
        for chunk in chunks(todo, collection.chunk_size):
            encoding = _features_of(chunk, known, encoder, collection.batch_size)
            if len(encoding.features):
                rows = score_rows(detector, encoding, threshold, names, collection.batch_size)
                writer.write(rows)
                summary["flagged_ood"] += int(np.sum(rows["ood"]))
            summary["scored"] += len(encoding.features)
            if encoding.skipped:
                _append_skipped(out / "_skipped.csv", encoding.skipped)
                summary["skipped_unreadable"] += len(encoding.skipped)
            bar.update(len(chunk))


def score_rows(detector: Any, encoding: Any, threshold: float, names: list[str], batch_size: int) -> dict[str, Any]:
    """One row per encoded image: path, content hash, score, OOD flag, nearest ID class and negative."""
    parts = [
        detector.score_with_nearest(encoding.features[start : start + batch_size])
        for start in range(0, len(encoding.features), batch_size)
    ]  # one product per batch
    scores = np.concatenate([part[0] for part in parts]) if parts else np.zeros(0)
    nearest_id = np.concatenate([part[1] for part in parts]) if parts else np.zeros(0, int)
    nearest_negative = [text for part in parts for text in part[2]]
    flags = scores < threshold
    return {
        "path": [str(p) for p in encoding.paths],
        "sha256": list(encoding.hashes),
        "score": scores,
        "ood": flags,
        "id_class": [names[i] if i < len(names) else str(i) for i in nearest_id],
        "top_negative": nearest_negative,
    }


def _features_of(chunk: Any, known: dict[str, Any], encoder: Any, batch_size: int) -> Any:
    """A chunk's features: the rows of feature tables as they are, image files encoded (cached)."""
    from negspace.encoders.base import ImageEncoding

    files = [p for p in chunk if str(p) not in known]
    encoded = encoder.encode_image_files(files, batch_size=batch_size, progress=False) if files else None
    rows = [known[str(p)] for p in chunk if str(p) in known]
    if not rows:
        return encoded
    given = ImageEncoding(
        np.stack([t.features[i] for t, i in rows]),
        [Path(t.paths[i]) for t, i in rows],
        [],
        [t.hashes[i] for t, i in rows],
    )
    if encoded is None:
        return given
    return ImageEncoding(
        np.concatenate([encoded.features, given.features]),
        encoded.paths + given.paths,
        encoded.skipped,
        encoded.hashes + given.hashes,
    )


def _ray_rows(todo: list[Path], encoder: Any, model: ModelConfig, collection: CollectionConfig, **kwargs: Any) -> Any:
    """The Ray pipeline's row batches for ``todo`` (model actors on GPUs where the cluster has them)."""
    from negspace.engines import ray_engine

    if not todo:  # everything is written already: no cluster to start
        return iter(())
    ray_engine.start_ray(collection.ray_address)
    gpus = ray_engine.cluster_gpus()
    actors = collection.ray_actors or max(1, gpus)
    recipe = ray_engine.ModelRecipe(
        model.spec,
        str(model.weights) if model.weights else None,
        "cuda" if gpus and model.runtime == "torch" else "cpu",  # ONNX Runtime runs on the CPUs
        model.preprocess,
        model.runtime,
    )
    log.info("Ray engine: %d model actor(s)%s", actors, f" on {gpus} GPU(s)" if gpus else " on CPUs")
    return ray_engine.run_pipeline(
        todo,
        recipe,
        encoder.backend.pixel_transform(),
        batch_size=collection.batch_size,
        chunk_size=collection.chunk_size,
        actors=actors,
        gpus_per_actor=1.0 if gpus else 0.0,
        address=collection.ray_address,
        **kwargs,
    )


class _Failed:
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


def _split_failed(batch: dict[str, Any], out: Path) -> tuple[np.ndarray, int]:
    """Which rows of a Ray batch were decoded; the others go to ``_skipped.csv``."""
    ok = np.array([not r for r in batch["reason"]], dtype=bool)
    failed = [
        _Failed(str(p), str(r)) for p, r, good in zip(batch["path"], batch["reason"], ok, strict=True) if not good
    ]
    if failed:
        _append_skipped(out / "_skipped.csv", failed)
    return ok, len(failed)


def _score_with_ray(
    todo: list[Path],
    out: Path,
    writer: PartWriter,
    encoder: Any,
    model: ModelConfig,
    collection: CollectionConfig,
    detector_dir: Path | None,
    threshold: float,
    summary: dict[str, Any],
) -> None:
    """The Ray pipeline's rows written as the local engine writes them; counts into ``summary``."""
    columns = ("path", "sha256", "score", "ood", "id_class", "top_negative")
    for batch in _ray_rows(todo, encoder, model, collection, detector_dir=str(detector_dir), threshold=threshold):
        ok, failed = _split_failed(batch, out)
        summary["skipped_unreadable"] += failed
        if ok.any():
            rows = {
                c: [str(v) for v in batch[c][ok]]
                if c in ("path", "sha256", "id_class", "top_negative")
                else batch[c][ok]
                for c in columns
            }
            writer.write(rows)
            summary["scored"] += int(ok.sum())
            summary["flagged_ood"] += int(np.sum(batch["ood"][ok]))


def _embed_with_ray(
    todo: list[Path],
    out: Path,
    writer: PartWriter,
    encoder: Any,
    model: ModelConfig,
    collection: CollectionConfig,
    meta: dict[str, Any],
    counts: dict[str, int],
) -> None:
    import pyarrow as pa

    from negspace.features_table import with_metadata

    for batch in _ray_rows(todo, encoder, model, collection):
        ok, failed = _split_failed(batch, out)
        counts["skipped_unreadable"] += failed
        if ok.any():
            features = np.asarray(batch["feature"][ok], dtype=np.float32)
            column = pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), features.shape[1])
            table = pa.table(
                {
                    "path": [str(p) for p in batch["path"][ok]],
                    "sha256": [str(h) for h in batch["sha256"][ok]],
                    "feature": column,
                }
            )
            writer.write_table(with_metadata(table, meta))
            counts["written"] += int(ok.sum())


def _append_skipped(path: Path, skipped: list[Any]) -> None:
    """Add rows ``path, reason`` to ``_skipped.csv``, each file once over every run (a re-run
    meets the same unreadable files again); names that are not UTF-8 are written escaped."""
    listed = set()
    if path.is_file():
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            listed = {row[0] for row in csv.reader(handle) if row}
    rows = [[_printable(s.path), s.reason] for s in skipped]
    rows = [row for row in {row[0]: row for row in rows}.values() if row[0] not in listed]
    if not rows:
        return
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["path", "reason"])
        writer.writerows(rows)


def _printable(path: Any) -> str:
    """A file name as text: a name that is not UTF-8 gets its undecodable bytes as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).exists() else None


def check_detector_model(provenance: dict[str, Any], detector: Any, encoder: Any, named: str) -> None:
    """The model is the detector's: the weights it was saved with (their fingerprint in its
    provenance) and its feature dimension; ``named`` says which detector, for the sentence."""
    saved = provenance.get("weights_fingerprint")
    if saved and saved != encoder.fingerprint:
        raise NegspaceError(
            f"The detector was built with model {provenance.get('model')} (weights {saved}); this run "
            f"loads {encoder.spec} (weights {encoder.fingerprint}): pass the detector's {arg('model')} "
            f"and {arg('weights')}."
        )
    dim = detector.id_text_features.shape[1]
    if dim != encoder.dim:
        raise NegspaceError(
            f"{named} scores {dim}-dimensional features, but the model {encoder.spec} gives "
            f"{encoder.dim}: pass the detector's {arg('model')} and {arg('weights')}."
        )
