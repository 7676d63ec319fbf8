"""`negspace score` over a generated collection: memory stays flat, and a `kill -9` resumes.

    python benchmarks/score_collection.py [--images 10000] [--chunk 512]

Writes ``--images`` small JPEGs, saves an MCM detector on a random-weight ViT (built from a
config, as the tests do), then runs `negspace score` as a separate process, sampling its
resident memory (``/proc/PID/status``) every 0.2 s. The first run is killed with SIGKILL once
about a third of the parts are written; the second run resumes. Prints the memory over each run
(first, median and peak after the model loaded; flat = the peak stays near the median), the
rows written before the kill, and checks that the final table holds every image exactly once.
First it times the rows of a collection against ``score_features`` alone (``--rows-only``: just that).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SMALL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident memory now (``VmHWM``: its own peak) in MiB, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(command: list[str], out: Path, kill_at_parts: int | None) -> tuple[list[float], int]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while process.poll() is None:
        value = rss_mib(process.pid)
        if value is not None:
            samples.append(value)
        if kill_at_parts is not None and len(list(out.glob("part-*.parquet"))) >= kill_at_parts:
            process.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    return samples, process.returncode


def describe(samples: list[float]) -> str:
    steady = samples[len(samples) // 4 :] or samples  # after the model and the detector loaded
    return (
        f"RSS first {samples[0]:.0f} MiB, median {statistics.median(steady):.0f} MiB, "
        f"peak {max(steady):.0f} MiB over {len(samples)} samples"
    )


def rows_against_scores(n: int = 8192, dim: int = 512, batch: int = 256, repeats: int = 5) -> None:
    """The cost of a collection's rows (``score_rows``: scores, flags, nearest ID class and
    negative) against ``score_features`` alone, per image, on a feature matrix (no files), for
    every method as `negspace score` runs it (test-time methods loaded frozen): each makes its
    products once for both (goal: at most 1.1x)."""
    from types import SimpleNamespace

    from negspace.collections_api import score_rows
    from negspace.detectors.adaneg import AdaNeg
    from negspace.detectors.csp import CSP
    from negspace.detectors.interneg import InterNeg
    from negspace.detectors.mcm import MCM
    from negspace.detectors.neglabel import NegLabel
    from negspace.detectors.negrefine import NegRefine
    from negspace.detectors.tanl import TANL
    from negspace.detectors.tins import TINS
    from scoring_throughput import steady_ants, synthetic_pairs

    rng = np.random.default_rng(0)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def labels(count: int) -> list[str]:
        return [f"n{j}" for j in range(count)]

    id_text, features, bank, prototypes = unit(1000), unit(n), unit(10_000), unit(1000)
    names = [f"c{k}" for k in range(1000)]
    detectors = {
        "MCM": MCM.from_features(id_text),
        "NegLabel (10,000 labels)": NegLabel(id_text, bank, neg_labels=labels(10_000)),
        "CSP (8,493 labels)": CSP(id_text, bank[:8493], neg_labels=labels(8493)),
        "NegRefine (6,370, pairs warm)": NegRefine.from_features(
            id_text,
            bank[:6370],
            class_names=names,
            neg_labels=labels(6370),
            pair_encoder=synthetic_pairs(id_text, bank),
            pair_cache=250_000,
        ),  # every pair of these features stays warm (8,192 x 25 pairs)
        "TANL (70k pool, frozen)": TANL.from_features(id_text, unit(70_000), unit(15), pool_labels=labels(70_000)),
        "AdaNeg (task, frozen)": AdaNeg.from_features(id_text, bank, neg_labels=labels(10_000)),
        "ANTS (banks full, frozen)": steady_ants(id_text, bank, 10_000, rng),
        "InterNeg (frozen)": InterNeg.from_features(id_text, bank, prototypes, neg_labels=labels(10_000)),
        "TINS (frozen)": TINS.from_features(id_text, bank, prototypes, neg_labels=labels(10_000)),
    }
    for detector in detectors.values():
        if hasattr(detector, "freeze"):
            detector.freeze()
    detectors["NegRefine (6,370, pairs warm)"].score_features(features)  # every pair encoded once
    encoding = SimpleNamespace(features=features, paths=[f"{i}.jpg" for i in range(n)], hashes=[""] * n)
    print(f"rows of `negspace score` vs score_features alone: {n} features, D {dim}, batch {batch} (best of {repeats})")
    for name, detector in detectors.items():
        times = {"score": [], "rows": [], "two passes": []}
        for _ in range(repeats):  # interleaved: the machine's load hits all three alike
            started = time.perf_counter()
            for start in range(0, n, batch):
                detector.score_features(features[start : start + batch])
            times["score"].append(time.perf_counter() - started)
            started = time.perf_counter()
            score_rows(detector, encoding, 0.5, names, batch)
            times["rows"].append(time.perf_counter() - started)
            started = time.perf_counter()  # what the rows cost before: the score, then the labels' own product
            for start in range(0, n, batch):
                detector.score_features(features[start : start + batch])
                detector.nearest_labels(features[start : start + batch])
            times["two passes"].append(time.perf_counter() - started)
        best = {key: min(value) for key, value in times.items()}
        print(
            f"  {name:<30} score_features {n / best['score']:>9,.0f} images/s; rows {n / best['rows']:>9,.0f}"
            f" images/s: {best['rows'] / best['score']:.2f}x (goal <= 1.1x; two products: "
            f"{best['two passes'] / best['score']:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--rows-only", action="store_true", help="only the rows-vs-scores timing (seconds)")
    args = parser.parse_args()
    rows_against_scores()
    if args.rows_only:
        return
    import open_clip
    import pyarrow.dataset as ds

    from negspace.detectors.mcm import MCM
    from negspace.encoders import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        folder = root / "collection"
        for i in range(args.images):
            sub = folder / f"{i // 1000:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(sub / f"{i:05d}.jpg")
        config = root / "bench-tiny.json"
        config.write_text(json.dumps(SMALL_CONFIG))
        torch.manual_seed(0)
        torch.save(open_clip.CLIP(**SMALL_CONFIG).state_dict(), root / "w.pt")
        spec = f"openclip:{config}/none"
        encoder = load_encoder(spec, weights=root / "w.pt", device="cpu", use_cache=False)
        MCM.from_encoder(encoder, [f"class {k}" for k in range(100)]).save(root / "detector")
        out = root / "scores"
        command = [
            sys.executable,
            "-m",
            "negspace.cli",
            "score",
            str(folder),
            "--detector",
            str(root / "detector"),
            "--out",
            str(out),
            "--threshold",
            "0.011",
            "--chunk-size",
            str(args.chunk),
            "--no-cache",
            "--model",
            spec,
            "--weights",
            str(root / "w.pt"),
            "--device",
            "cpu",
            "-q",
        ]
        parts = -(-args.images // args.chunk)
        first, code = run(command, out, kill_at_parts=max(1, parts // 3))
        before = ds.dataset(out, format="parquet").count_rows()
        second, code2 = run(command, out, kill_at_parts=None)
        table = ds.dataset(out, format="parquet").to_table(columns=["path"]).column("path").to_pylist()
    print(
        f"{args.images:,} images, parts of {args.chunk}: killed run (exit {code}) wrote {before:,} rows; "
        f"{describe(first)}"
    )
    print(f"resumed run (exit {code2}): {describe(second)}")
    print(
        f"final table: {len(table):,} rows, {len(set(table)):,} distinct paths "
        f"({'every image exactly once' if len(table) == len(set(table)) == args.images else 'MISMATCH'})"
    )


if __name__ == "__main__":
    main()
