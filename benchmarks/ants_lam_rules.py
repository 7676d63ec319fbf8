"""ANTS lam rules side by side on synthetic worlds: Eq. 15 (``paper``), the authors' running mean
(``authors``) and the experimental ``crossfit``.

    python benchmarks/ants_lam_rules.py [--seeds 5] [--batch 50]

For each world seed and stream (far: ID + far-OOD, near: ID + near-OOD, mixed: ID + both), online
ANTS with the default rules except ``lam_rule``, a schedule scaled to the stream, the scripted
MLLM of :mod:`negspace.testing`. Prints AUROC, FPR95 (ID positive) and the final ``lam`` of each
rule, with NegLabel's AUROC as the floor; means over the seeds at the end.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from negspace.detectors.ants import ANTS
from negspace.detectors.neglabel import NegLabel
from negspace.metrics import auroc, fpr95
from negspace.testing import WorldMLLM, WorldTextEncoder, make_world, world_stream

RULES = ("paper", "authors", "crossfit")
SCHEDULE = {"min_candidates": 20, "vsnl_start": 1, "vsnl_every": 2, "groups": 10, "delta": 0.25}


def run(world, corpus, kind: str, seed: int, batch: int, **options) -> tuple[float, float, float]:
    labels, features = corpus
    det = ANTS.from_features(
        world.id_text_features,
        features,
        WorldTextEncoder(world),
        WorldMLLM(world),
        world.class_names,
        neg_labels=labels,
        **SCHEDULE,
        **options,
    )
    batches, order = world_stream(world, kind, seed, batch)
    scores = np.empty(len(order))
    scores[order] = np.concatenate(det.score_stream(batches))
    n_id = len(world.id_image_features)
    return auroc(scores[:n_id], scores[n_id:]), fpr95(scores[:n_id], scores[n_id:]), det.lam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    table: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    floor: dict[str, list[float]] = {}
    print(f"{'seed':>4} {'stream':<6} {'rule':<9}{'AUROC':>8}{'FPR95':>8}{'lam':>7}")
    for seed in range(args.seeds):
        world = make_world(seed=seed, n_per_class=50)
        corpus = world.negatives(1000)
        nl = NegLabel.from_features(world.id_text_features, corpus[1], groups=10)
        for kind in ("far", "near", "mixed"):
            batches, order = world_stream(world, kind, seed, args.batch)
            n_id = len(world.id_image_features)
            base = np.empty(len(order))
            base[order] = np.concatenate([nl.score_features(b.features) for b in batches])
            floor.setdefault(kind, []).append(auroc(base[:n_id], base[n_id:]))
            for rule in RULES:
                row = run(world, corpus, kind, seed, args.batch, lam_rule=rule)
                table.setdefault((kind, rule), []).append(row)
                print(f"{seed:>4} {kind:<6} {rule:<9}{100 * row[0]:>8.2f}{100 * row[1]:>8.2f}{row[2]:>7.3f}")
    print(f"\nMeans over {args.seeds} seeds (AUROC and FPR95 in %; NegLabel AUROC as the floor)")
    print(f"{'stream':<7}{'NegLabel':>9}" + "".join(f"{r + ' AUROC':>16}{'FPR95':>7}{'lam':>7}" for r in RULES))
    for kind in ("far", "near", "mixed"):
        line = f"{kind:<7}{100 * statistics.fmean(floor[kind]):>9.2f}"
        for rule in RULES:
            rows = table[(kind, rule)]
            line += (
                f"{100 * statistics.fmean(r[0] for r in rows):>16.2f}{100 * statistics.fmean(r[1] for r in rows):>7.2f}"
                f"{statistics.fmean(r[2] for r in rows):>7.3f}"
            )
        print(line)


if __name__ == "__main__":
    main()
