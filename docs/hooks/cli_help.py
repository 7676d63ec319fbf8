"""MkDocs hook: the command-line reference shows each command's ``--help`` as the installed
negspace prints it, so the page cannot drift from the parser.

``<!-- negspace-help -->`` in a page becomes one section per command and sub-command, each with
its help text in a ``text`` block.
"""

from __future__ import annotations

import argparse
import os

MARK = "<!-- negspace-help -->"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """``(words, parser)`` of the top-level command and every (sub)command, depth first."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def _help_sections() -> str:
    from negspace.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it for the page
    try:
        parser = build_parser()
        sections = []
        for words, sub in _commands(parser):
            title = " ".join(("negspace", *words))
            anchor = "-".join(("negspace", *words))
            sections.append(f"## `{title}` {{#{anchor}}}\n\n```text\n{sub.format_help().rstrip()}\n```\n")
        return "\n".join(sections)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARK not in markdown:
        return markdown
    return markdown.replace(MARK, _help_sections())
