"""`negspace bench --suite imagenet --method all` at the papers' size, on this machine.

    python benchmarks/full_size.py [--work DIR] [--scale 1.0] [--methods all]

Writes a miniature of the ``imagenet`` suite at its real counts (50,000 ID and 35,640 OOD small
generated images, and 16 training images per class for the few-shot methods; ``--scale`` shrinks
every count), saves a tiny random-weight CLIP model, then runs the benchmark (the run API that
``negspace bench`` calls, ANTS and NegRefine with :class:`negspace.testing.InstantMLLM`) in a child
process that reports its own peak resident memory (VmHWM), five times:

1. small: 10,000 images (``limit`` 2,000 per set), empty cache;
2. small again, everything from the cache;
3. full, empty cache, killed with SIGKILL about halfway through encoding the images;
4. full, resumed: it must encode only the images the killed run did not cache;
5. full again, everything from the cache.

It prints each run's seconds per stage (listing and checking, hashing, decoding, encoding, each
method's building and scoring, report) with seconds per 1,000 images beside the small run's (time
per image should stay flat), its peak resident memory and its cache size on disk; then the
memory per image, ``(peak full - peak small) / (images full - images small)`` for the cached runs,
beside the bytes of one image's features (the bound it is compared with).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from score_collection import rss_mib  # resident memory of a process, from /proc (a sibling script)

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # fixtures_models, for the miniature's tiny model

SMALL_IMAGES = 10_000
KILL_AT = 0.45  # the first full run dies by SIGKILL once this share of the images is cached


def cached_rows(cache: Path) -> int:
    """Feature rows in a cache folder (0 while it does not exist or is locked)."""
    from negspace.cache import FEATURES_DB

    database = cache / FEATURES_DB
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM features").fetchone()[0])
    except sqlite3.Error:
        return 0


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


# -- the child: one benchmark run ----------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run the benchmark once and write what it measured to ``--report`` (JSON)."""
    from negspace.bench import BenchConfig, run_suite
    from negspace.bench.runner import ALL_METHODS
    from negspace.runconfig import ModelConfig
    from negspace.testing import InstantMLLM

    if args.kill_after_rows:  # SIGKILL this process once that many image features are committed
        from negspace.cache import FeatureStore

        put_many, committed = FeatureStore.put_many, [0]

        def put_then_maybe_die(store: FeatureStore, items) -> None:
            put_many(store, items)
            committed[0] += len(items)
            if committed[0] >= args.kill_after_rows:
                os.kill(os.getpid(), signal.SIGKILL)

        FeatureStore.put_many = put_then_maybe_die
    logging.getLogger("negspace").setLevel(logging.INFO)
    methods = ALL_METHODS if args.methods == "all" else tuple(args.methods.split(","))
    config = BenchConfig("imagenet", methods=methods, limit=args.limit, check_counts=args.scale == 1.0)
    model = ModelConfig(args.spec, weights=Path(args.weights), device="cpu", cache_dir=Path(args.cache), progress=False)
    started = time.perf_counter()
    result = run_suite(config, data_root=args.data, model=model, mllm=InstantMLLM(), out=args.out, overwrite=True)
    sets = [s for r in result.evaluations.values() for ev in list(r.values())[:1] for s in (ev.id_set, *ev.ood_sets)]
    images, cached = sum(len(s.features) for s in sets), sum(s.from_cache for s in sets)
    Path(args.report).write_text(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "stages": result.stages.seconds,
                "images": images,
                "from_cache": cached,
                "peak_rss_mib": rss_mib(os.getpid(), "VmHWM"),  # not ru_maxrss: it inherits the parent's peak
                "end_rss_mib": rss_mib(os.getpid()),  # every evaluation still held: what grows with the images
                "methods": list(next(iter(result.evaluations.values()))),
                "notes": result.notes,
                "dim": int(sets[0].features.shape[1]),
                "scored": {m: _scored(ev) for r in result.evaluations.values() for m, ev in r.items()},
                "held": _held_bytes(result),
                "inverted": {
                    m: ev.detector.get_params().get("inverted")
                    for r in result.evaluations.values()
                    for m, ev in r.items()
                    if m in ("interneg", "tins")
                },
            }
        )
    )


def _held_bytes(result) -> dict[str, int]:
    """Bytes the result holds per kind, each object counted once: the features, the sample ids
    (strings and their lists) and every method's scores."""
    seen: set[int] = set()
    held = {"features": 0, "sample ids": 0, "scores": 0}

    def add(kind: str, obj, size: int) -> None:
        if id(obj) not in seen:
            seen.add(id(obj))
            held[kind] += size

    for evaluations in result.evaluations.values():
        for evaluation in evaluations.values():
            for encoded in (evaluation.id_set, *evaluation.ood_sets):
                add("features", encoded.features, encoded.features.nbytes)
                add(
                    "sample ids",
                    encoded.sample_ids,
                    sys.getsizeof(encoded.sample_ids) + sum(sys.getsizeof(i) for i in encoded.sample_ids),
                )
            arrays = [
                evaluation.id_scores,
                *evaluation.ood_scores.values(),
                *(evaluation.stream_id_scores or {}).values(),
            ]
            for array in arrays:
                add("scores", array, array.nbytes)
    return held


def _scored(evaluation) -> int:
    """Images a method scored: each set once, or, for a test-time method, each stream whole (the
    ID set again in every OOD set's stream, the papers' protocol)."""
    if evaluation.stream_id_scores:
        return sum(
            len(evaluation.stream_id_scores[name]) + len(scores) for name, scores in evaluation.ood_scores.items()
        )
    return len(evaluation.id_scores) + sum(len(scores) for scores in evaluation.ood_scores.values())


# -- the parent: five runs -----------------------------------------------------------------------


def run_child(
    work: Path, args: argparse.Namespace, name: str, cache: Path, limit: int | None, kill_after_rows: int | None = None
) -> dict:
    report = work / f"{name}.json"
    report.unlink(missing_ok=True)
    command = (
        [
            sys.executable,
            str(HERE),
            "--child",
            "--data",
            str(work / "data"),
            "--out",
            str(work / "out" / name),
            "--cache",
            str(cache),
            "--spec",
            args.spec,
            "--weights",
            args.weights,
            "--methods",
            args.methods,
            "--scale",
            str(args.scale),
            "--report",
            str(report),
        ]
        + (["--limit", str(limit)] if limit else [])
        + (["--kill-after-rows", str(kill_after_rows)] if kill_after_rows else [])
    )
    with (work / f"{name}.log").open("w") as log:
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)  # exit code read below
    if kill_after_rows:
        if process.returncode != -signal.SIGKILL:
            raise SystemExit(f"run {name} was to die by SIGKILL but exited {process.returncode}")
        return {"cached_rows": cached_rows(cache), "exit": process.returncode}
    if process.returncode != 0:
        raise SystemExit(f"run {name} failed (exit {process.returncode}); see {work / f'{name}.log'}")
    measured = json.loads(report.read_text())
    measured["cache_mib"] = folder_mib(cache)
    return measured


def per_thousand(run: dict, stage: str) -> float:
    """Seconds per 1,000 images of a stage: images scored for a method's scoring (streams for a
    test-time method), else the run's images."""
    method, _, what = stage.partition(": ")
    n = run["scored"][method] if what == "scoring" and method in run["scored"] else run["images"]
    return 1000 * run["stages"][stage] / n


def print_run(name: str, run: dict, small: dict | None) -> None:
    n = run["images"]
    print(
        f"\n{name}: {n:,} images ({run['from_cache']:,} from the cache), {run['seconds']:.1f} s, "
        f"peak RSS {run['peak_rss_mib']:.0f} MiB (at the end {run['end_rss_mib']:.0f} MiB), "
        f"cache {run['cache_mib']:.0f} MiB on disk"
    )
    streamed = {m: k for m, k in run["scored"].items() if k != n}
    if streamed:
        print(
            "  images scored by the test-time methods (the ID set once per OOD set's stream): "
            + ", ".join(f"{m} {k:,}" for m, k in streamed.items())
        )
    print(f"  {'stage':<44}{'seconds':>9}{'s / 1k images':>15}" + (f"{'small run':>11}" if small else ""))
    for stage, seconds in run["stages"].items():
        line = f"  {stage:<44}{seconds:>9.1f}{per_thousand(run, stage):>15.3f}"
        if small and stage in small["stages"]:
            line += f"{per_thousand(small, stage):>11.3f}"
        print(line)


def print_memory(small_cached: dict, full_cached: dict) -> None:
    """Memory per image: the difference between the full and the small run from the caches."""
    extra_images = full_cached["images"] - small_cached["images"]
    per_image = (full_cached["peak_rss_mib"] - small_cached["peak_rss_mib"]) * 2**20 / extra_images
    held_per_image = (full_cached["end_rss_mib"] - small_cached["end_rss_mib"]) * 2**20 / extra_images
    dim = full_cached["dim"]
    held = {
        kind: (full_cached["held"][kind] - small_cached["held"][kind]) / extra_images for kind in full_cached["held"]
    }
    print(
        "the result holds per image: "
        + ", ".join(f"{kind} {size:,.0f} bytes" for kind, size in held.items())
        + f" ({sum(held.values()):,.0f} bytes)"
    )
    print(
        f"\nresident memory at the end, every evaluation held: {small_cached['end_rss_mib']:.0f} MiB (small), "
        f"{full_cached['end_rss_mib']:.0f} MiB (full): {held_per_image:,.0f} bytes per image"
    )
    print(
        f"memory per image (cached runs, peak RSS): {per_image:,.0f} bytes; one image's features: {4 * dim} bytes "
        f"(float32, D {dim}), the scores {len(full_cached['methods'])} methods keep: "
        f"{8 * len(full_cached['methods'])} bytes or more"
    )
    if full_cached["inverted"]:
        print(
            "images inverted by the few-shot methods in the last stream (full run): "
            + ", ".join(f"{m} {n:,}" for m, n in full_cached["inverted"].items())
        )


def parent(args: argparse.Namespace) -> None:
    from fixtures_models import save_tiny_openclip
    from negspace.bench.miniature import write_miniature
    from negspace.bench.suites import load_suite

    work = Path(args.work or tempfile.mkdtemp(prefix="negspace-full-size-"))
    data = work / "data"
    suite = _scaled(load_suite("imagenet"), args.scale)
    marker = data / f"written-{args.scale}-{args.shots}"
    if not marker.exists():  # the images are kept between invocations of this script
        shutil.rmtree(data, ignore_errors=True)
        started = time.perf_counter()
        write_miniature(suite, data, per_set=None, shots=args.shots, progress=True)
        marker.write_text("")
        print(f"wrote the data in {time.perf_counter() - started:.0f} s")
    model = save_tiny_openclip(work / "model")
    args.spec, args.weights = model.spec, str(model.weights)
    total = sum(spec.count for spec in suite.all_sets())
    small_limit = max(1, round(SMALL_IMAGES * args.scale) // 5)
    print(f"{work}: {total:,} images, small runs {5 * small_limit:,}; methods {args.methods}")
    if args.cached_only:  # the two runs from the caches an earlier invocation filled
        small_cached = run_child(work, args, "small-cached", work / "cache-small", small_limit)
        print_run("2. small, from the cache", small_cached, None)
        full_cached = run_child(work, args, "full-cached", work / "cache-full", None)
        print_run("5. full, from the cache", full_cached, small_cached)
        if any(run["from_cache"] != run["images"] for run in (small_cached, full_cached)):
            raise SystemExit("--cached-only: some images were not in the caches; run without it first")
        print_memory(small_cached, full_cached)
        return
    for cache in ("cache-small", "cache-full"):
        shutil.rmtree(work / cache, ignore_errors=True)

    small = run_child(work, args, "small", work / "cache-small", small_limit)
    print_run("1. small, empty cache", small, None)
    small_cached = run_child(work, args, "small-cached", work / "cache-small", small_limit)
    print_run("2. small, from the cache", small_cached, None)
    killed = run_child(work, args, "killed", work / "cache-full", None, kill_after_rows=int(KILL_AT * total))
    missing = total - killed["cached_rows"]
    print(
        f"\n3. full, killed by SIGKILL during encoding (exit {killed['exit']}): "
        f"{killed['cached_rows']:,} of {total:,} images' features were cached"
    )
    resumed = run_child(work, args, "resumed", work / "cache-full", None)
    print_run("4. full, resumed", resumed, small)
    encoded = resumed["images"] - resumed["from_cache"]
    print(
        f"  the resumed run encoded {encoded:,} images: "
        f"{'exactly' if encoded == missing else 'NOT'} the {missing:,} the killed run had not cached"
    )
    if encoded != missing:
        raise SystemExit("the resumed run did not encode exactly what the killed run left")
    full_cached = run_child(work, args, "full-cached", work / "cache-full", None)
    print_run("5. full, from the cache", full_cached, small_cached)
    print_memory(small_cached, full_cached)
    if not args.keep:
        shutil.rmtree(work / "out", ignore_errors=True)


def _scaled(suite, scale: float):
    """The suite with every set's count multiplied by ``scale`` (at least 1)."""
    from dataclasses import replace

    if scale == 1.0:
        return suite

    def shrink(spec):
        return replace(spec, count=max(1, round(spec.count * scale)))

    runs = tuple(replace(run, id=shrink(run.id), ood=tuple(shrink(s) for s in run.ood)) for run in suite.runs)
    return replace(suite, runs=runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="folder for the data, caches and outputs (default: a new temporary one)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every set's count (1.0: the papers')")
    parser.add_argument("--methods", default="all", help="comma-separated, or all")
    parser.add_argument("--shots", type=int, default=16, help="training images per class (the few-shot methods)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' output folders")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="only the two runs from the caches (runs 2 and 5) of an earlier invocation's --work",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--data", "--out", "--cache", "--spec", "--weights", "--report"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kill-after-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
