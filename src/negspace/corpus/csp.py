"""The conjugated semantic pool of CSP and its selection, also NegRefine's initial pool.

CSP (Chen et al., "Conjugated Semantic Pool Improves OOD Detection with Pre-trained
Vision-Language Models", NeurIPS 2024; code github.com/MengyuanChen21/NeurIPS2024-CSP) replaces
NegLabel's plain adjectives with *conjugated* phrases ``"{adjective} {superclass word}"`` and
averages each label's features over several prompt templates (docs/methods/csp.md):

* **Pool**: the WordNet lexicographer files except noun.person, noun.quantity, noun.group and
  adj.pert (the authors' word files also lack noun.animal and noun.food), read in sorted file
  order; a word seen in an earlier file is skipped; each adjective kept draws one superclass word
  (``random.seed(0)``, one ``random.choice`` per adjective, in reading order).
* **Ratio** of a label ``n``: ``r(n)`` = the ``quantile`` (0.95, linear interpolation) over the ID
  classes of ``cos(n, t_c)``, set to 1 when the largest cosine exceeds ``saturate_above`` (0.95).
* **Selection**: the ``int(len · fraction)`` lowest ratios of the nouns and, apart, of the phrases
  (fraction 0.15); the bank is the kept nouns by ascending ratio, then the kept phrases.

NegRefine (ICCV 2025) starts from the same pool with the ID names removed from the nouns (exact
match) and the largest cosine as the ratio (``quantile=1``, saturation kept).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from negspace.corpus.custom import corpus_fingerprint, read_corpus_file
from negspace.corpus.mining import MinedNegatives, selection_key, write_json_atomic
from negspace.corpus.wordnet import lexicographer_files
from negspace.templates import CSP_ADJECTIVE_TEMPLATES, CSP_NOUN_TEMPLATES, CSP_SUPERCLASS_WORDS

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger(__name__)

#: Lexicographer files left out of the pool: the four of CSP's config, and the two its word files lack.
CSP_EXCLUDED_FILES = frozenset({"noun.person", "noun.quantity", "noun.group", "adj.pert", "noun.animal", "noun.food"})
WORDNET_POOL = "wordnet"  # the pool from the shipped WordNet; anything else is a corpus file


@dataclass(frozen=True)
class Pool:
    """Candidate labels: nouns, and conjugated adjective phrases with the adjective of each."""

    nouns: tuple[str, ...]
    phrases: tuple[str, ...]
    adjectives: tuple[str, ...]


@dataclass(frozen=True)
class PoolSelection:
    """How labels are chosen from the pool (CSP's rule by default; NegRefine's: ``quantile=1``,
    ``remove_id_nouns=True``)."""

    pool: str = WORDNET_POOL
    pool_seed: int = 0
    quantile: float = 0.95
    saturate_above: float | None = 0.95
    fraction: float = 0.15
    remove_id_nouns: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.quantile <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


def conjugated_pool(
    files: Mapping[str, Sequence[str]], seed: int = 0, superclass_words: Sequence[str] = CSP_SUPERCLASS_WORDS
) -> Pool:
    """The pool from word files named like WordNet's (``noun.*``, ``adj.*``; others ignored), read
    in sorted name order: each word once (the first file that has it decides whether it is a noun
    or an adjective), each adjective conjugated with a superclass word drawn with ``seed``."""
    draw = random.Random(seed)
    seen: set[str] = set()
    nouns: list[str] = []
    adjectives: list[str] = []
    phrases: list[str] = []
    for name in sorted(files):
        kind = name.split(".")[0]
        if kind not in ("noun", "adj"):
            continue
        for word in files[name]:
            if word in seen:
                continue
            seen.add(word)
            if kind == "noun":
                nouns.append(word)
            else:
                adjectives.append(word)
                phrases.append(f"{word} {draw.choice(superclass_words)}")
    return Pool(tuple(nouns), tuple(phrases), tuple(adjectives))


def load_pool(spec: str = WORDNET_POOL, seed: int = 0) -> Pool:
    """CSP's WordNet pool, or one from a corpus file (its adjectives read first, as WordNet's
    ``adj.*`` files sort before ``noun.*``).

    Raises:
        ValueError: the corpus file cannot be read (one sentence naming it).
    """
    if spec == WORDNET_POOL:
        files = {name: words for name, words in lexicographer_files().items() if name not in CSP_EXCLUDED_FILES}
    else:
        corpus = read_corpus_file(spec)
        files = {"adj.file": corpus.adjectives, "noun.file": corpus.nouns}
    return conjugated_pool(files, seed)


def label_ratios(
    label_features: np.ndarray,
    id_features: np.ndarray,
    quantile: float = 0.95,
    saturate_above: float | None = 0.95,
    chunk: int = 4096,
) -> np.ndarray:
    """``r(n)``: the ``quantile`` (linear interpolation, as ``torch.quantile``) of each label's
    cosines to the ID classes, 1 where the largest cosine exceeds ``saturate_above``; float64."""
    ratios = np.empty(len(label_features), dtype=np.float64)
    for start in range(0, len(label_features), chunk):  # bounded memory: chunk x K cosines at a time
        cosines = label_features[start : start + chunk] @ id_features.T
        part = np.quantile(cosines.astype(np.float64), quantile, axis=1)
        if saturate_above is not None:
            part[cosines.max(axis=1) > saturate_above] = 1.0
        ratios[start : start + chunk] = part
    return ratios


def lowest(ratios: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``int(len · fraction)`` lowest ratios, ascending (ties in pool order)."""
    return np.argsort(ratios, kind="stable")[: int(len(ratios) * fraction)]


def select_from_pool(
    encoder: ClipEncoder,
    class_names: Sequence[str],
    id_features: np.ndarray,
    selection: PoolSelection = PoolSelection(),
    cache_dir: Path | None = None,
    progress: bool = True,
) -> MinedNegatives:
    """The selected bank for ``class_names``: kept nouns by ascending ratio, then kept phrases;
    features averaged over the templates (nouns: 8 noun templates; phrases: 4 adjective
    templates). Every prompt's feature is cached, so an interrupted encoding resumes; the selected
    list is cached as JSON under ``cache_dir/mined``."""
    settings = {
        **asdict(selection),
        "pool": corpus_fingerprint(selection.pool) if selection.pool != WORDNET_POOL else WORDNET_POOL,
        "kind": "conjugated-pool",
    }
    cache_file = cache_dir / "mined" / f"{selection_key(encoder, class_names, settings)}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        nouns, phrases = cached["nouns"], cached["adjectives"]
        log.info("reusing %d selected labels from %s", len(nouns) + len(phrases), cache_file)
    else:
        pool = load_pool(selection.pool, selection.pool_seed)
        pool_nouns = list(pool.nouns)
        if selection.remove_id_nouns:  # exact, as the authors' `line.strip() in class_name`
            names = set(class_names)
            pool_nouns = [word for word in pool_nouns if word not in names]
        log.info(
            "selecting from a pool of %d nouns and %d conjugated adjectives (%d prompts, encoded once, then "
            "read from the feature cache)",
            len(pool_nouns),
            len(pool.phrases),
            len(pool_nouns) * len(CSP_NOUN_TEMPLATES) + len(pool.phrases) * len(CSP_ADJECTIVE_TEMPLATES),
        )
        noun_features = encoder.encode_texts_averaged(
            pool_nouns, CSP_NOUN_TEMPLATES, progress=progress, description="Encoding pool nouns (once)"
        )
        phrase_features = encoder.encode_texts_averaged(
            list(pool.phrases), CSP_ADJECTIVE_TEMPLATES, progress=progress, description="Encoding pool phrases (once)"
        )
        rule = (selection.quantile, selection.saturate_above)
        noun_idx = lowest(label_ratios(noun_features, id_features, *rule), selection.fraction)
        phrase_idx = lowest(label_ratios(phrase_features, id_features, *rule), selection.fraction)
        nouns = [pool_nouns[i] for i in noun_idx]
        phrases = [pool.phrases[i] for i in phrase_idx]
        if cache_file is not None:
            write_json_atomic(cache_file, {"nouns": nouns, "adjectives": phrases})
    return bank_of(encoder, nouns, phrases, progress=False)


def bank_of(
    encoder: ClipEncoder, nouns: Sequence[str], phrases: Sequence[str], progress: bool = True
) -> MinedNegatives:
    """A bank of nouns then conjugated phrases, with their template-averaged features."""
    features = [
        encoder.encode_texts_averaged(list(nouns), CSP_NOUN_TEMPLATES, progress=progress),
        encoder.encode_texts_averaged(list(phrases), CSP_ADJECTIVE_TEMPLATES, progress=progress),
    ]
    return MinedNegatives(
        list(nouns) + list(phrases), np.concatenate(features).astype(np.float32), len(nouns), len(phrases)
    )
