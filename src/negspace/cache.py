"""On-disk feature cache: a small SQLite key -> float32 vector store.

Encoders cache one row per text and per image, keyed by a SHA-256 of everything that determines
the feature (model spec, weights fingerprint, template or preprocessing, text or file content).
SQLite in WAL mode gives what the cache needs without a server:

* each :meth:`FeatureStore.put_many` call is one transaction, so a run killed mid-way leaves the
  batches it committed intact and nothing half-written;
* several processes may read and write the same file at once (writers wait on a busy timeout);
* readers never block writers.

The cache folder is :func:`default_cache_dir` unless the caller passes one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from negspace.errors import NegspaceError, arg

__all__ = [
    "FeatureStore",
    "SharedSQLiteStore",
    "default_cache_dir",
    "file_sha256",
    "make_key",
    "open_shared_sqlite",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

#: File name of the feature database inside a cache folder.
FEATURES_DB = "features.sqlite3"

_SCHEMA_VERSION = 1
# SQLite's limit on bound parameters is 32766 since 3.32 but 999 before; stay well below both.
_IN_CHUNK = 900
# Seconds a writer waits for another process's transaction before giving up.
_BUSY_TIMEOUT_S = 60.0
_HASH_BLOCK = 1 << 20
# Files in a model folder that the torch loaders never read (TensorFlow, Flax, ONNX and Rust
# weights, docs): leaving them out of the fingerprint saves hashing gigabytes for nothing.
_UNUSED_SUFFIXES = frozenset({".h5", ".msgpack", ".onnx", ".ot", ".md"})


def default_cache_dir() -> Path:
    """Return the cache folder: ``$NEGSPACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/negspace``,
    else ``~/.cache/negspace``. The folder is not created here."""
    explicit = os.environ.get("NEGSPACE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "negspace"
    return Path.home() / ".cache" / "negspace"


def make_key(**parts: Any) -> str:
    """Hash keyword parts (JSON-serialisable values) into a stable hex key.

    Keys are order-independent in the keyword names, so ``make_key(kind="text", text="cat")``
    equals ``make_key(text="cat", kind="text")``.
    """
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def open_shared_sqlite(path: Path, schema: Iterable[str], what: str) -> sqlite3.Connection:
    """Open a SQLite file that threads and processes share, creating ``schema`` if needed.

    WAL journal (readers never block writers), a busy timeout (writers wait for each other),
    ``synchronous=NORMAL`` (never corrupt in WAL mode; a power cut may lose only the last
    commits, which a re-run recomputes). Transactions are opened by the caller (BEGIN IMMEDIATE),
    so a writer takes the write lock up front instead of failing on a read-to-write upgrade.
    ``what`` names the cache in the one-sentence errors.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect_with_retry(path, list(schema))
    except sqlite3.DatabaseError as exc:
        raise NegspaceError(
            f"The {what} {path} cannot be opened ({exc}); delete it or choose another folder "
            f"with {arg('cache_dir')} or NEGSPACE_CACHE_DIR."
        ) from exc
    except OSError as exc:
        raise NegspaceError(
            f"The {what} folder {path.parent} cannot be created ({exc.strerror}); choose another "
            f"with {arg('cache_dir')} or NEGSPACE_CACHE_DIR."
        ) from exc
    return conn


def _connect_with_retry(path: Path, schema: list[str]) -> sqlite3.Connection:
    # Switching a new file to WAL needs an exclusive lock and SQLite reports "database is
    # locked" at once, without its busy handler, when two processes create the file together:
    # retry that for up to the busy timeout.
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.01
    while True:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in schema:
                    conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        except BaseException:
            conn.close()
            raise


# What SQLite says of a damaged or locked file (sqlite3 gives no finer exception types).
_DAMAGE = re.compile(r"malformed|not a database|corrupt|disk I/O error|locked")


def _store_error(what: str, path: Path, exc: Exception) -> str:
    if "locked" in str(exc):
        return (
            f"The {what} {path} stayed locked by another process for {_BUSY_TIMEOUT_S:.0f} s ({exc}); "
            f"wait for it to finish or choose another folder with {arg('cache_dir')}."
        )
    return (
        f"The {what} {path} is damaged ({exc}); 'negspace cache clear' removes a damaged file "
        "(or delete it by hand), then run again."
    )


class SharedSQLiteStore:
    """A SQLite file shared by threads and processes: one connection per process, opened on
    first use (and again after a fork), calls serialised by a lock, picklable by path.

    Subclasses name their tables in ``SCHEMA`` and the cache in ``WHAT`` (for error sentences).
    """

    SCHEMA: tuple[str, ...] = ()
    WHAT = "cache"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        with self._lock:
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: reopen in the child.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = open_shared_sqlite(self.path, self.SCHEMA, what=self.WHAT)
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a damaged file becomes one sentence naming it."""
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.DatabaseError as exc:
                if not _DAMAGE.search(str(exc)):
                    raise  # a programming error, not the file's fault
                raise NegspaceError(_store_error(self.WHAT, self.path, exc)) from None

    def select_by_keys(self, query: str, keys: Iterable[str]) -> list[tuple[Any, ...]]:
        """The rows of ``query`` (``... WHERE key IN ({marks})``) for ``keys``, each asked once,
        in chunks below SQLite's limit of bound parameters."""
        wanted = list(dict.fromkeys(keys))
        rows: list[tuple[Any, ...]] = []
        with self._session() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                rows.extend(conn.execute(query.format(marks=",".join("?" * len(chunk))), chunk))
        return rows

    def close(self) -> None:
        """Close the connection (the store reopens it if used again)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for multiprocessing: the child opens its own connection.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]  # unpickled: open the store at its path again

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


_Store = TypeVar("_Store", bound=SharedSQLiteStore)


class FeatureStore(SharedSQLiteStore):
    """A SQLite-backed map from string keys to 1-D float32 vectors.

    Args:
        path: the database file (created with its parent folders if missing). Use
            :meth:`in_dir` to open the standard file inside a cache folder.

    The store is safe to use from several processes at once. Inside one process it may be shared
    by threads (calls are serialised by a lock), and it reopens its connection after a fork.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, data BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"PRAGMA user_version = {_SCHEMA_VERSION}",
    )
    WHAT = "feature cache"

    @classmethod
    def in_dir(cls, cache_dir: Path | str | None = None) -> FeatureStore:
        """Open the feature database inside ``cache_dir`` (default: :func:`default_cache_dir`)."""
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return cls(folder / FEATURES_DB)

    # -- features -----------------------------------------------------------------------------

    def count(self) -> int:
        """Number of cached feature rows."""
        with self._session() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM features").fetchone()
        return int(count)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.get_many([key])

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Return ``{key: vector}`` for the keys present (missing keys are simply absent)."""
        found: dict[str, np.ndarray] = {}
        for key, dim, data in self.select_by_keys("SELECT key, dim, data FROM features WHERE key IN ({marks})", keys):
            vec = np.frombuffer(data, dtype="<f4")
            if vec.shape[0] != dim:  # never expected; treat as a miss, it gets rewritten
                logger.warning("Ignoring a malformed cache row in %s", self.path)
                continue
            found[key] = vec.astype(np.float32)  # native-endian, writable copy
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        """Store all ``items`` in one transaction: either every row lands or none does."""
        if not items:
            return
        rows = []
        for key, value in items.items():
            vec = np.asarray(value, dtype="<f4")
            if vec.ndim != 1:
                raise ValueError(f"cache values must be 1-D vectors, got shape {vec.shape}")
            rows.append((key, int(vec.shape[0]), vec.tobytes()))
        with self._session() as conn:
            write_rows(conn, "INSERT OR REPLACE INTO features (key, dim, data) VALUES (?, ?, ?)", rows)

    def clear(self) -> None:
        """Delete every cached feature and memo."""
        with self._session() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM features")
                conn.execute("DELETE FROM meta")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- small memo table (e.g. weights fingerprints) ------------------------------------------

    def get_meta_many(self, keys: Iterable[str]) -> dict[str, str]:
        """Return ``{key: memo}`` for the keys present."""
        rows = self.select_by_keys("SELECT key, value FROM meta WHERE key IN ({marks})", keys)
        return {str(k): str(v) for k, v in rows}

    def put_meta_many(self, items: Mapping[str, str]) -> None:
        """Store memos in one transaction."""
        if items:
            with self._session() as conn:
                write_rows(conn, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(items.items()))

    def get_meta(self, key: str) -> str | None:
        """Return the memo stored under ``key``, or None."""
        with self._session() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_meta(self, key: str, value: str) -> None:
        """Store a memo string under ``key``."""
        with self._session() as conn:
            write_rows(conn, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(key, value)])


def write_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Write ``rows`` in one transaction (BEGIN IMMEDIATE: the write lock up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- content hashing ------------------------------------------------------------------------------

_FILE_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path | str, store: FeatureStore | None = None) -> str:
    """SHA-256 of a file's bytes, memoised by (absolute path, size, mtime_ns).

    The memo lives in this process and, when ``store`` is given, in its meta table, so a large
    checkpoint is hashed once per machine rather than once per run.
    """
    p = Path(path).expanduser().resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    digest = _FILE_HASH_MEMO.get(memo_key)
    store_key = "sha256:" + json.dumps(memo_key)
    if digest is None and store is not None:
        digest = store.get_meta(store_key)
    if digest is None:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
        digest = h.hexdigest()
        if store is not None:
            store.put_meta(store_key, digest)
    _FILE_HASH_MEMO[memo_key] = digest
    return digest


def weights_fingerprint(path: Path | str, store: FeatureStore | None = None) -> str:
    """Fingerprint local weights: a file's SHA-256, or for a folder a hash over its top-level
    files (config, tokenizer, weights), each hashed with :func:`file_sha256`."""
    p = Path(path).expanduser()
    if p.is_dir():
        h = hashlib.sha256()
        for child in sorted(p.iterdir()):
            if child.is_file() and not child.name.startswith(".") and child.suffix.lower() not in _UNUSED_SUFFIXES:
                h.update(f"{child.name}\0{file_sha256(child, store)}\n".encode())
        return "dir-sha256:" + h.hexdigest()
    return "sha256:" + file_sha256(p, store)
