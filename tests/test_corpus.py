"""The WordNet corpus: shipped package data, selections, counts, and the build script."""

from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from external_tools import missing_tool
from negspace.corpus import wordnet
from negspace.corpus.wordnet import (
    DATA_FILE_NAME,
    SELECTIONS,
    Corpus,
    load_wordnet_corpus,
    selection_counts,
)
from negspace.errors import NegspaceError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "tools" / "build_wordnet_corpus.py"
DEBIAN_WORDNET = Path("/usr/share/wordnet")

# Pinned from WordNet 3.0 as packaged by Debian (wordnet-base 1:3.0-37); see docs/methods/neglabel.md.
EXPECTED_COUNTS = {
    "neglabel": {
        "noun_synsets": 72_033,
        "nouns": 58_514,
        "adjective_synsets": 18_156,
        "adjectives_unique": 14_006,
        "adjectives": 12_280,
    },
    "all": {
        "noun_synsets": 82_115,
        "nouns": 67_186,
        "adjective_synsets": 18_156,
        "adjectives_unique": 14_006,
        "adjectives": 12_217,
    },
}


def _shipped_dir() -> Path:
    folder = resources.files("negspace.corpus") / "wordnet"
    assert isinstance(folder, Path), "package data is expected on the file system"
    return folder


# --- the shipped corpus ---------------------------------------------------------------------


@pytest.mark.parametrize("selection", ["neglabel", "all"])
def test_counts_are_pinned(selection: str) -> None:
    corpus = load_wordnet_corpus(selection)
    expected = EXPECTED_COUNTS[selection]
    assert len(corpus.nouns) == expected["nouns"]
    assert len(corpus.adjectives) == expected["adjectives"]
    assert len(corpus) == expected["nouns"] + expected["adjectives"]
    assert selection_counts(selection) == expected


def test_default_selection_is_neglabel() -> None:
    assert load_wordnet_corpus() == load_wordnet_corpus("neglabel")
    assert SELECTIONS == ("neglabel", "all")


@pytest.mark.parametrize("selection", ["neglabel", "all"])
def test_entries_are_clean_and_unique(selection: str) -> None:
    corpus = load_wordnet_corpus(selection)
    assert isinstance(corpus.nouns, tuple) and isinstance(corpus.adjectives, tuple)
    for part in (corpus.nouns, corpus.adjectives):
        assert len(set(part)) == len(part)
        for word in part:
            assert word, "empty entry"
            assert word == word.strip()
            assert word == word.lower()
            assert "_" not in word and "\t" not in word
            assert not re.search(r"\((a|p|ip)\)$", word), word
    assert not set(corpus.adjectives) & set(corpus.nouns)


def test_adjectives_contain_no_noun_of_their_selection() -> None:
    neglabel = load_wordnet_corpus("neglabel")
    everything = load_wordnet_corpus("all")
    # "grey" is an adjective synset's first lemma, but also a noun (noun.artifact) in both.
    assert "grey" in neglabel.nouns and "grey" not in neglabel.adjectives
    # "recombinant" is a noun only in noun.animal, which the NegLabel selection leaves out.
    assert "recombinant" in neglabel.adjectives and "recombinant" not in neglabel.nouns
    assert "recombinant" in everything.nouns and "recombinant" not in everything.adjectives


def test_neglabel_selection_leaves_out_animal_and_food_nouns() -> None:
    neglabel = load_wordnet_corpus("neglabel")
    everything = load_wordnet_corpus("all")
    assert set(neglabel.nouns) < set(everything.nouns)
    for word in ("animalia", "golden retriever", "bread", "espresso"):
        assert word in everything.nouns and word not in neglabel.nouns
    # File order: WordNet's data.noun starts with the unique beginners.
    assert neglabel.nouns[:3] == ("entity", "physical entity", "abstraction")
    assert neglabel.adjectives[:2] == ("able", "unable")
    # Adjective markers are stripped: "used_to(p)" -> "used to", "regardant(ip)" -> "regardant".
    assert {"used to", "regardant"} <= set(neglabel.adjectives)


def test_exclude_is_case_insensitive_and_stripped() -> None:
    full = load_wordnet_corpus()
    corpus = load_wordnet_corpus(exclude=["  Entity ", "ABLE", "", "not a wordnet word"])
    assert "entity" not in corpus.nouns and "able" not in corpus.adjectives
    assert len(corpus.nouns) == len(full.nouns) - 1
    assert len(corpus.adjectives) == len(full.adjectives) - 1
    # Order of the remaining entries is unchanged.
    assert corpus.nouns == tuple(w for w in full.nouns if w != "entity")
    # A single string is one name, not a sequence of letters.
    assert load_wordnet_corpus(exclude="Entity").nouns == corpus.nouns
    # Excluding does not alter the cached corpus.
    assert load_wordnet_corpus() == full


def test_unknown_selection_raises_value_error() -> None:
    with pytest.raises(ValueError, match="neglabel, all"):
        load_wordnet_corpus("nouns-only")
    with pytest.raises(ValueError, match="Unknown WordNet selection"):
        selection_counts("NegLabel")


def test_corpus_is_frozen() -> None:
    corpus = load_wordnet_corpus()
    with pytest.raises(AttributeError):
        corpus.nouns = ()  # type: ignore[misc]
    assert len(Corpus(nouns=("a",), adjectives=("b", "c"))) == 3


def test_package_data_is_found_through_the_installed_package() -> None:
    import negspace

    folder = _shipped_dir()
    data = folder / DATA_FILE_NAME
    provenance = folder / "PROVENANCE.txt"
    assert data.is_file() and provenance.is_file()
    assert folder.parent == Path(negspace.__file__).parent / "corpus"
    assert data.stat().st_size < 2_000_000
    note = provenance.read_text(encoding="utf-8")
    assert hashlib.sha256(data.read_bytes()).hexdigest() in note
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in note
    assert "wordnet-base" in note


def test_missing_package_data_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wordnet, "_DATA_DIR", "no-such-folder")
    wordnet._rows.cache_clear()
    try:
        with pytest.raises(NegspaceError, match=r"tools/build_wordnet_corpus\.py"):
            wordnet._rows()
    finally:
        monkeypatch.undo()
        wordnet._rows.cache_clear()


# --- the build script -----------------------------------------------------------------------

# Real WordNet 3.0 data lines (relations and glosses shortened), plus two invented ones that
# exercise deduplication: a second "bank" (noun.object) and an upper-case "Able" adjective.
FAKE_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by  
  2 Princeton University under the following license.  By obtaining, using  
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 | that which is perceived  
01313093 05 n 03 Animalia 0 kingdom_Animalia 0 animal_kingdom 0 000 | taxonomic kingdom  
01313888 05 n 01 recombinant 0 000 | a cell or organism with recombined genes  
02787772 06 n 02 bank 0 bank_building 0 000 | a building where banking is done  
03456186 06 n 02 grey 0 gray 0 000 | clothing that is a grey color  
07679356 13 n 01 whole_wheat_bread 0 000 | bread made with whole wheat flour  
09213434 17 n 01 bank 0 000 | sloping land (especially the slope beside a body of water)  
11015650 18 n 03 Grey 0 Charles_Grey 0 Second_Earl_Grey 0 000 | English statesman  
"""
FAKE_ADJ = """\
  1 This software and database is being provided to you, the LICENSEE, by  
00001740 00 a 01 able 0 000 | having the necessary means or skill  
00020103 00 s 02 outback(a) 0 remote 0 000 | inaccessible and sparsely populated  
00024619 00 s 02 used_to(p) 0 wont_to(p) 0 000 | in the habit  
00202677 00 s 01 regardant(ip) 0 000 | looking backward  
00389310 00 s 04 grey 0 gray 0 greyish 0 grayish 0 000 | of an achromatic color  
02787741 01 a 01 recombinant 0 000 | of or relating to recombinant DNA  
03147282 44 a 01 avenged 0 000 | for which vengeance has been taken  
09999999 00 s 01 Able 0 000 | invented duplicate  
"""
EXPECTED_ROWS = [
    ("n", "noun.Tops", "entity"),
    ("n", "noun.animal", "animalia"),
    ("n", "noun.animal", "recombinant"),
    ("n", "noun.artifact", "bank"),
    ("n", "noun.artifact", "grey"),
    ("n", "noun.food", "whole wheat bread"),
    ("n", "noun.object", "bank"),
    ("n", "noun.person", "grey"),
    ("a", "adj.all", "able"),
    ("a", "adj.all", "outback"),
    ("a", "adj.all", "used to"),
    ("a", "adj.all", "regardant"),
    ("a", "adj.all", "grey"),
    ("a", "adj.pert", "recombinant"),
    ("a", "adj.ppl", "avenged"),
    ("a", "adj.all", "able"),
]


def _run_build(wordnet_dir: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--wordnet-dir", str(wordnet_dir), "--out-dir",
         str(out_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _fake_wordnet(folder: Path, noun: str = FAKE_NOUN, adj: str = FAKE_ADJ) -> Path:
    folder.mkdir()
    (folder / "data.noun").write_text(noun, encoding="utf-8")
    (folder / "data.adj").write_text(adj, encoding="utf-8")
    return folder


def test_build_script_on_a_tiny_fake_wordnet(tmp_path: Path) -> None:
    source = _fake_wordnet(tmp_path / "wn")
    out = tmp_path / "out"
    result = _run_build(source, out)
    assert result.returncode == 0, result.stderr
    assert "8 noun synsets and 8 adjective synsets" in result.stdout

    raw = (out / DATA_FILE_NAME).read_bytes()
    rows = wordnet._parse(gzip.decompress(raw).decode("utf-8"))
    assert list(rows) == EXPECTED_ROWS
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime must be 0 for reproducible builds"

    note = (out / "PROVENANCE.txt").read_text(encoding="utf-8")
    assert hashlib.sha256(raw).hexdigest() in note
    assert hashlib.sha256(FAKE_NOUN.encode()).hexdigest() in note
    assert "not installed by dpkg" in note

    neglabel, counts = wordnet._build(rows, "neglabel")
    assert neglabel.nouns == ("entity", "bank", "grey")
    assert neglabel.adjectives == ("able", "outback", "used to", "regardant", "recombinant",
                                   "avenged")  # fmt: skip
    assert counts == {"noun_synsets": 5, "nouns": 3, "adjective_synsets": 8,
                      "adjectives_unique": 7, "adjectives": 6}  # fmt: skip
    everything, _ = wordnet._build(rows, "all")
    assert everything.nouns == ("entity", "animalia", "recombinant", "bank", "grey",
                                "whole wheat bread")  # fmt: skip
    assert everything.adjectives == ("able", "outback", "used to", "regardant", "avenged")

    # Deterministic: a second build gives the same bytes.
    assert _run_build(source, tmp_path / "again").returncode == 0
    assert (tmp_path / "again" / DATA_FILE_NAME).read_bytes() == raw


def test_build_script_rejects_malformed_input(tmp_path: Path) -> None:
    # A noun synset filed under an adjective lexicographer file is not WordNet's format.
    bad = FAKE_NOUN.replace("00001740 03 n", "00001740 00 n")
    result = _run_build(_fake_wordnet(tmp_path / "wn", noun=bad), tmp_path / "out")
    assert result.returncode == 1
    assert "data.noun:3" in result.stderr
    assert not (tmp_path / "out" / DATA_FILE_NAME).exists()

    result = _run_build(tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 1 and "wordnet-base" in result.stderr


def test_rebuild_from_debian_wordnet_reproduces_shipped_files(tmp_path: Path) -> None:
    if not (DEBIAN_WORDNET / "data.noun").is_file():
        missing_tool("Debian's WordNet (apt-get install wordnet-base) is not installed")
    shipped = _shipped_dir()
    note = (shipped / "PROVENANCE.txt").read_text(encoding="utf-8")
    for name in ("data.noun", "data.adj"):
        digest = hashlib.sha256((DEBIAN_WORDNET / name).read_bytes()).hexdigest()
        if f"sha256 {name}: {digest}" not in note:
            missing_tool(f"{DEBIAN_WORDNET / name} is not the file the shipped corpus came from")
    result = _run_build(DEBIAN_WORDNET, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / DATA_FILE_NAME).read_bytes() == (shipped / DATA_FILE_NAME).read_bytes()

    # Same note too, except the package version: identical files may come from a newer package.
    def without_package(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("Debian package:")]

    rebuilt = (tmp_path / "PROVENANCE.txt").read_text(encoding="utf-8")
    assert without_package(rebuilt) == without_package(note)
