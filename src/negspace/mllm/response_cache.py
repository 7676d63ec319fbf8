"""A persistent MLLM response cache: never pay twice for the same answer.

:class:`CachedMLLM` wraps any backend. Each request is keyed by the SHA-256 of (backend
``model_id``, every message's role and parts, with each image's bytes reduced to their SHA-256,
generation parameters); answers live in a SQLite file (WAL mode, busy timeout), so several
processes may share it and it survives restarts. Failed requests (``None``) are not cached: the
next run asks again. Re-running the same evaluation therefore makes zero MLLM calls.

Image content hashes: a file path hashes the file's bytes (memoised by path, size and mtime); an
in-memory PIL image hashes its PNG encoding. The same picture given once as a file and once as a
PIL image gets two keys; that only costs one extra call.

:func:`cache_stats` and :func:`clear_cache` back ``negspace cache {stats,clear}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL.Image import Image

from negspace.cache import FEATURES_DB, SharedSQLiteStore, default_cache_dir, file_sha256, write_rows
from negspace.errors import NegspaceError
from negspace.mllm.protocol import MLLM, ChatRequest, ImagePart, MLLMStats, describe_model

__all__ = [
    "MLLM_DB",
    "CachedMLLM",
    "ResponseStore",
    "cache_stats",
    "clear_cache",
    "format_cache_stats",
    "request_key",
]

logger = logging.getLogger(__name__)

#: File name of the MLLM response database inside a cache folder.
MLLM_DB = "mllm.sqlite3"
_KEY_VERSION = 1
_BUSY_TIMEOUT_S = 60.0


def _image_sha256(image: Path | str | Image) -> str:
    if isinstance(image, (str, Path)):
        return file_sha256(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return hashlib.sha256(buf.getvalue()).hexdigest()


def request_key(model_id: str, request: ChatRequest) -> str:
    """The cache key of one request to one model (hex SHA-256)."""
    messages = []
    for msg in request.messages:
        parts: list[dict[str, str]] = []
        for part in msg.content:
            if isinstance(part, ImagePart):
                parts.append({"type": "image", "sha256": _image_sha256(part.image)})
            else:
                parts.append({"type": "text", "text": part.text})
        messages.append({"role": msg.role, "content": parts})
    payload = {
        "v": _KEY_VERSION,
        "model": model_id,
        "messages": messages,
        "params": asdict(request.params),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseStore(SharedSQLiteStore):
    """SQLite map from request key to answer text, shared safely by threads and processes."""

    SCHEMA = (
        (
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
            "answer TEXT NOT NULL, created REAL NOT NULL)"
        ),
    )
    WHAT = "MLLM response cache"

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        rows = self.select_by_keys("SELECT key, answer FROM responses WHERE key IN ({marks})", keys)
        return dict(rows)

    def put_many(self, model: str, items: dict[str, str]) -> None:
        """Store answers in one transaction."""
        if not items:
            return
        now = time.time()
        rows = [(k, model, v, now) for k, v in items.items()]
        with self._session() as conn:
            write_rows(conn, "INSERT OR REPLACE INTO responses (key, model, answer, created) VALUES (?, ?, ?, ?)", rows)

    def count(self) -> int:
        with self._session() as conn:
            (n,) = conn.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(n)


class CachedMLLM:
    """Any MLLM behind a persistent response cache (see the module docstring).

    ``stats`` is this wrapper's own :class:`MLLMStats`: ``cache_hits`` counted here, ``calls``,
    ``retries`` and ``failures`` added from the backend after each :meth:`generate`, and
    ``rejected_answers`` left to the caller. Identical requests within one batch go to the
    backend once.
    """

    def __init__(self, backend: MLLM, cache_path: Path | str | None = None, chunk_size: int = 64) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.backend = backend
        self.chunk_size = int(chunk_size)
        self.model_id = backend.model_id
        self.cache_path = Path(cache_path) if cache_path is not None else default_cache_dir() / MLLM_DB
        self.store = ResponseStore(self.cache_path)
        self.stats = MLLMStats()

    def __repr__(self) -> str:
        return f"CachedMLLM({self.backend!r}, cache_path={str(self.cache_path)!r})"

    def describe(self, sends_images: bool = True) -> dict[str, Any]:
        """The wrapped backend's description (see ``describe_model``): the cache changes no answer."""
        return describe_model(self.backend, sends_images)

    def check(self) -> None:
        check = getattr(self.backend, "check", None)
        if callable(check):
            check()

    def generate(self, requests: Sequence[ChatRequest]) -> list[str | None]:
        requests = list(requests)
        if not requests:
            return []
        keys: list[str | None] = []
        for req in requests:
            try:
                keys.append(request_key(self.model_id, req))
            except OSError as err:  # an unreadable image: let the backend fail it and count it
                logger.warning("MLLM request not cached: %s", err)
                keys.append(None)
        cached = self.store.get_many([k for k in keys if k is not None])
        answers: list[str | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        uncacheable: list[int] = []
        for i, key in enumerate(keys):
            if key is not None and key in cached:
                answers[i] = cached[key]
                self.stats.cache_hits += 1
            elif key is None:
                uncacheable.append(i)
            else:
                todo.setdefault(key, []).append(i)
        # Misses go to the backend in chunks (concurrency happens inside a chunk). A backend that
        # hands over each answer as it arrives (``generate_each``) has it committed at once, so an
        # interrupted run keeps every answer it paid for; otherwise each chunk is committed before
        # the next starts.
        jobs: list[tuple[str | None, list[int]]] = list(todo.items())
        jobs += [(None, [i]) for i in uncacheable]
        for start in range(0, len(jobs), self.chunk_size):
            chunk = jobs[start : start + self.chunk_size]
            before = MLLMStats(**self.backend.stats.as_dict())
            try:
                self._answer_chunk(requests, chunk, answers)
            finally:
                after = self.backend.stats
                self.stats.calls += after.calls - before.calls
                self.stats.retries += after.retries - before.retries
                self.stats.failures += after.failures - before.failures
        return answers

    def _answer_chunk(
        self, requests: list[ChatRequest], chunk: list[tuple[str | None, list[int]]], answers: list[str | None]
    ) -> None:
        def fresh(position: int, answer: str | None) -> dict[str, str]:
            key, idx = chunk[position]
            for i in idx:
                answers[i] = answer
            return {key: answer} if key is not None and answer is not None else {}

        asked = [requests[idx[0]] for _, idx in chunk]
        each = getattr(self.backend, "generate_each", None)
        if callable(each):
            each(asked, lambda position, answer: self.store.put_many(self.model_id, fresh(position, answer)))
            return
        found: dict[str, str] = {}
        for position, answer in enumerate(self.backend.generate(asked)):
            found.update(fresh(position, answer))
        self.store.put_many(self.model_id, found)


# -- CLI helpers ----------------------------------------------------------------------------------


def _db_size(path: Path) -> int:
    """Bytes of data on disk: the database and its write-ahead log (not ``-shm``, an index SQLite
    rebuilds at will, which merely opening the file may create: counting it made two calls differ)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def _readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
    return conn


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
    return row is not None


def cache_stats(cache_dir: Path | str | None = None) -> dict[str, Any]:
    """Entries and size on disk of the feature cache and the MLLM cache in ``cache_dir``.

    Returns ``{"cache_dir": str, "features": {...}, "mllm": {...}, "mined": {...}}`` (``mined``:
    the NegLabel label lists, which ``cache clear --what features`` removes); each part has ``path``,
    ``exists``, ``entries``, ``size_bytes``; the MLLM part also ``per_model`` (model id -> count).
    Reads only; a missing file reports zero entries.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out: dict[str, Any] = {"cache_dir": str(folder)}
    for name, db, table in (("features", FEATURES_DB, "features"), ("mllm", MLLM_DB, "responses")):
        path = folder / db
        info: dict[str, Any] = {"path": str(path), "exists": path.exists(), "entries": 0, "size_bytes": 0}
        if name == "mllm":
            info["per_model"] = {}
        if path.exists():
            info["size_bytes"] = _db_size(path)
            try:
                conn = _readonly(path)
                try:
                    if _table_exists(conn, table):
                        (info["entries"],) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                        if name == "mllm":
                            info["per_model"] = dict(
                                conn.execute(
                                    "SELECT model, COUNT(*) FROM responses GROUP BY model ORDER BY model"
                                ).fetchall()
                            )
                finally:
                    conn.close()
            except sqlite3.DatabaseError as exc:
                info["error"] = str(exc)
        out[name] = info
    mined = sorted((folder / "mined").glob("*.json")) if (folder / "mined").is_dir() else []
    out["mined"] = {
        "path": str(folder / "mined"),
        "exists": bool(mined),
        "entries": len(mined),
        "size_bytes": sum(p.stat().st_size for p in mined),
    }
    return out


def clear_cache(cache_dir: Path | str | None = None, what: str = "all") -> dict[str, int]:
    """Delete the cached entries of ``what`` (``"all"``, ``"features"`` or ``"mllm"``).

    Rows are deleted in a transaction and the file is vacuumed, so a process using the cache at
    the same time keeps working. Returns the number of rows removed per cache.
    """
    if what not in ("all", "features", "mllm"):
        raise NegspaceError(f"Unknown cache {what!r}; choose all, features or mllm.")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    removed: dict[str, int] = {}
    targets = {"features": (FEATURES_DB, ("features", "meta")), "mllm": (MLLM_DB, ("responses",))}
    for name, (db, tables) in targets.items():
        if what not in ("all", name):
            continue
        path = folder / db
        removed[name] = 0
        if not path.exists():
            continue
        try:
            removed[name] = _clear_tables(path, tables)
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                raise NegspaceError(
                    f"The cache file {path} is locked by another process ({exc}); try again when it has finished."
                ) from None
            # A damaged file holds nothing that can be trusted: remove it whole.
            for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                part.unlink(missing_ok=True)
            logger.warning("The cache file %s was damaged (%s) and is removed", path, exc)
            removed[f"{name} (damaged file removed)"] = removed.pop(name)
    if what in ("all", "features"):
        # Mined NegLabel lists are derived from the features: they go with them.
        mined = sorted((folder / "mined").glob("*.json")) if (folder / "mined").is_dir() else []
        for path in mined:
            path.unlink(missing_ok=True)
        removed["mined label lists"] = len(mined)
    return removed


def _clear_tables(path: Path, tables: Sequence[str]) -> int:
    """Delete every row of ``tables`` in one transaction, then vacuum; returns the rows removed."""
    removed = 0
    conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in tables:
                if _table_exists(conn, table):
                    n = conn.execute(f"DELETE FROM {table}").rowcount
                    if table != "meta":
                        removed += max(n, 0)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # another process holds it; space comes back later
            logger.info("Could not vacuum %s: %s", path, exc)
    finally:
        conn.close()
    return removed


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def format_cache_stats(stats: dict[str, Any]) -> str:
    """The text ``negspace cache stats`` prints for a :func:`cache_stats` result."""
    lines = [f"cache folder: {stats['cache_dir']}"]
    for name, title in (("features", "features"), ("mllm", "MLLM answers"), ("mined", "mined label lists")):
        info = stats[name]
        state = "" if info["exists"] else " (no file yet)"
        lines.append(f"{title}: {info['entries']} entries, {_human(info['size_bytes'])}{state}  {info['path']}")
        for model, count in info.get("per_model", {}).items():
            lines.append(f"    {model}: {count}")
        if "error" in info:
            lines.append(f"    cannot be read: {info['error']}")
    return "\n".join(lines)
