"""Every code example of the README and the documentation site runs, or says what it needs.

A fenced ``python`` or ``bash`` block is an example. Each one either runs here, page by page in
order (one folder and one Python namespace per page, as a reader would type them), or carries a
marker on the line before it naming what this offline, CPU-only suite does not have::

    <!-- needs: weights -->

(an HTML comment: MkDocs and GitHub show nothing). The needs are the keys of ``NEEDS``. A marked
block is still checked: its Python compiles, and each ``negspace`` command in it parses with the
command line's own parser.

The examples run with what the rest of the suite uses: the tiny random-weight CLIP model of
``tests/fixtures_models.py`` stands in for ``openclip:ViT-B-16/openai`` (a ``--model`` option, or
the string ``"openclip:ViT-B-16/openai"`` in Python, is replaced by it), and ``data/`` is a
miniature of the ``imagenet`` suite (``negspace.bench.miniature.write_miniature``: the suite's
real folders, a few generated images each). Shell blocks may hold ``negspace`` commands (run
in-process through ``negspace.cli.main``, each must exit 0) and the install steps the suite's own
environment has already done (``python3 -m venv .venv``, ``. .venv/bin/activate``,
``pip install -e ".[EXTRA]"``, whose extras must exist); anything else needs a marker. A
``negspace cache`` command works on a cache folder of the page's own.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# the README, the site, and the two files the site includes (docs/changelog.md, docs/contributing.md)
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]

# What a marked example needs, and why the suite cannot give it.
NEEDS = {
    "weights": "real model weights from the Hugging Face hub (CLIP or an MLLM): a download",
    "gpu": "a CUDA GPU",
    "server": "a server: an MLLM or LLM endpoint, a Ray cluster, or `negspace serve`, which runs until stopped",
    "data": "the papers' data sets or a reader's own images (named by placeholders such as ID_IMAGES)",
    "time": "minutes to hours: the benchmark scripts, the whole test suite, CI",
}
CODE = {"python", "bash"}
NOT_CODE = {"text", "json", "yaml", "toml", "csv"}  # output, layouts, formulas, data: shown, not run

HUB_MODEL = "openclip:ViT-B-16/openai"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
MARKER = re.compile(r"^\s*<!--\s*needs:\s*(?P<needs>[^>]*?)\s*-->\s*$")
SETUP = [
    re.compile(pattern)
    for pattern in (
        r"python3? -m venv \.venv",
        r"\. \.venv/bin/activate",
        r"pip install (?:-e )?(?:\.|negspace)(?:\[(?P<extras>[\w,-]+)\])?",
    )
]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    language: str
    body: str
    needs: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker on the line before each (if any)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lstrip(".").lower()
        end = i + 1
        while end < len(lines) and not re.match(rf"^{re.escape(indent)}{re.escape(fence)}\s*$", lines[end]):
            end += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        needs = tuple(n.strip() for n in marker["needs"].split(",")) if marker else ()
        found.append(Block(page, i + 1, language, body, needs))
        i = end + 1
    return found


def markers(page: Path) -> list[tuple[int, str]]:
    return [
        (number, line)
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if MARKER.match(line)
    ]


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"])


def _code_lines(body: str) -> list[str]:
    """A shell block's lines, continuations joined and comments dropped (not a `#` inside a word)."""
    return [re.sub(r"(?:^|\s)#.*$", "", line).strip() for line in body.replace("\\\n", " ").splitlines()]


class Unrunnable(Exception):
    """A shell line the runner cannot run here: the block needs a marker."""


def shell_commands(body: str) -> list[list[str]]:
    """The commands of a shell block (continuations joined, comments dropped, ``&&`` chains split):
    ``negspace`` commands as argument lists; install steps already done are dropped, and anything
    else raises :class:`Unrunnable`."""
    commands = []
    for line in _code_lines(body):
        for part in filter(None, (p.strip() for p in line.split("&&"))):
            setup = next((m for m in (p.fullmatch(part.replace('"', "").replace("'", "")) for p in SETUP) if m), None)
            if setup is not None:
                unknown = set((setup.groupdict().get("extras") or "").split(",")) - _extras() - {""}
                if unknown:
                    raise AssertionError(f"`{part}` names extras pyproject.toml does not have: {sorted(unknown)}")
                continue
            words = shlex.split(part)
            if words[0] != "negspace":
                raise Unrunnable(f"`{part}` is not a negspace command")
            if words[1:2] == ["serve"]:
                raise Unrunnable("`negspace serve` runs until it is stopped")
            commands.append(words)
    return commands


def _tiny_argv(words: list[str], tiny) -> list[str]:
    """``words`` without the leading ``negspace``, with the tiny model in place of the hub's where
    the command loads one (not where a saved ``--detector`` brings its own)."""
    from test_docs_options import COMMANDS

    argv = words[1:]
    command: tuple[str, ...] = ()
    for word in argv:
        if (*command, word) not in COMMANDS:
            break
        command = (*command, word)
    if command[:1] == ("cache",) and "--cache-dir" not in argv:
        # the page's own cache: `cache clear` must not empty the one the suite's workers share
        return [*argv, "--cache-dir", "page-cache"]
    if "--model" not in COMMANDS[command] or "--detector" in argv:
        return argv
    for option, value in (("--model", tiny.spec), ("--weights", str(tiny.weights))):
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


def _parses(words: list[str]) -> None:
    """A ``negspace`` command of a marked block parses: its command and options exist."""
    from negspace.cli import build_parser

    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exit_:
        raise AssertionError(f"`{' '.join(words)}` does not parse (exit {exit_.code})") from None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fence_names_its_language_and_every_marker_a_known_need(page):
    problems = []
    for block in blocks(page):
        if block.language not in CODE | NOT_CODE:
            problems.append(f"{block}: a fence of language {block.language!r}; use one of {sorted(CODE | NOT_CODE)}")
        if block.needs and block.language not in CODE:
            problems.append(f"{block}: a `needs` marker on a {block.language!r} block, which never runs")
        problems += [
            f"{block}: unknown need {need!r}; use {sorted(NEEDS)}" for need in block.needs if need not in NEEDS
        ]
    marked_lines = {b.line for b in blocks(page) if b.needs}
    for number, _ in markers(page):
        following = [b.line for b in blocks(page) if b.line > number]
        if not following or min(following) not in marked_lines:
            problems.append(f"{page.relative_to(ROOT)}:{number}: a `needs` marker not right before a code block")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_marked_examples_are_still_valid(page):
    """What cannot run here still compiles (Python) and parses (each negspace command)."""
    for block in blocks(page):
        if not block.needs:
            continue
        if block.language == "python":
            compile(block.body, str(block), "exec")
            continue
        for line in _code_lines(block.body):
            for part in line.split("&&"):
                words = shlex.split(part) if part.strip() else []
                if words[:1] == ["negspace"]:
                    _parses(words)


def _runnable_pages() -> list[Path]:
    return [page for page in PAGES if any(b.language in CODE and not b.needs for b in blocks(page))]


@pytest.fixture(scope="session")
def miniature_data(tmp_path_factory) -> Path:
    from negspace.bench.miniature import write_miniature
    from negspace.bench.suites import load_suite

    return write_miniature(load_suite("imagenet"), tmp_path_factory.mktemp("docs-data"), per_set=3, shots=1)


@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run(page, tmp_path, monkeypatch, tiny_openclip, miniature_data):
    from negspace.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(miniature_data, target_is_directory=True)
    namespace = {"__name__": "__docs__", "TINY_SPEC": tiny_openclip.spec, "TINY_WEIGHTS": str(tiny_openclip.weights)}
    for block in blocks(page):
        if block.needs or block.language not in CODE:
            continue
        if block.language == "python":
            source = block.body.replace(f'"{HUB_MODEL}"', "TINY_SPEC, weights=TINY_WEIGHTS")
            exec(compile(source, str(block), "exec"), namespace)
            continue
        try:
            commands = shell_commands(block.body)
        except Unrunnable as why:
            pytest.fail(f"{block}: {why}; run it here or mark it with one of {sorted(NEEDS)}", pytrace=False)
        for words in commands:
            code = main(_tiny_argv(words, tiny_openclip))
            assert code == 0, f"{block}: `{' '.join(words)}` exited {code}"


def test_the_runner_refuses_what_it_cannot_run_and_keeps_what_it_can():
    with pytest.raises(Unrunnable, match="not a negspace command"):
        shell_commands("negspace demo-data demo\ncurl http://localhost:8000/v1/models")
    with pytest.raises(Unrunnable, match="runs until"):
        shell_commands("negspace serve --detector det/")
    with pytest.raises(AssertionError, match="extras"):
        shell_commands('pip install -e ".[no-such-extra]"')
    body = (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"\n'
        "negspace eval --method mcm \\\n    --mllm openai:http://x/v1#org/model  # a comment\n"
    )
    assert shell_commands(body) == [["negspace", "eval", "--method", "mcm", "--mllm", "openai:http://x/v1#org/model"]]


def test_the_block_reader_sees_markers_languages_and_indented_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- needs: weights, gpu -->\n```bash\nnegspace eval\n```\n\n"
        "- item\n\n    ```python\n    x = 1\n    ```\n\n```text\nout\n```\n",
        encoding="utf-8",
    )
    found = [(b.line, b.language, b.body, b.needs) for b in blocks(page)]
    assert found == [
        (4, "bash", "negspace eval", ("weights", "gpu")),
        (10, "python", "x = 1", ()),
        (14, "text", "out", ()),
    ]


def test_a_marked_command_that_does_not_parse_is_caught():
    with pytest.raises(AssertionError, match="does not parse"):
        _parses(["negspace", "eval", "--no-such-option"])
