"""A corpus of candidate negative labels from the user's own file (a domain vocabulary).

One word or phrase per line, a noun; or ``word<TAB>noun`` / ``word<TAB>adj`` to say which part
it belongs to (nouns are prompted ``The nice {}.``, adjectives ``This is a {} photo.``). Blank
lines and ``#`` comments are ignored; repeats are dropped (and logged). ``load_corpus`` takes a
WordNet selection name or such a file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from negspace.corpus import wordnet
from negspace.corpus.wordnet import SELECTIONS, Corpus

log = logging.getLogger(__name__)

PARTS = {"noun": "nouns", "n": "nouns", "adj": "adjectives", "a": "adjectives", "adjective": "adjectives"}


def read_corpus_file(path: str | Path) -> Corpus:
    """The nouns and adjectives of a corpus file, in file order, each once.

    Raises:
        ValueError: the file is missing or unreadable, a part tag is not noun/adj, or it holds no word
            (one sentence naming the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the corpus file {path}: {err}") from None
    parts: dict[str, dict[str, None]] = {"nouns": {}, "adjectives": {}}
    repeats = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        word, _, tag = line.partition("\t")  # split first: a tab-led line has no word
        word, tag = " ".join(word.split()), tag.strip().lower() or "noun"
        if not word:
            raise ValueError(f"{path} line {lineno}: no word before the tab")
        if tag not in PARTS:
            raise ValueError(f"{path} line {lineno}: the part {tag!r} is neither noun nor adj")
        bucket = parts[PARTS[tag]]
        repeats += word in bucket
        bucket.setdefault(word)
    if not parts["nouns"] and not parts["adjectives"]:
        raise ValueError(f"the corpus file {path} holds no word")
    if repeats:
        log.info("corpus file %s: %d repeated words dropped", path, repeats)
    return Corpus(nouns=tuple(parts["nouns"]), adjectives=tuple(parts["adjectives"]))


def is_corpus_spec(spec: str) -> bool:
    """Whether ``spec`` names a WordNet selection or an existing file (a selection name wins
    over a file of that name: pass ``./neglabel`` for the file)."""
    return spec in SELECTIONS or Path(spec).is_file()


def load_corpus(spec: str, exclude: Iterable[str] = ()) -> Corpus:
    """A WordNet selection (``neglabel``, ``all``) or a corpus file, without the ``exclude`` names
    (exact, case-insensitive: the ID class names)."""
    if spec in SELECTIONS:
        return wordnet.load_wordnet_corpus(spec, exclude=exclude)
    corpus = read_corpus_file(spec)
    drop = {name.strip().lower() for name in ([exclude] if isinstance(exclude, str) else exclude)}
    kept = Corpus(
        nouns=tuple(w for w in corpus.nouns if w.lower() not in drop),
        adjectives=tuple(w for w in corpus.adjectives if w.lower() not in drop),
    )
    if not len(kept):
        raise ValueError(f"the corpus file {spec} holds only ID class names")
    return kept


def corpus_fingerprint(spec: str) -> str:
    """What identifies a corpus for caching: its selection name, or its file's content hash."""
    if spec in SELECTIONS:
        return spec
    return "file:" + hashlib.sha256(Path(spec).read_bytes()).hexdigest()[:32]
