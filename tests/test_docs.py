"""The methods' documentation (docs/methods/) is in the project and agrees with the code: no
reference to a specification outside the repository, no broken relative link, and every method
page's defaults table lists exactly the fields of the method's config with their defaults."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods"
PAGES = (
    "README.md",
    "core.md",
    "mcm.md",
    "neglabel.md",
    "csp.md",
    "negrefine.md",
    "interneg.md",
    "tins.md",
    "ants.md",
    "tanl.md",
    "adaneg.md",
    "evaluation.md",
)

# Each method page and the config dataclasses whose defaults table it must hold.
CONFIGS = {
    "mcm.md": [("negspace.detectors.mcm", "MCMConfig")],
    "neglabel.md": [("negspace.detectors.neglabel", "NegLabelConfig"), ("negspace.corpus.mining", "MiningConfig")],
    "csp.md": [("negspace.detectors.csp", "CSPConfig")],
    "negrefine.md": [("negspace.detectors.negrefine", "NegRefineConfig")],
    "interneg.md": [("negspace.detectors.interneg", "InterNegConfig")],
    "tins.md": [("negspace.detectors.tins", "TINSConfig")],
    "ants.md": [("negspace.detectors.ants.config", "ANTSConfig")],
    "tanl.md": [("negspace.detectors.tanl", "TANLConfig")],
    "adaneg.md": [("negspace.detectors.adaneg", "AdaNegConfig")],
}

# A reference to the old specification file, which does not ship with the project. (The
# `--mllm SPEC` metavar and the SPEC_FORMS constants are option placeholders, not references.)
SPEC_REFERENCE = re.compile(r"SPEC\.md|SPEC sections?\b|SPEC[ -]\d|SPEC step|the SPEC's|per SPEC\b|\(SPEC:")
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".txt",
    ".json",
    ".toml",
    ".cfg",
    ".ini",
    ".yml",
    ".yaml",
    ".csv",
    ".html",
    ".js",
    ".css",
    ".sh",
    ".rst",
}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
TABLE_HEADER = ["option", "default", "meaning"]


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    for folder in ("src", "tests", "benchmarks", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info") for p in parts):
                continue  # caches and build metadata (PKG-INFO copies the README as installed)
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path.name != Path(__file__).name:
                files.append(path)
    return files


def test_no_file_refers_to_the_specification_outside_the_repository():
    found = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if SPEC_REFERENCE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "references to the SPEC file (point at docs/methods/ instead):\n" + "\n".join(found)


def test_every_method_page_exists():
    missing = [page for page in PAGES if not (DOCS / page).is_file()]
    assert not missing, f"missing pages under docs/methods/: {missing}"


def _links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(path.read_text(encoding="utf-8"))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_point_at_files_that_exist(path):
    broken = [target for target in _links(path) if not (path.parent / target.split("#", 1)[0]).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def test_the_readme_and_the_index_link_every_method_page():
    readme = {(ROOT / t.split("#", 1)[0]).resolve() for t in _links(ROOT / "README.md")}
    index = {(DOCS / t.split("#", 1)[0]).resolve() for t in _links(DOCS / "README.md")}
    pages = {(DOCS / page).resolve() for page in PAGES}
    assert pages <= readme, f"the README does not link {sorted(p.name for p in pages - readme)}"
    assert pages - {(DOCS / "README.md").resolve()} <= index, "docs/methods/README.md does not link every page"


def test_code_pointers_to_the_docs_name_pages_and_steps_that_exist():
    """``docs/methods/ants.md, step 10`` in a comment needs the page and its step 10."""
    pointer = re.compile(r"docs/methods/((?:[a-z][\w-]*|README)\.md)(?:,? steps? (\d+))?")  # not NAME.md
    heading = re.compile(r"^#+ Step (\d+)\.", re.MULTILINE)
    steps = {
        page: set(heading.findall((DOCS / page).read_text(encoding="utf-8")))
        for page in PAGES
        if (DOCS / page).is_file()
    }
    wrong = []
    for path in _scanned_files():
        for page, step in pointer.findall(path.read_text(encoding="utf-8", errors="replace")):
            if page not in steps or (step and step not in steps[page]):
                wrong.append(f"{path.relative_to(ROOT)}: docs/methods/{page}" + (f", step {step}" if step else ""))
    assert not wrong, "pointers to missing pages or steps:\n" + "\n".join(wrong)


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|")
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def _defaults_tables(text: str) -> dict[str, list[list[str]]]:
    """The ``option | default | meaning`` tables of a page, by the config class named (in
    backticks) on the last line before each table that names one."""
    lines = text.splitlines()
    tables: dict[str, list[list[str]]] = {}
    current = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("|") and [c.lower() for c in _cells(line)] == TABLE_HEADER:
            assert current is not None, f"a defaults table with no config named before it: {line!r}"
            assert current not in tables, f"two defaults tables for {current}"
            rows, i = [], i + 2  # the header and its separator
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables[current] = rows
            continue
        named = re.findall(r"`(\w+Config)`", line)
        if named:
            current = named[-1]
        i += 1
    return tables


def _default_repr(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    raise AssertionError(f"{field.name} has no default")


@pytest.mark.parametrize("page", sorted(CONFIGS))
def test_defaults_tables_match_the_configs(page):
    tables = _defaults_tables((DOCS / page).read_text(encoding="utf-8"))
    for module, name in CONFIGS[page]:
        config = getattr(importlib.import_module(module), name)
        assert name in tables, f"{page} has no defaults table for {name}"
        rows = tables[name]
        assert all(len(row) == 3 for row in rows), f"{page}, {name}: a row without three cells"
        documented = {row[0].strip("`"): row[1].strip("`") for row in rows}
        assert len(documented) == len(rows), f"{page}, {name}: an option listed twice"
        expected = {f.name: _default_repr(f) for f in dataclasses.fields(config)}
        assert sorted(documented) == sorted(expected), (
            f"{page}, {name}: missing {sorted(set(expected) - set(documented))}, "
            f"not fields {sorted(set(documented) - set(expected))}"
        )
        wrong = {k: (documented[k], expected[k]) for k in expected if documented[k] != expected[k]}
        assert not wrong, f"{page}, {name}: defaults (documented, code) differ: {wrong}"
        assert all(row[2] for row in rows), f"{page}, {name}: an option without its meaning"
