"""The NegLabel candidate corpus: WordNet 3.0 nouns and adjectives, shipped as package data.

NegLabel (Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language
Models", ICLR 2024) mines its negative labels from WordNet nouns and adjectives. negspace ships
one row per WordNet 3.0 noun and adjective synset (built by ``tools/build_wordnet_corpus.py``
from Debian's ``wordnet-base``; provenance and the WordNet licence are in
``negspace/corpus/wordnet/PROVENANCE.txt``) and selects from it here:

* **One entry per synset**: its first lemma, lower-cased, ``_`` replaced by a space (adjective
  markers such as ``(a)`` already removed), duplicates dropped keeping the first occurrence, in
  WordNet's file order.
* ``selection="neglabel"`` (default): the lexicographer files behind the published NegLabel lists,
  i.e. every noun file except ``noun.animal`` and ``noun.food``, plus ``adj.all``, ``adj.pert`` and
  ``adj.ppl`` (all adjective files). ``selection="all"``: every noun and adjective file.
* Adjectives that are also nouns of the same selection are removed from the adjectives, so a word
  is never a candidate twice. (The authors' code shares one "seen" set between its noun and
  adjective files, so which list kept a shared word depended on the directory listing order; their
  released ImageNet selection has such words, e.g. "grey" or "avocado", among the adjectives.)

Counts from WordNet 3.0 (Debian ``wordnet-base`` 1:3.0-37)::

                        neglabel      all
    noun synsets          72,033   82,115
    unique nouns          58,514   67,186   (the authors' release: 58,546)
    adjective synsets     18,156   18,156
    unique adjectives     14,006   14,006   (the authors' release: 13,091)
    adjectives, nouns
      removed             12,280   12,217   <- Corpus.adjectives

:func:`selection_counts` gives these numbers for each selection.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from negspace.errors import NegspaceError

__all__ = [
    "DATA_FILE_NAME",
    "SELECTIONS",
    "Corpus",
    "lexicographer_files",
    "load_wordnet_corpus",
    "selection_counts",
]

log = logging.getLogger(__name__)

DATA_FILE_NAME = "wordnet-3.0-synsets.tsv.gz"
_DATA_PACKAGE = "negspace.corpus"
_DATA_DIR = "wordnet"
_HEADER = ("pos", "lexname", "lemma")

# Row of the package data file: (pos "n" | "a", lexicographer file name, normalised first lemma).
_Row = tuple[str, str, str]

_NEGLABEL_EXCLUDED_NOUN_FILES = frozenset({"noun.animal", "noun.food"})
_ADJECTIVE_FILES = frozenset({"adj.all", "adj.pert", "adj.ppl"})

# selection name -> predicate on (pos, lexname) deciding whether a synset takes part.
_SELECTIONS: dict[str, Callable[[str, str], bool]] = {
    "neglabel": lambda pos, lexname: (
        lexname not in _NEGLABEL_EXCLUDED_NOUN_FILES if pos == "n" else lexname in _ADJECTIVE_FILES
    ),
    "all": lambda pos, lexname: True,
}
SELECTIONS: tuple[str, ...] = tuple(_SELECTIONS)


@dataclass(frozen=True)
class Corpus:
    """Candidate negative labels: nouns and adjectives, unique, in WordNet file order."""

    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.nouns) + len(self.adjectives)


def load_wordnet_corpus(selection: str = "neglabel", exclude: Iterable[str] = ()) -> Corpus:
    """Load the WordNet corpus for NegLabel-style negative-label mining.

    Args:
        selection: ``"neglabel"`` (the lexicographer files of the published NegLabel lists) or
            ``"all"`` (all of WordNet's nouns and adjectives); see the module docstring.
        exclude: names to drop from both parts, typically the ID class names. Matching is exact
            after stripping and lower-casing. A single string counts as one name.

    Raises:
        ValueError: unknown ``selection``.
        NegspaceError: the package data file is missing (a broken installation).
    """
    corpus = _selected(_check_selection(selection))
    if isinstance(exclude, str):
        exclude = (exclude,)
    drop = {name.strip().lower() for name in exclude}
    drop.discard("")
    if not drop:
        return corpus
    kept = Corpus(
        nouns=tuple(word for word in corpus.nouns if word not in drop),
        adjectives=tuple(word for word in corpus.adjectives if word not in drop),
    )
    log.debug("excluded %d corpus entries matching %d names", len(corpus) - len(kept), len(drop))
    return kept


def lexicographer_files() -> dict[str, tuple[str, ...]]:
    """Each WordNet lexicographer file (``noun.artifact``, ``adj.all``, ...) with its entries (one
    per synset, as shipped), in WordNet's order, each word once per file; CSP and NegRefine build
    their pool from these."""
    return dict(_files())


@lru_cache(maxsize=1)
def _files() -> tuple[tuple[str, tuple[str, ...]], ...]:
    files: dict[str, dict[str, None]] = {}
    for _, lexname, lemma in _rows():
        files.setdefault(lexname, {}).setdefault(lemma)
    return tuple((name, tuple(words)) for name, words in files.items())


def selection_counts(selection: str = "neglabel") -> dict[str, int]:
    """How many entries a selection has at each step (see the table in the module docstring).

    Keys: ``noun_synsets``, ``nouns`` (unique), ``adjective_synsets``, ``adjectives_unique``,
    ``adjectives`` (unique and not a noun of the selection; what :class:`Corpus` holds).
    """
    return dict(_counts(_check_selection(selection)))


def _check_selection(selection: str) -> str:
    if selection not in _SELECTIONS:
        raise ValueError(f"Unknown WordNet selection {selection!r}; choose one of: {', '.join(SELECTIONS)}.")
    return selection


@cache
def _selected(selection: str) -> Corpus:
    return _build(_rows(), selection)[0]


@cache
def _counts(selection: str) -> tuple[tuple[str, int], ...]:
    return tuple(_build(_rows(), selection)[1].items())


def _build(rows: Iterable[_Row], selection: str) -> tuple[Corpus, dict[str, int]]:
    """Select, deduplicate and split rows into a :class:`Corpus`, with step-by-step counts."""
    takes_part = _SELECTIONS[selection]
    nouns: dict[str, None] = {}  # dicts: ordered sets, first occurrence wins
    adjectives: dict[str, None] = {}
    noun_synsets = adjective_synsets = 0
    for pos, lexname, lemma in rows:
        if not takes_part(pos, lexname):
            continue
        if pos == "n":
            noun_synsets += 1
            nouns.setdefault(lemma)
        else:
            adjective_synsets += 1
            adjectives.setdefault(lemma)
    # A word that is a noun is prompted as a noun only; keeping it as an adjective too would count
    # the same word twice among the negative labels.
    pure_adjectives = tuple(word for word in adjectives if word not in nouns)
    counts = {
        "noun_synsets": noun_synsets,
        "nouns": len(nouns),
        "adjective_synsets": adjective_synsets,
        "adjectives_unique": len(adjectives),
        "adjectives": len(pure_adjectives),
    }
    return Corpus(nouns=tuple(nouns), adjectives=pure_adjectives), counts


@lru_cache(maxsize=1)
def _rows() -> tuple[_Row, ...]:
    """Parsed package data file (read once per process)."""
    resource = resources.files(_DATA_PACKAGE) / _DATA_DIR / DATA_FILE_NAME
    try:
        raw = resource.read_bytes()
    except FileNotFoundError as exc:
        raise NegspaceError(
            f"The WordNet corpus file {DATA_FILE_NAME} is missing from the negspace installation; "
            "reinstall negspace or rebuild it with tools/build_wordnet_corpus.py."
        ) from exc
    return _parse(gzip.decompress(raw).decode("utf-8"))


def _parse(text: str) -> tuple[_Row, ...]:
    lines = text.splitlines()
    if not lines or tuple(lines[0].split("\t")) != _HEADER:
        raise ValueError(f"{DATA_FILE_NAME}: unexpected header {lines[:1]!r}")
    rows: list[_Row] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or fields[0] not in ("n", "a") or not fields[2]:
            raise ValueError(f"{DATA_FILE_NAME}:{number}: malformed row {line!r}")
        rows.append((fields[0], fields[1], fields[2]))
    return tuple(rows)
