"""ANTS overhead: scoring time against NegLabel, and MLLM calls per 10,000 streamed images.

    python benchmarks/ants_overhead.py [--batch 256] [--dim 512] [--classes 1000] [--negatives 10000]
                                       [--ens 10000] [--batches 64] [--stream 10000]

1. Per-batch scoring time (MLLM excluded: a no-op scripted MLLM that answers instantly and a
   text encoder returning precomputed rows) of NegLabel, of ANTS scoring only (``score_fixed``:
   corpus bank + full ENS bank of ``--ens`` sentences + a VSNL bank of 80 classes x 5 labels), and
   of online ANTS (``score_features``: scoring plus the state update, including ENS updates that
   shift the full bank and re-group it). Median over the batches (the three measured in turn on
   each batch, so machine load hits them alike), and the mean for the
   online case (bank updates are periodic spikes).
2. MLLM calls per ``--stream`` images of a synthetic stream (60% ID, 40% far-OOD, default
   schedule, batch 256), describing every mined negative vs a k-center spread
   (``diversity="kcenter"``, 50 per update), with the AUROC each reaches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from negspace.detectors.ants import ANTS
from negspace.detectors.base import StreamBatch
from negspace.detectors.neglabel import NegLabel
from negspace.evaluation import stream_order
from negspace.metrics import auroc
from negspace.testing import InstantMLLM, make_world


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class TableEncoder:
    """Known texts to known rows; anything else to a seeded random unit row (cheap, no model)."""

    def __init__(self, dim: int, known: dict[str, np.ndarray] | None = None) -> None:
        self.dim = dim
        self.known = known or {}
        self.rng = np.random.default_rng(1)

    def encode_texts(self, texts, template="{}", progress=True):
        rows = unit_rows(self.rng, len(texts), self.dim)
        for i, text in enumerate(texts):
            if text in self.known:
                rows[i] = self.known[text]
        return rows


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def scoring_overhead(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    id_text = unit_rows(rng, args.classes, args.dim)
    corpus = unit_rows(rng, args.negatives, args.dim)
    # images near their class so that S_nl is spread and some are mined as negatives
    labels = rng.integers(0, args.classes, args.batches * args.batch)
    images = 0.3 * id_text[labels] + 0.95 * unit_rows(rng, len(labels), args.dim)
    ood = rng.random(len(labels)) < 0.3  # 30% look like nothing in particular: mined as negatives
    images[ood] = unit_rows(rng, int(ood.sum()), args.dim)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    images = images.astype(np.float32)
    batches = [images[s : s + args.batch] for s in range(0, len(images), args.batch)]
    paths = [[Path(f"img/{s}_{i}.png") for i in range(args.batch)] for s in range(len(batches))]

    neglabel = NegLabel.from_features(id_text, corpus)
    det = ANTS.from_features(
        id_text,
        corpus,
        TableEncoder(args.dim),
        InstantMLLM(),
        [f"c{i}" for i in range(args.classes)],
        ens_size=args.ens,
        max_mllm_calls=10**9,
    )
    det.state.add_ens(
        [f"s{i}" for i in range(args.ens)], unit_rows(rng, args.ens, args.dim), np.ones(args.ens), prepend=False
    )
    det._update_vsnl(list(range(80)))  # 80 = 0.08 * 1000 classes, 5 labels each
    assert det.state.ens_count == args.ens

    n_vsnl = len(det.state.vsnl_texts)
    neglabel.score_features(batches[0])
    det.score_fixed(batches[0])
    t_nl, t_fixed, online = [], [], []
    for b, p in zip(batches, paths, strict=True):  # interleaved, so the machine's load hits all three alike
        t_nl += timed(lambda b=b: neglabel.score_features(b), 1)
        t_fixed += timed(lambda b=b: det.score_fixed(b), 1)
        start = time.perf_counter()
        det.score_features(b, images=p)
        online.append(time.perf_counter() - start)
    base = statistics.median(t_nl)
    print(
        f"\nPer-batch scoring time, batch {args.batch}, K {args.classes}, corpus {args.negatives}, "
        f"ENS bank {args.ens}, VSNL bank {n_vsnl}, D {args.dim} (MLLM excluded)"
    )
    print(f"{'method':<34}{'ms/batch':>10}{'x NegLabel':>12}")
    rows = [
        ("NegLabel", base),
        ("ANTS score only (score_fixed)", statistics.median(t_fixed)),
        ("ANTS online, median batch", statistics.median(online)),
        ("ANTS online, mean batch", statistics.fmean(online)),
    ]
    for name, t in rows:
        print(f"{name:<34}{1000 * t:>10.2f}{t / base:>12.2f}")
    print(
        f"(online: {len(online)} batches from a full ENS bank, {det.state.ens_updates} ENS updates, "
        f"{det.state.vsnl_updates - 1} VSNL updates, {det.mllm_calls} no-op MLLM requests)"
    )


def calls_per_stream(args: argparse.Namespace) -> None:
    n_id_classes = 100
    n_far = 10
    n_id = int(0.6 * args.stream)
    world = make_world(
        n_classes=n_id_classes,
        n_per_class=n_id // n_id_classes,
        n_far_concepts=n_far,
        n_per_concept=(args.stream - n_id) // n_far,
        n_near_concepts=2,
        n_corpus=12000,
        seed=1,
    )
    labels, corpus = world.negatives(10_000)
    known = dict(zip(world.far_concepts, world.far_concept_features, strict=True))
    features = np.concatenate([world.id_image_features, world.far_ood_features])
    paths = [Path(f"id/{c}_{i}.png") for i, c in enumerate(world.id_image_labels)]
    paths += [Path(f"far/{c}_{i}.png") for i, c in enumerate(world.far_ood_concept)]
    order = stream_order(len(world.id_image_features), len(world.far_ood_features), 0)
    batches = [
        StreamBatch(features[order[s : s + 256]], [paths[i] for i in order[s : s + 256]])
        for s in range(0, len(order), 256)
    ]
    n = len(order)
    print(
        f"\nMLLM requests per {n} streamed images ({len(world.far_ood_features)} far-OOD, default schedule, "
        f"batch 256, K {n_id_classes}, budget off)"
    )
    print(f"{'selection':<26}{'mode':<10}{'requests':>10}{'per 10k':>10}{'ENS':>6}{'AUROC':>8}")
    for mode in ("online", "two-pass"):
        for diversity in (None, "kcenter"):
            mllm = InstantMLLM(lambda c: world.far_concepts[c])
            det = ANTS.from_features(
                world.id_text_features,
                corpus,
                TableEncoder(world.dim, known),
                mllm,
                world.class_names,
                neg_labels=labels,
                diversity=diversity,
                two_pass=mode == "two-pass",
                max_mllm_calls=10**9,
            )
            scores = np.empty(n)
            scores[order] = np.concatenate(det.score_stream(batches))
            n_id_img = len(world.id_image_features)
            quality = auroc(scores[:n_id_img], scores[n_id_img:])
            name = "all negatives" if diversity is None else "k-center, 50 per update"
            print(
                f"{name:<26}{mode:<10}{mllm.received:>10}{mllm.received * 10_000 / n:>10.0f}"
                f"{det.state.ens_count:>6}{quality:>8.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--negatives", type=int, default=10_000)
    parser.add_argument("--ens", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=64, help="timed batches")
    parser.add_argument("--stream", type=int, default=10_000)
    args = parser.parse_args()
    scoring_overhead(args)
    calls_per_stream(args)


if __name__ == "__main__":
    main()
