"""Scoring throughput of the feature-level detectors, with peak memory per batch.

    python benchmarks/scoring_throughput.py [--batch 256] [--dim 512] [--classes 1000] [--negatives 10000]
                                            [--pool 70000] [--beta 1000]

Prints images per second (median of repeated batches after a warm-up) and the peak memory that
numpy allocates while scoring one batch (tracemalloc), for MCM, NegLabel, and the test-time
detectors TANL (label pool of ``--pool`` words, top ``--beta``) and AdaNeg (``--negatives``
negatives, memories of 10 slots). The online detectors update their state with every batch they
score, as in a stream; their fixed-size state (queues, memories) is allocated at construction and
is listed separately, not in the per-batch peak.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info

from negspace.detectors.adaneg import AdaNeg, task_proxies
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.tanl import TANL


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill_every_memory(detector: AdaNeg, rng: np.random.Generator) -> None:
    """Fill all memory slots with random unit features (the steady state of a long stream)."""
    state = detector.state_
    n, slots, dim = state.memory.shape
    state.memory[:, 1:] = unit_rows(rng, n * (slots - 1), dim).reshape(n, slots - 1, dim)
    state.filled[:] = slots
    state.entropy[:, 1:] = rng.random((n, slots - 1))
    state.proxies[:] = task_proxies(state.memory, state.filled)
    if state.gram is not None:
        state.gram[:] = np.einsum("nsd,ntd->nst", state.memory, state.memory)


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
    parser.add_argument("--pool", type=int, default=70_000, help="TANL label pool size")
    parser.add_argument("--beta", type=int, default=1000, help="TANL top-beta labels")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-online", action="store_true", help="only MCM and NegLabel")
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
    state_mib: dict[str, float] = {}
    if not args.skip_online:
        pool = unit_rows(rng, args.pool, args.dim)
        noise = unit_rows(rng, 15, args.dim)
        tanl = TANL.from_features(id_text, pool, noise, beta=args.beta)
        state_mib[f"TANL (P={args.pool // 1000}k)"] = sum(
            q.data.nbytes for q in (tanl.state_.id_queue, tanl.state_.ood_queue, tanl.state_.window)
        ) / 2**20
        detectors[f"TANL (P={args.pool // 1000}k)"] = tanl
        for proxy in ("task", "sample"):
            adaneg = AdaNeg.from_features(id_text, negatives, proxy=proxy)
            name = f"AdaNeg ({proxy})"
            state = adaneg.state_
            state_mib[name] = sum(
                a.nbytes for a in (state.memory, state.filled, state.entropy, state.proxies, state.gram) if a is not None
            ) / 2**20
            detectors[name] = adaneg
        # Worst case of a long stream: every label's memory full (sample-adaptive pays per filled slot).
        full = AdaNeg.from_features(id_text, negatives, proxy="sample")
        fill_every_memory(full, rng)
        state_mib["AdaNeg (sample, full)"] = state_mib["AdaNeg (sample)"]
        detectors["AdaNeg (sample, full)"] = full
    blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    print(f"batch {args.batch}, D {args.dim}, K {args.classes}, M {args.negatives}; BLAS: {blas}")
    print(f"{'detector':<18} {'images/s':>12} {'ms/batch':>10} {'peak MiB/batch':>15} {'state MiB':>10}")
    for name, det in detectors.items():
        rate, peak = measure(det.score_features, batch, args.repeats)
        state = f"{state_mib[name]:>10.1f}" if name in state_mib else f"{'-':>10}"
        print(f"{name:<18} {rate:>12,.0f} {1000 * args.batch / rate:>10.2f} {peak:>15.1f} {state}")


if __name__ == "__main__":
    main()
