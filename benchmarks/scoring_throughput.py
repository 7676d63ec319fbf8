"""Scoring throughput of the feature-level detectors, with peak memory per batch.

    python benchmarks/scoring_throughput.py [--batch 256] [--dim 512] [--classes 1000] [--negatives 10000]
                                            [--pool 70000] [--beta 1000]

Prints images per second (median of repeated batches after a warm-up), the time relative to the
scorer's bare bound (its unavoidable float32 GEMMs and log-sum-exps, timed interleaved in the same
run; medians), and the peak memory that
numpy allocates while scoring one batch (tracemalloc), for MCM, NegLabel, and the test-time
detectors TANL (label pool of ``--pool`` words, top ``--beta``; also with ``g = 0``, where every
image is confident and pays the activation softmax over the whole pool), AdaNeg (``--negatives``
negatives, memories of 10 slots) and ANTS with a stubbed MLLM (corpus bank of ``--negatives``, a full
ENS bank of ``--ens`` sentences, a VSNL bank of 80 classes x 5 labels): scoring only (frozen) and
online (mining, pooling, the lam sample; the no-op MLLM's bank updates fall outside the median).
The online detectors update their state with every batch they score, as in a stream; their
fixed-size state (queues, memories) is allocated at construction and is listed separately, not
in the per-batch peak:

- ``state MiB``: every array the detector holds in its state objects (``state_`` and any other
  non-array attribute, e.g. a kept copy of the initial state), each counted once;
- ``held MiB``: all memory the constructor allocated and the detector still holds (tracemalloc),
  i.e. the state plus the detector's own unit-norm copies of its text features.

MCM, NegLabel, TANL, AdaNeg (task) and ANTS (frozen) are also run with ``backend="torch"`` on the
CPU and, when torch sees a GPU, on CUDA; their bound is the same GEMMs and log-sum-exps in torch on that device (timing
torch against a NumPy bound interleaved would measure OpenBLAS's spinning threads taking the
cores from torch's, not the scorer). Peak memory is NumPy's
(tracemalloc does not see torch's allocator): shown as ``-`` for torch rows.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from ants_overhead import TableEncoder  # the stubs of the ANTS overhead benchmark
from negspace.detectors.adaneg import AdaNeg, task_proxies
from negspace.detectors.ants import ANTS
from negspace.detectors.csp import CSP
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.negrefine import NegRefine
from negspace.detectors.tanl import TANL
from negspace.scoring import log_sum_exp
from negspace.testing import InstantMLLM


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


def _arrays_in(value: Any, seen: set[int]) -> Iterator[np.ndarray]:
    """The numpy arrays reachable from ``value`` (through attributes, lists, dicts), once each."""
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays_in(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays_in(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for item in vars(value).values():
            yield from _arrays_in(item, seen)


def state_mib(detector: Any) -> float:
    """MiB of the arrays held in the detector's state objects (its non-array attributes).

    Counts ``state_`` and anything else kept beside it (a snapshot of the initial state would be
    counted too); the plain feature matrices the detector keeps as attributes are not state.
    Arrays sharing one buffer (views) count once.
    """
    seen: set[int] = set()
    buffers: dict[int, int] = {}
    for name, value in vars(detector).items():
        if isinstance(value, np.ndarray) or name == "encoder":
            continue
        for array in _arrays_in(value, seen):
            base = array
            while isinstance(base.base, np.ndarray):
                base = base.base
            buffers[id(base)] = base.nbytes
    return sum(buffers.values()) / 2**20


def build_held(build: Callable[[], Any]) -> tuple[Any, float]:
    """Build a detector and return it with the MiB its construction allocated and it still holds."""
    tracemalloc.start()
    detector = build()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return detector, held / 2**20


def synthetic_pairs(id_text: np.ndarray, bank: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    """Pair texts "c{i} and n{j}" to a unit feature between the two labels (stands in for the text
    tower, whose cost is paid once per pair and measured by corpus_encoding.py)."""

    def encode(texts: list[str]) -> np.ndarray:
        pairs = [text.split(" and ") for text in texts]
        features = np.stack([id_text[int(p[1:])] + bank[int(n[1:])] for p, n in pairs])
        return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)

    return encode


def bare_bound(text_banks: list[np.ndarray], tau: float = 0.01) -> Callable[[np.ndarray], np.ndarray]:
    """What a scorer cannot avoid: one float32 GEMM of the batch against each text bank it must
    score against, and one log-sum-exp over each product."""

    def bound(batch: np.ndarray) -> np.ndarray:
        out = np.zeros(len(batch))
        for bank in text_banks:
            out += log_sum_exp(batch @ bank.T, scale=1.0 / tau)
        return out

    return bound


def steady_ants(id_text: np.ndarray, corpus: np.ndarray, n_ens: int, rng: np.random.Generator, **backend: str) -> ANTS:
    """ANTS in the steady state of a long stream: a full ENS bank, a VSNL bank of 80 classes."""
    dim = id_text.shape[1]
    det = ANTS.from_features(
        id_text,
        corpus,
        TableEncoder(dim),
        InstantMLLM(),
        [f"c{i}" for i in range(len(id_text))],
        ens_size=n_ens,
        max_mllm_calls=10**9,
        **backend,
    )
    det.state.add_ens([f"s{i}" for i in range(n_ens)], unit_rows(rng, n_ens, dim), np.ones(n_ens), prepend=False)
    det._update_vsnl(list(range(80)))  # 80 = 0.08 * 1000 classes, 5 labels each
    return det


def torch_bound(text_banks: list[np.ndarray], device: str, tau: float = 0.01) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`bare_bound` in torch on ``device`` (the batch moved there, the result brought back)."""
    import torch

    from negspace import torch_scoring

    banks = [torch.as_tensor(bank, device=device) for bank in text_banks]

    def bound(batch: np.ndarray) -> np.ndarray:
        image = torch.as_tensor(batch, device=device)
        out = torch.zeros(len(batch), dtype=torch.float64, device=device)
        for bank in banks:
            out += torch_scoring.log_sum_exp(image @ bank.T, scale=1.0 / tau)
        return out.cpu().numpy()

    return bound


def timed(fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def measure(
    score: Callable[[np.ndarray], np.ndarray],
    bound: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    repeats: int,
) -> tuple[float, float, float]:
    """``(images/s, scorer / bound time ratio, peak MiB)``: medians of interleaved repeats, so the
    machine's load hits the scorer and its bound alike."""
    score(batch), bound(batch)  # warm-up: BLAS threads, caches
    times, bounds = [], []
    for _ in range(repeats):
        times.append(timed(score, batch))
        bounds.append(timed(bound, batch))
    tracemalloc.start()
    score(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    median = statistics.median(times)
    return len(batch) / median, median / statistics.median(bounds), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--negatives", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=70_000, help="TANL label pool size")
    parser.add_argument("--beta", type=int, default=1000, help="TANL top-beta labels")
    parser.add_argument("--ens", type=int, default=10_000, help="ANTS ENS bank size")
    parser.add_argument("--csp-bank", type=int, default=8_493, help="CSP bank size (its ImageNet-1k selection)")
    parser.add_argument(
        "--negrefine-bank", type=int, default=6_370, help="NegRefine bank size (the authors' filtered list)"
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-online", action="store_true", help="only MCM and NegLabel")
    parser.add_argument("--skip-torch", action="store_true", help="no backend='torch' rows")
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
    both = np.concatenate([id_text, negatives])
    # the bare bound of each scorer: the GEMMs and log-sum-exps of the same shapes it must do
    bounds = {
        "MCM": bare_bound([id_text]),
        "NegLabel (G=100)": bare_bound([both]),
        "NegLabel (G=1)": bare_bound([both]),
    }
    # CSP: NegLabel's score over its bank (about 8,500 labels for ImageNet-1k)
    csp_bank = unit_rows(rng, args.csp_bank, args.dim)
    detectors[f"CSP (bank {args.csp_bank:,}, G=100)"] = CSP.from_features(id_text, csp_bank)
    bounds[f"CSP (bank {args.csp_bank:,}, G=100)"] = bare_bound([np.concatenate([id_text, csp_bank])])
    # NegRefine: NegLabel over its bank plus the top-5 x top-5 pair matching; pair features come
    # from its table after a warm-up pass (a pair's text forward is paid once, not per batch)
    refine_bank = csp_bank[: args.negrefine_bank]
    name = f"NegRefine (bank {args.negrefine_bank:,}, pairs warm)"
    negrefine = NegRefine.from_features(
        id_text,
        refine_bank,
        class_names=[f"c{i}" for i in range(args.classes)],
        neg_labels=[f"n{j}" for j in range(len(refine_bank))],
        pair_encoder=synthetic_pairs(id_text, refine_bank),
    )
    negrefine.score_features(batch)  # warm-up: this batch's pairs encoded once
    detectors[name] = negrefine
    bounds[name] = bare_bound([np.concatenate([id_text, refine_bank])])
    state: dict[str, tuple[float, float]] = {}  # name -> (state MiB, held MiB)
    if not args.skip_online:
        pool = unit_rows(rng, args.pool, args.dim)
        noise = unit_rows(rng, 15, args.dim)
        name = f"TANL (P={args.pool // 1000}k)"
        tanl, held = build_held(functools.partial(TANL.from_features, id_text, pool, noise, beta=args.beta))
        state[name] = (state_mib(tanl), held)
        detectors[name] = tanl
        bounds[name] = bare_bound([np.concatenate([id_text, pool])])
        name = f"TANL (P={args.pool // 1000}k, g=0)"
        detectors[name] = TANL.from_features(id_text, pool, noise, beta=args.beta, g=0.0)
        bounds[name] = bounds[f"TANL (P={args.pool // 1000}k)"]
        for proxy in ("task", "sample"):
            adaneg, held = build_held(functools.partial(AdaNeg.from_features, id_text, negatives, proxy=proxy))
            name = f"AdaNeg ({proxy})"
            state[name] = (state_mib(adaneg), held)
            detectors[name] = adaneg
            bounds[name] = bare_bound([both, both])  # proxies and text features, both scored
        # Worst case of a long stream: every label's memory full (sample-adaptive pays per filled slot).
        full, held = build_held(functools.partial(AdaNeg.from_features, id_text, negatives, proxy="sample"))
        fill_every_memory(full, rng)  # writes into the state in place: same size
        state["AdaNeg (sample, full)"] = (state_mib(full), held)
        detectors["AdaNeg (sample, full)"] = full
        bounds["AdaNeg (sample, full)"] = bounds["AdaNeg (sample)"]
        frozen = steady_ants(id_text, negatives, args.ens, rng)
        frozen.freeze()
        online = steady_ants(id_text, negatives, args.ens, rng)
        paths = [f"img/{i}.png" for i in range(args.batch)]
        detectors["ANTS (frozen)"] = frozen
        detectors["ANTS (online)"] = functools.partial(online.score_features, images=paths)
        ants_bound = bare_bound([both, frozen.state.ens_bank, frozen.state.vsnl_bank])
        bounds["ANTS (frozen)"] = bounds["ANTS (online)"] = ants_bound
    if not args.skip_torch:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            on = {"backend": "torch", "device": device}
            detectors[f"MCM torch/{device}"] = MCM.from_features(id_text, **on)
            bounds[f"MCM torch/{device}"] = torch_bound([id_text], device)
            detectors[f"NegLabel (G=100) torch/{device}"] = NegLabel.from_features(id_text, negatives, groups=100, **on)
            bounds[f"NegLabel (G=100) torch/{device}"] = torch_bound([both], device)
            if not args.skip_online:
                name = f"TANL (P={args.pool // 1000}k) torch/{device}"
                detectors[name] = TANL.from_features(id_text, pool, noise, beta=args.beta, **on)
                bounds[name] = torch_bound([np.concatenate([id_text, pool])], device)
                detectors[f"AdaNeg (task) torch/{device}"] = AdaNeg.from_features(id_text, negatives, **on)
                bounds[f"AdaNeg (task) torch/{device}"] = torch_bound([both, both], device)
                ants = steady_ants(id_text, negatives, args.ens, rng, **on)
                ants.freeze()
                detectors[f"ANTS (frozen) torch/{device}"] = ants
                bounds[f"ANTS (frozen) torch/{device}"] = torch_bound(
                    [both, ants.state.ens_bank, ants.state.vsnl_bank], device
                )
    torch_threads = ""
    if not args.skip_torch:
        torch_threads = f", torch {torch.get_num_threads()} threads"
    blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    print(f"batch {args.batch}, D {args.dim}, K {args.classes}, M {args.negatives}; BLAS: {blas}{torch_threads}")
    print("x bound = time / the bare bound's (the float32 GEMMs + log-sum-exps the scorer cannot avoid)")
    print(
        f"{'detector':<30} {'images/s':>10} {'ms/batch':>9} {'x bound':>8} {'peak MiB/batch':>15} "
        f"{'state MiB':>10} {'held MiB':>9}"
    )
    for name, det in detectors.items():
        score = det.score_features if hasattr(det, "score_features") else det
        rate, ratio, peak = measure(score, bounds[name], batch, args.repeats)
        peak_text = f"{'-':>15}" if "torch/" in name else f"{peak:>15.1f}"
        sizes = f"{state[name][0]:>10.1f} {state[name][1]:>9.1f}" if name in state else f"{'-':>10} {'-':>9}"
        print(f"{name:<30} {rate:>10,.0f} {1000 * args.batch / rate:>9.2f} {ratio:>8.2f} {peak_text} {sizes}")


if __name__ == "__main__":
    main()
