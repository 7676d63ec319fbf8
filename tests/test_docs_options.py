"""The README and the docs name only options that exist, for the command that has them: every
``negspace CMD ...`` they show is checked against CMD's own parser, and every other ``--option``
they mention against the options of some negspace command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from negspace.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
OPTION = re.compile(r"(?<![\w/-])--[a-z][a-z0-9-]*[a-z0-9](?![\w*-])")  # not a group such as --ants-*
# options of the benchmark scripts and of the MLLM servers the docs explain, named in prose
FOREIGN_OPTIONS = {
    "--arch",
    "--small",
    "--mmproj",
    "--port",
    "--api-key",
    "--rows-only",
    "--cached-only",
    "--prompts",
    "--batch",
    "--repeats",
}
# lines of other programs shown beside negspace's (their options are theirs)
OTHER_PROGRAMS = re.compile(
    r"^\s*(?:\$\s*)?(?:pip|pip3|pytest|python|python3|vllm|ollama|llama-server|hf|"
    r"huggingface-cli|git|apt-get|mkdocs|ruff|mypy|OPENBLAS_CORETYPE=\S+|NEGSPACE_\w+=\S+|ray|docker)\b"
)


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], set[str]]:
    """Every (sub)command's options, by its words: ``("cache", "stats") -> {"--cache-dir", ...}``."""
    found = {prefix: {o for action in parser._actions for o in action.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(build_parser())
EVERY_OPTION = set().union(*COMMANDS.values())


def _code(text: str) -> list[str]:
    """The text of every fenced block (continuation lines joined) and every inline code span."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    return lines + re.findall(r"`([^`\n]+)`", prose)


def _negspace_calls(snippet: str) -> list[tuple[tuple[str, ...], str]]:
    """``(command words, the rest)`` of each ``negspace ...`` call in a snippet (a pipeline or
    ``&&`` chain may hold several)."""
    calls = []
    for part in re.split(r"&&|\|\||;|\|", snippet):
        words = part.split()
        if "negspace" not in words or (words and OTHER_PROGRAMS.match(part)):
            continue
        words = words[words.index("negspace") + 1 :]
        command: tuple[str, ...] = ()
        while words and (*command, words[0]) in COMMANDS:
            command = (*command, words.pop(0))
        calls.append((command, " ".join(words)))
    return calls


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_negspace_command_shown_takes_the_options_shown_with_it(page):
    wrong = []
    for snippet in _code(page.read_text(encoding="utf-8")):
        for command, rest in _negspace_calls(snippet):
            accepted = COMMANDS[command] | COMMANDS[()]
            wrong += [
                f"negspace {' '.join(command)} {option}" for option in OPTION.findall(rest) if option not in accepted
            ]
    assert not wrong, f"{page.name} shows options these commands do not take: {sorted(set(wrong))}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_option_mentioned_is_an_option_of_some_command(page):
    unknown = set()
    for snippet in _code(page.read_text(encoding="utf-8")):
        if OTHER_PROGRAMS.match(snippet) or re.search(
            r"(?:^|&&\s*)(?:vllm|ollama|llama-server|hf|huggingface-cli)\b", snippet
        ):
            continue
        if snippet.lstrip().startswith("#"):
            continue  # a comment in a shell block, e.g. another program's options
        unknown |= {option for option in OPTION.findall(snippet) if option not in EVERY_OPTION | FOREIGN_OPTIONS}
    assert not unknown, f"{page.name} mentions options no negspace command has: {sorted(unknown)}"


def test_the_checks_catch_an_option_of_another_command():
    # `bench` once lacked --shots, which the README showed with it
    assert _negspace_calls("negspace bench --suite imagenet --shots 4") == [(("bench",), "--suite imagenet --shots 4")]
    assert "--shots" in COMMANDS[("bench",)] and "--id-shots" not in COMMANDS[("bench",)]
    assert "--what" in COMMANDS[("cache", "clear")] and "--what" not in COMMANDS[("cache", "stats")]
