#!/usr/bin/env python3
"""Build negspace's WordNet 3.0 corpus file (package data) from WordNet's own database files.

Reads ``data.noun`` and ``data.adj`` (Debian package ``wordnet-base`` installs them under
``/usr/share/wordnet``) and writes, under ``src/negspace/corpus/wordnet/``:

* ``wordnet-3.0-synsets.tsv.gz``: one row per synset, in file order (nouns, then adjectives),
  with the columns ``pos`` (``n`` or ``a``; adjective satellites count as ``a``), ``lexname``
  (lexicographer file, e.g. ``noun.animal``) and ``lemma`` (the synset's first lemma, lower-cased,
  ``_`` replaced by a space, adjective syntactic markers such as ``(a)`` removed). Duplicates are
  kept: which selection a lemma belongs to, and where it occurs first, is decided at load time.
* ``PROVENANCE.txt``: source, Debian package version, checksums, how to rebuild, WordNet licence.

The output is deterministic (gzip ``mtime=0``, no file name in the gzip header), so a rebuild from
the same WordNet files reproduces the shipped files byte for byte.

Usage::

    python tools/build_wordnet_corpus.py [--wordnet-dir /usr/share/wordnet] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger("build_wordnet_corpus")

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "negspace" / "corpus" / "wordnet"
DATA_FILE_NAME = "wordnet-3.0-synsets.tsv.gz"
PROVENANCE_FILE_NAME = "PROVENANCE.txt"
HEADER = ("pos", "lexname", "lemma")

# WordNet's standard ``lexnames`` table (lexicographer file number -> name). Debian does not ship
# the file itself, and the data files carry only the number.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip

# Synset type letter (third field of a data line) -> the part of speech we record.
_POS_OF_SS_TYPE = {"n": "n", "a": "a", "s": "a"}
_SOURCES = (("data.noun", "n"), ("data.adj", "a"))
# Adjectives may carry a syntactic marker glued to the lemma: (a) attributive, (p) predicative,
# (ip) immediately postnominal. It is not part of the word.
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")

WORDNET_LICENSE = """\
WordNet Release 3.0

This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""


class WordNetFormatError(ValueError):
    """A WordNet data file does not look like WordNet 3.0's data format."""


def normalise_lemma(raw: str, pos: str) -> str:
    """WordNet lemma as negspace uses it: marker-free, lower-case, spaces instead of '_'."""
    if pos == "a":
        raw = _ADJ_MARKER.sub("", raw)
    return raw.replace("_", " ").lower()


def iter_synsets(path: Path, pos: str) -> Iterator[tuple[str, str, str]]:
    """Yield ``(pos, lexname, first lemma)`` for each synset line of one ``data.*`` file."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith("  "):  # licence header lines start with two spaces
                continue
            fields = line.split(" ")
            try:
                lexfile = int(fields[1])
                ss_type = fields[2]
                lemma = fields[4]
                lexname = LEXNAMES[lexfile]
            except (IndexError, ValueError) as exc:
                raise WordNetFormatError(f"{path}:{number}: not a WordNet data line") from exc
            if _POS_OF_SS_TYPE.get(ss_type) != pos or not lexname.startswith("noun." if pos == "n" else "adj."):
                raise WordNetFormatError(f"{path}:{number}: synset type {ss_type!r} / {lexname} in a {pos!r} file")
            word = normalise_lemma(lemma, pos)
            if not word.strip() or "\t" in word:
                raise WordNetFormatError(f"{path}:{number}: unusable lemma {lemma!r}")
            yield pos, lexname, word


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def debian_package_of(path: Path) -> str | None:
    """``"name version"`` of the Debian package that installed ``path``, or None."""
    try:
        owner = subprocess.run(
            ["dpkg-query", "-S", str(path.resolve())],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        package = owner.split(":", 1)[0].strip()
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{package} {version}" if package and version else None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so an interrupted build leaves the old file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; package data must be world-readable
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_table(rows: Sequence[tuple[str, str, str]]) -> bytes:
    """Rows as a gzip'd TSV with a header line; deterministic bytes (no mtime, no name)."""
    text = "".join("\t".join(row) + "\n" for row in [HEADER, *rows])
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buffer.getvalue()


def provenance_text(
    wordnet_dir: Path,
    source_hashes: dict[str, str],
    package: str | None,
    rows: Sequence[tuple[str, str, str]],
    data_sha256: str,
) -> str:
    per_pos = Counter(pos for pos, _, _ in rows)
    lines = [
        "negspace WordNet corpus: provenance and licence",
        "",
        f"File: {DATA_FILE_NAME} (sha256 {data_sha256})",
        "Content: a TSV (UTF-8, gzip) with the header 'pos<TAB>lexname<TAB>lemma' and one row per",
        "  synset of WordNet's data.noun then data.adj, in file order: part of speech (n or a;",
        "  adjective satellites are a), lexicographer file name, and the synset's first lemma,",
        "  lower-cased, '_' replaced by a space, adjective markers (a), (p), (ip) removed.",
        f"  Rows: {per_pos['n']} noun synsets, {per_pos['a']} adjective synsets.",
        "",
        "Source: WordNet 3.0, Princeton University, https://wordnet.princeton.edu/",
        f"Read from: {wordnet_dir}",
        f"Debian package: {package or 'none (files not installed by dpkg)'}",
        *(f"sha256 {name}: {digest}" for name, digest in source_hashes.items()),
        "",
        "Rebuild (Debian: apt-get install wordnet-base), from the repository root:",
        f"  python tools/build_wordnet_corpus.py --wordnet-dir {wordnet_dir}",
        "The output is deterministic: the same WordNet files give the same bytes.",
        "",
        "Licence: the WordNet 3.0 licence below applies to this derived file. It is reproduced",
        "in full, as the licence requires (also in /usr/share/doc/wordnet-base/copyright).",
        "",
        WORDNET_LICENSE,
    ]
    return "\n".join(lines)


def build(wordnet_dir: Path, out_dir: Path) -> dict[str, int]:
    """Write the corpus file and its provenance note; return rows per part of speech."""
    sources = [(wordnet_dir / name, pos) for name, pos in _SOURCES]
    missing = [str(path) for path, _ in sources if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"WordNet data file(s) not found: {', '.join(missing)} (on Debian: apt-get install wordnet-base)"
        )
    rows = [row for path, pos in sources for row in iter_synsets(path, pos)]
    data = encode_table(rows)
    data_sha256 = hashlib.sha256(data).hexdigest()
    source_hashes = {path.name: sha256_of(path) for path, _ in sources}
    note = provenance_text(wordnet_dir, source_hashes, debian_package_of(sources[0][0]), rows, data_sha256)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / DATA_FILE_NAME, data)
    _write_atomic(out_dir / PROVENANCE_FILE_NAME, note.encode("utf-8"))
    log.info("wrote %s (%d bytes)", out_dir / DATA_FILE_NAME, len(data))
    return dict(Counter(pos for pos, _, _ in rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
        help=f"folder holding data.noun and data.adj (default: {DEFAULT_WORDNET_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR,
        help="where to write the corpus file and PROVENANCE.txt (default: the package data folder)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        counts = build(args.wordnet_dir, args.out_dir)
    except (OSError, WordNetFormatError) as exc:
        log.error("%s", exc)
        return 1
    print(
        f"{counts.get('n', 0)} noun synsets and {counts.get('a', 0)} adjective synsets "
        f"written to {args.out_dir / DATA_FILE_NAME}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
