"""InterNeg's inter-modal selection of negative labels, from few-shot ID image prototypes.

InterNeg (CVPR 2026; code github.com/ZhikangXu0112/InterNeg, ``openood/networks/
clip_fixed_ood_prompt.py``) keeps a candidate label ``n`` only if it is farther from every ID
class's image prototype ``p_c`` than the class's own text ``t_c`` is (docs/methods/interneg.md)::

    keep n  iff  cos(n, p_c) < base_c = cos(t_c, p_c)   for every class c
    d(n) = mean_c (base_c − cos(n, p_c))

and takes the ``M = 2000`` largest ``d``, split between adjectives and nouns in proportion to the
survivors of each part (``int(M · A / (A + N))`` adjectives); the bank is the adjectives, then the
nouns, each by descending ``d``. Candidates: every WordNet noun and adjective (each once, an
adjective that is also a noun kept as the noun), without the ID names (exact match); prompts as
NegLabel's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from negspace.corpus.mining import selection_key, write_json_atomic
from negspace.corpus.wordnet import Corpus, load_wordnet_corpus
from negspace.templates import ADJECTIVE_TEMPLATE, NOUN_TEMPLATE

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger(__name__)


@dataclass
class InterNegBank:
    """The fixed bank: labels (adjectives, then nouns) and their features."""

    labels: list[str]
    features: np.ndarray
    n_adjectives: int


def interneg_corpus(class_names: Sequence[str]) -> Corpus:
    """Every WordNet noun and adjective, the ID names removed by exact match (as the authors'
    ``name in class_names``)."""
    corpus = load_wordnet_corpus("all")
    names = set(class_names)
    return Corpus(
        tuple(w for w in corpus.nouns if w not in names), tuple(w for w in corpus.adjectives if w not in names)
    )


def class_baselines(id_text_features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """``base_c = cos(t_c, p_c)``: how close each class's text is to its own image prototype."""
    return np.sum(np.asarray(id_text_features, np.float64) * np.asarray(prototypes, np.float64), axis=1)


def intermodal_test(
    features: np.ndarray, prototypes: np.ndarray, baselines: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows pass (``cos(n, p_c) < base_c`` for every class, strictly) and their deviation
    ``d(n) = mean_c (base_c − cos(n, p_c))`` (float64)."""
    passes = np.empty(len(features), dtype=bool)
    deviation = np.empty(len(features), dtype=np.float64)
    for start in range(0, len(features), chunk):  # bounded memory: chunk x K cosines at a time
        cosines = np.asarray(features[start : start + chunk], np.float32) @ np.asarray(prototypes, np.float32).T
        passes[start : start + chunk] = np.all(cosines < baselines, axis=1)
        deviation[start : start + chunk] = np.mean(baselines - cosines, axis=1)
    return passes, deviation


def by_deviation(passes: np.ndarray, deviation: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` passing rows with the largest deviation, largest first (ties in
    pool order)."""
    survivors = np.flatnonzero(passes)
    order = np.argsort(-deviation[survivors], kind="stable")
    return survivors[order[:count]]


def split_by_survivors(n_adjectives: int, n_nouns: int, count: int, at_least_one: bool = False) -> tuple[int, int]:
    """``(adjectives, nouns)`` of a bank of ``count``: ``int(count · A / (A + N))`` adjectives;
    ``at_least_one`` (TINS) keeps one of a part that has survivors even when its share rounds to
    none (the total may then be ``count + 1``)."""
    if n_adjectives + n_nouns == 0:
        return 0, 0
    adjectives = int(count * n_adjectives / (n_adjectives + n_nouns))
    nouns = count - adjectives
    if at_least_one:
        adjectives, nouns = max(1, adjectives) if n_adjectives else 0, max(1, nouns) if n_nouns else 0
    return adjectives, nouns


def select_interneg_bank(
    encoder: ClipEncoder,
    class_names: Sequence[str],
    id_text_features: np.ndarray,
    prototypes: np.ndarray,
    count: int = 2000,
    cache_dir: Path | None = None,
    progress: bool = True,
    at_least_one: bool = False,
    method: str = "InterNeg",
) -> InterNegBank:
    """InterNeg's fixed bank for ``class_names``: adjectives then nouns, each by descending ``d``
    (every prompt's feature cached; the selected list cached as JSON under ``cache_dir/mined``,
    keyed by the model, the classes and the prototypes). ``method`` names the run in the log
    (TINS selects its bank the same way)."""
    baselines = class_baselines(id_text_features, prototypes)
    settings = {
        "kind": "interneg",
        "count": count,
        "at_least_one": at_least_one,
        "prototypes": hashlib.sha256(np.ascontiguousarray(prototypes, np.float32).tobytes()).hexdigest(),
    }
    cache_file = cache_dir / "mined" / f"{selection_key(encoder, class_names, settings)}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        adjectives, nouns = cached["adjectives"], cached["nouns"]
    else:
        corpus = interneg_corpus(class_names)
        log.info(
            "%s: testing %d nouns and %d adjectives against the %d class prototypes",
            method,
            len(corpus.nouns),
            len(corpus.adjectives),
            len(prototypes),
        )
        noun_features = encoder.encode_texts(
            list(corpus.nouns), template=NOUN_TEMPLATE, progress=progress, description="Encoding corpus nouns (once)"
        )
        adjective_features = encoder.encode_texts(
            list(corpus.adjectives),
            template=ADJECTIVE_TEMPLATE,
            progress=progress,
            description="Encoding corpus adjectives (once)",
        )
        noun_pass, noun_d = intermodal_test(noun_features, prototypes, baselines)
        adjective_pass, adjective_d = intermodal_test(adjective_features, prototypes, baselines)
        n_adjectives, n_nouns = split_by_survivors(int(adjective_pass.sum()), int(noun_pass.sum()), count, at_least_one)
        adjectives = [corpus.adjectives[i] for i in by_deviation(adjective_pass, adjective_d, n_adjectives)]
        nouns = [corpus.nouns[i] for i in by_deviation(noun_pass, noun_d, n_nouns)]
        log.info(
            "%s: %d of %d nouns and %d of %d adjectives pass the inter-modal test; %d nouns and %d adjectives kept",
            method,
            int(noun_pass.sum()),
            len(noun_pass),
            int(adjective_pass.sum()),
            len(adjective_pass),
            len(nouns),
            len(adjectives),
        )
        if cache_file is not None:
            write_json_atomic(cache_file, {"adjectives": adjectives, "nouns": nouns})
    features = [
        encoder.encode_texts(adjectives, template=ADJECTIVE_TEMPLATE, progress=False),
        encoder.encode_texts(nouns, template=NOUN_TEMPLATE, progress=False),
    ]
    return InterNegBank(adjectives + nouns, np.concatenate(features).astype(np.float32), len(adjectives))
