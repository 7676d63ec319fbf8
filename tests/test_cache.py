"""The SQLite feature store: round trips, atomic batches, crashes and concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from negspace import cache
from negspace.cache import (
    FeatureStore,
    default_cache_dir,
    file_sha256,
    make_key,
    weights_fingerprint,
)
from negspace.errors import NegspaceError


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# -- default folder ---------------------------------------------------------------------------


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("NEGSPACE_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "negspace"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "negspace"


def test_in_dir_uses_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path / "c"))
    store = FeatureStore.in_dir()
    assert store.path == tmp_path / "c" / cache.FEATURES_DB
    assert store.path.is_file()


# -- keys -------------------------------------------------------------------------------------


def test_make_key_is_stable_and_discriminating() -> None:
    a = make_key(kind="text", spec="s", text="cat")
    assert a == make_key(text="cat", spec="s", kind="text")
    assert len(a) == 64
    assert a != make_key(kind="text", spec="s", text="cats")
    assert a != make_key(kind="image", spec="s", text="cat")


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_and_missing_keys(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "f.sqlite3")
    items = {"a": _vec(0), "b": _vec(1, dim=3)}
    store.put_many(items)
    got = store.get_many(["a", "b", "nope"])
    assert set(got) == {"a", "b"}
    for key, vec in items.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], vec)
    got["a"][0] = 123.0  # returned arrays are writable copies, not views of the cache
    assert store.get_many(["a"])["a"][0] != 123.0
    assert store.count() == 2
    assert "a" in store and "nope" not in store


def test_get_many_chunks_large_queries(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "f.sqlite3")
    items = {f"k{i}": np.full(4, i, dtype=np.float32) for i in range(2500)}
    store.put_many(items)
    got = store.get_many([f"k{i}" for i in range(3000)])
    assert len(got) == 2500
    np.testing.assert_array_equal(got["k2499"], np.full(4, 2499, dtype=np.float32))


def test_put_many_replaces_and_rejects_bad_shapes(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "f.sqlite3")
    store.put_many({"a": _vec(0)})
    store.put_many({"a": _vec(1)})
    np.testing.assert_array_equal(store.get_many(["a"])["a"], _vec(1))
    with pytest.raises(ValueError):
        store.put_many({"b": _vec(2), "c": np.zeros((2, 2))})
    assert store.count() == 1  # nothing of the rejected call landed


def test_put_many_is_all_or_nothing(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "f.sqlite3")
    # The third key cannot be bound by sqlite: the statement fails after two rows went in.
    bad = {"a": _vec(0), "b": _vec(1), ("not", "a", "str"): _vec(2)}
    with pytest.raises((sqlite3.Error, ValueError)):
        store.put_many(bad)  # type: ignore[arg-type]
    assert store.count() == 0
    store.put_many({"c": _vec(3)})  # the store is still usable
    assert store.count() == 1


def test_meta_and_clear(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "f.sqlite3")
    assert store.get_meta("x") is None
    store.put_meta("x", "1")
    store.put_many({"a": _vec(0)})
    assert store.get_meta("x") == "1"
    store.clear()
    assert store.get_meta("x") is None and store.count() == 0


def test_reopen_and_pickle(tmp_path: Path) -> None:
    import pickle

    store = FeatureStore(tmp_path / "f.sqlite3")
    store.put_many({"a": _vec(0)})
    store.close()
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.get_many(["a"])["a"], _vec(0))
    with FeatureStore(tmp_path / "f.sqlite3") as again:
        assert again.count() == 1


def test_wal_mode(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "f.sqlite3")
    store.put_many({"a": _vec(0)})
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(NegspaceError, match="cannot be opened"):
        FeatureStore(path)


# -- crashes and concurrency ------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from negspace.cache import FeatureStore
    store = FeatureStore(sys.argv[1])
    batch = 50
    for b in range(100000):
        store.put_many({f"{b}-{i}": np.full(16, b, dtype=np.float32) for i in range(batch)})
        print(b, flush=True)
    """
)


def test_killed_writer_leaves_only_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for _ in range(20):  # let it commit a few batches, then kill it mid-stream
            proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert _integrity(path) == "ok"
    store = FeatureStore(path)
    n = store.count()
    assert n >= 20 * 50 and n % 50 == 0  # committed batches intact, no half batch
    batches = n // 50
    got = store.get_many([f"{b}-{i}" for b in range(batches) for i in range(50)])
    assert len(got) == n
    np.testing.assert_array_equal(got[f"{batches - 1}-49"], np.full(16, batches - 1, np.float32))


def _concurrent_writer(path: str, tag: str, n_batches: int) -> None:
    store = FeatureStore(path)
    for b in range(n_batches):
        items = {f"{tag}-{b}-{i}": np.full(8, b, dtype=np.float32) for i in range(10)}
        items[f"shared-{b}"] = np.full(8, b, dtype=np.float32)  # both processes write these
        store.put_many(items)
        store.get_many(list(items))


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    path = str(tmp_path / "f.sqlite3")
    FeatureStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_concurrent_writer, args=(path, tag, 60)) for tag in ("p", "q")]
    for p in procs:
        p.start()
    _concurrent_writer(path, "main", 60)  # a third writer in this process
    for p in procs:
        p.join(timeout=120)  # a writer stuck on a lock is still running: exitcode None
        assert p.exitcode == 0
    assert _integrity(Path(path)) == "ok"
    store = FeatureStore(path)
    assert store.count() == 3 * 60 * 10 + 60
    got = store.get_many([f"q-59-{i}" for i in range(10)] + ["shared-59"])
    assert len(got) == 11
    np.testing.assert_array_equal(got["shared-59"], np.full(8, 59, np.float32))


# -- fingerprints -----------------------------------------------------------------------------


def test_file_sha256_memoised_in_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    store = FeatureStore(tmp_path / "f.sqlite3")
    first = file_sha256(f, store)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()

    # Same size and mtime, different bytes: a memo hit returns the stored hash unread.
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(cache, "_FILE_HASH_MEMO", {})
    assert file_sha256(f, store) == first
    monkeypatch.setattr(cache, "_FILE_HASH_MEMO", {})
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()  # no store: re-hashed


def test_weights_fingerprint_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    fp = weights_fingerprint(folder)
    assert fp.startswith("dir-sha256:")
    assert weights_fingerprint(folder) == fp
    (folder / "config.json").write_text('{"changed": 1}')
    changed = weights_fingerprint(folder)
    assert changed != fp
    (folder / "tf_model.h5").write_bytes(b"unused by torch")
    (folder / "README.md").write_text("docs")
    assert weights_fingerprint(folder) == changed  # unused formats and docs are not hashed
    assert weights_fingerprint(folder / "model.safetensors").startswith("sha256:")


def _create_fresh_stores(root: str, barrier, rounds: int, failures) -> None:
    from negspace.cache import open_shared_sqlite

    for r in range(rounds):
        barrier.wait()  # every process creates the same fresh file at the same moment
        try:
            open_shared_sqlite(
                Path(root) / f"db{r}.sqlite3", ["CREATE TABLE IF NOT EXISTS t (k TEXT)"], "cache"
            ).close()
        except Exception:  # noqa: BLE001 - any failure of a racing process is what the test counts
            with failures.get_lock():
                failures.value += 1


def test_processes_creating_one_fresh_store_together_all_succeed(tmp_path):
    """Turning a new file to WAL races between its creators (SQLite says "database is locked"
    without waiting); opening retries it, so none fails. Without the retry about 2% failed."""
    context = multiprocessing.get_context("spawn")
    n, rounds = 6, 20
    barrier, failures = context.Barrier(n), context.Value("i", 0)
    workers = [
        context.Process(target=_create_fresh_stores, args=(str(tmp_path), barrier, rounds, failures)) for _ in range(n)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0] * n
    assert failures.value == 0


def _damage_the_middle(path):
    """Keep the SQLite header, overwrite the pages after it with garbage."""
    data = bytearray(path.read_bytes())
    data[4096 : len(data) - 4096] = bytes(range(256)) * ((len(data) - 8192) // 256) + b"\x00" * (
        (len(data) - 8192) % 256
    )
    path.write_bytes(bytes(data))


def test_a_cache_damaged_in_the_middle_is_named_and_cache_clear_removes_it(tmp_path):
    import subprocess
    import sys

    from negspace.errors import NegspaceError

    store = FeatureStore.in_dir(tmp_path)
    store.put_many({f"k{i}": np.full(512, i, np.float32) for i in range(2000)})
    store.close()
    path = tmp_path / "features.sqlite3"
    for suffix in ("-wal", "-shm"):  # checkpointed by close: only the main file matters
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    _damage_the_middle(path)
    with pytest.raises(NegspaceError, match=r"features.sqlite3 is damaged .*negspace cache clear"):
        FeatureStore.in_dir(tmp_path).get_many([f"k{i}" for i in range(2000)])
    result = subprocess.run(
        [sys.executable, "-m", "negspace.cli", "cache", "clear", "--what", "features", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "damaged file removed" in result.stdout and not path.exists()
    assert FeatureStore.in_dir(tmp_path).count() == 0  # a fresh cache works again
