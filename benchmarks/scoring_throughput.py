"""Scoring throughput of the feature-level detectors, with peak memory per batch.

    python benchmarks/scoring_throughput.py [--batch 256] [--dim 512] [--classes 1000] [--negatives 10000]

Prints images per second (median of repeated batches after a warm-up) and the peak memory that
numpy allocates while scoring one batch (tracemalloc), for MCM and NegLabel.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info

from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(score: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, repeats: int) -> tuple[float, float]:
    score(batch)  # warm-up: BLAS threads, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score(batch)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    score(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return len(batch) / statistics.median(times), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--negatives", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    id_text = unit_rows(rng, args.classes, args.dim)
    negatives = unit_rows(rng, args.negatives, args.dim)
    batch = unit_rows(rng, args.batch, args.dim)
    detectors = {
        "MCM": MCM.from_features(id_text),
        "NegLabel (G=100)": NegLabel.from_features(id_text, negatives, groups=100),
        "NegLabel (G=1)": NegLabel.from_features(id_text, negatives, groups=1),
    }
    blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    print(f"batch {args.batch}, D {args.dim}, K {args.classes}, M {args.negatives}; BLAS: {blas}")
    print(f"{'detector':<18} {'images/s':>12} {'ms/batch':>10} {'peak MiB/batch':>15}")
    for name, det in detectors.items():
        rate, peak = measure(det.score_features, batch, args.repeats)
        print(f"{name:<18} {rate:>12,.0f} {1000 * args.batch / rate:>10.2f} {peak:>15.1f}")


if __name__ == "__main__":
    main()
