"""The ``negspace`` command line: ``eval``, ``bench``, ``score``, ``embed``, ``serve``, ``mine``,
``cache``, ``demo-data``, one module each over shared option groups (:mod:`negspace.cli.options`).

A thin layer: each command turns its options into the run's configs right after parsing and calls
the Python API (:func:`negspace.evaluate`, :func:`negspace.bench.run_suite`,
:func:`negspace.score_collection`). Errors a user can fix (a bad path, missing weights, a
malformed class list) are printed as one sentence on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from negspace import __version__
from negspace.cli import bench, cache, demo, mine, score, serve
from negspace.cli import eval as eval_command
from negspace.errors import NegspaceError
from negspace.redact import redact_credentials

log = logging.getLogger("negspace")


class Parser(argparse.ArgumentParser):
    """An option error is its one sentence and a pointer to ``--help``, not the whole usage block."""

    commands: argparse._SubParsersAction | None = None  # set on the top-level parser

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    # argparse's overloads return whatever namespace object is passed; this parser takes only its own
    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        # argparse reports an unknown option of a command from the top-level parser, which would
        # point to `negspace --help`; the command's own parser names the command and its help
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.innermost_command(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def innermost_command(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the (sub)command that ``parsed`` ran, e.g. ``negspace cache stats``."""
        parser: argparse.ArgumentParser = self
        while (commands := getattr(parser, "commands", None)) is not None:
            chosen = commands.choices.get(getattr(parsed, commands.dest, None))
            if chosen is None:
                break
            parser = chosen
        return parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # -v / -q work before the command and after it (SUPPRESS: a sub-command never resets them).
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="warnings and errors only, no progress bars",
    )
    parser = Parser(prog="negspace", description="Zero-shot OOD detection with vision-language models.")
    parser.add_argument("--version", action="version", version=f"negspace {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    parser.commands = commands
    eval_command.add_parser(commands, common)
    mine.add_parser(commands, common)
    cache.add_parser(commands, common)
    bench.add_parser(commands, common)
    score.add_parsers(commands, common)
    serve.add_parser(commands, common)
    demo.add_parser(commands, common)
    return parser


class _TqdmHandler(logging.Handler):
    """Log lines written through tqdm, so they never share a line with a progress bar.

    Each line goes to ``sys.stderr`` as it is when written, not the stream of when the handler
    was made: a caller that swaps stderr (pytest, a notebook) and closes the old one later must
    not leave a server thread of an earlier ``main`` writing into a closed file."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("negspace: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # recorded in metrics.json: never a password or key written into an URL option
    args.command_line = ["negspace", *(redact_credentials(a) for a in (sys.argv[1:] if argv is None else argv))]
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.run(args)
    except NegspaceError as err:
        print(f"negspace: error: {err.cli_message()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negspace: interrupted; finished work is cached and will be reused", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `negspace cache stats | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
