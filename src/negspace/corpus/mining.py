"""NegLabel negative-label mining (docs/methods/neglabel.md; Jiang et al., ICLR 2024).

For each corpus word ``c`` the distance to the ID task is measured by

    d(c) = percentile_95 { cos(t_c, t_i) : i = 1..K }

(a high percentile rather than the max, so one odd ID name does not veto a word). Words are sorted
ascending (least ID-like first) and the first ``M = 10,000`` are kept, split between nouns and
adjectives in proportion to their corpus sizes. The original paper's rule, the lowest 15% of each
part separately, is the option ``split="per_part"``. The bank is nouns first, then adjectives,
each farthest first, as in the authors' code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from negspace.corpus.custom import corpus_fingerprint, load_corpus
from negspace.corpus.wordnet import Corpus
from negspace.reprs import fields_repr, with_config_repr
from negspace.templates import ADJECTIVE_TEMPLATE, NOUN_TEMPLATE  # also re-exported

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger(__name__)

SPLITS = ("proportional", "per_part")


@with_config_repr
@dataclass(frozen=True)
class MiningConfig:
    """Parameters of the mining rule, with NegLabel's defaults."""

    num_negatives: int = 10_000
    percentile: float = 95.0
    split: str = "proportional"
    per_part_fraction: float = 0.15
    corpus: str = "neglabel"  # a WordNet selection, or a corpus file (negspace.corpus.custom)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be positive, got {self.num_negatives}")
        if not 0 <= self.percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")
        if not 0 < self.per_part_fraction <= 1:
            raise ValueError(f"per_part_fraction must be in (0, 1], got {self.per_part_fraction}")


@dataclass(frozen=True)
class MinedNegatives:
    """The mined bank: labels (nouns then adjectives) and their prompted text features."""

    labels: list[str]
    features: np.ndarray
    n_nouns: int
    n_adjectives: int

    @property
    def nouns(self) -> list[str]:
        return self.labels[: self.n_nouns]

    @property
    def adjectives(self) -> list[str]:
        return self.labels[self.n_nouns :]

    def __repr__(self) -> str:
        return fields_repr(self)


def percentile_similarity(
    candidate_features: np.ndarray,
    id_features: np.ndarray,
    percentile: float = 95.0,
    chunk_size: int = 4096,
) -> np.ndarray:
    """``d(c)``: the ``percentile`` of each candidate's cosines to the ID features, ``(N,)``.

    Chunked so that a 70k-word corpus against 1000 classes never materialises 280 MB at once.
    Uses linear interpolation, as ``torch.quantile`` does in the reference code.
    """
    out = np.empty(len(candidate_features), dtype=np.float64)
    for start in range(0, len(candidate_features), chunk_size):
        block = candidate_features[start : start + chunk_size] @ id_features.T
        out[start : start + chunk_size] = np.percentile(block, percentile, axis=1)
    return out


def split_counts(n_nouns: int, n_adjectives: int, config: MiningConfig) -> tuple[int, int]:
    """How many nouns and adjectives to keep under ``config.split``."""
    if config.split == "per_part":
        return int(n_nouns * config.per_part_fraction), int(n_adjectives * config.per_part_fraction)
    total = n_nouns + n_adjectives
    wanted = min(config.num_negatives, total)
    if wanted < config.num_negatives:
        log.warning("only %d corpus words are available; all are used as negatives", total)
    n_adj = round(wanted * n_adjectives / total) if total else 0
    return wanted - n_adj, n_adj


def farthest_first(similarity: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest ``d(c)``, ascending; ties keep corpus order."""
    return np.argsort(similarity, kind="stable")[:count]


def select_negatives(
    noun_features: np.ndarray,
    adjective_features: np.ndarray,
    id_features: np.ndarray,
    config: MiningConfig = MiningConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """The pure mining rule on features: indices of the kept nouns and adjectives."""
    k_nouns, k_adjectives = split_counts(len(noun_features), len(adjective_features), config)
    noun_d = percentile_similarity(noun_features, id_features, config.percentile)
    adjective_d = percentile_similarity(adjective_features, id_features, config.percentile)
    return farthest_first(noun_d, k_nouns), farthest_first(adjective_d, k_adjectives)


def mine_from_features(
    corpus: Corpus,
    noun_features: np.ndarray,
    adjective_features: np.ndarray,
    id_features: np.ndarray,
    config: MiningConfig = MiningConfig(),
) -> MinedNegatives:
    """Mining on precomputed features: ``corpus`` and its nouns' and adjectives' prompted text
    features (rows in corpus order), ``id_features`` of the ID names; no encoder needed."""
    if len(noun_features) != len(corpus.nouns) or len(adjective_features) != len(corpus.adjectives):
        raise ValueError(
            f"{len(noun_features)} noun and {len(adjective_features)} adjective feature rows for "
            f"{len(corpus.nouns)} nouns and {len(corpus.adjectives)} adjectives"
        )
    noun_idx, adjective_idx = select_negatives(noun_features, adjective_features, id_features, config)
    labels = [corpus.nouns[i] for i in noun_idx] + [corpus.adjectives[i] for i in adjective_idx]
    features = np.concatenate([noun_features[noun_idx], adjective_features[adjective_idx]]).astype(np.float32)
    return MinedNegatives(labels, features, len(noun_idx), len(adjective_idx))


def _mining_key(encoder: ClipEncoder, class_names: Sequence[str], config: MiningConfig) -> str:
    # a corpus file is identified by its content, so an edited file is mined afresh
    return selection_key(encoder, class_names, {**asdict(config), "corpus": corpus_fingerprint(config.corpus)})


def selection_key(encoder: ClipEncoder, class_names: Sequence[str], settings: dict[str, object]) -> str:
    """The cache key of a label list selected with ``encoder`` for ``class_names`` under ``settings``."""
    payload = json.dumps(
        {"model": encoder.spec, "weights": encoder.fingerprint, "classes": list(class_names), **settings},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file, so a killed run leaves the old
    file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(data, out)
    # mkstemp makes the file private (0600); the cache's other files follow the umask (e.g. 0644)
    umask = os.umask(0)
    os.umask(umask)
    Path(tmp).chmod(0o666 & ~umask)
    Path(tmp).replace(path)


def mine_negative_labels(
    encoder: ClipEncoder,
    class_names: Sequence[str],
    config: MiningConfig = MiningConfig(),
    cache_dir: Path | None = None,
    progress: bool = True,
) -> MinedNegatives:
    """Mine NegLabel's negative labels for ``class_names`` with ``encoder``.

    Text features are cached per text by the encoder; the selected label lists are cached as JSON
    under ``cache_dir/mined`` (when given), keyed by model, weights, class names and config.
    """
    id_features = encoder.encode_texts(list(class_names), template=NOUN_TEMPLATE, progress=progress)
    cache_file = cache_dir / "mined" / f"{_mining_key(encoder, class_names, config)}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        nouns, adjectives = cached["nouns"], cached["adjectives"]
        log.info("reusing %d mined negative labels from %s", len(nouns) + len(adjectives), cache_file)
    else:
        corpus = load_corpus(config.corpus, exclude=class_names)
        log.info(
            "mining negatives from %d nouns and %d adjectives (their prompts are encoded once, then read "
            "from the feature cache)",
            len(corpus.nouns),
            len(corpus.adjectives),
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
        noun_idx, adjective_idx = select_negatives(noun_features, adjective_features, id_features, config)
        nouns = [corpus.nouns[i] for i in noun_idx]
        adjectives = [corpus.adjectives[i] for i in adjective_idx]
        if cache_file is not None:
            write_json_atomic(cache_file, {"nouns": nouns, "adjectives": adjectives})
    features = np.concatenate(
        [
            encoder.encode_texts(nouns, template=NOUN_TEMPLATE, progress=False),
            encoder.encode_texts(adjectives, template=ADJECTIVE_TEMPLATE, progress=False),
        ]
    )
    return MinedNegatives(nouns + adjectives, features, len(nouns), len(adjectives))
