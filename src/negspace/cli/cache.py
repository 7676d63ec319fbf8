"""``negspace cache``: entries and size of the feature and MLLM caches, or clear them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from negspace.cli.options import CACHE_DIR_HELP
from negspace.errors import NegspaceError
from negspace.jsonio import to_json


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cache = commands.add_parser("cache", parents=[common], help="inspect or clear the feature and MLLM caches")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    cache.commands = cache_commands  # an unknown option names `negspace cache stats`, not `negspace cache`
    stats = cache_commands.add_parser("stats", parents=[common], help="entries and size of each cache")
    stats.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=run_stats)
    clear = cache_commands.add_parser("clear", parents=[common], help="delete cached features and/or MLLM answers")
    clear.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    clear.add_argument(
        "--what", choices=("all", "features", "mllm"), default="all", help="which cache (default: %(default)s)"
    )
    clear.add_argument("--yes", action="store_true", help="delete cached MLLM answers without asking")
    clear.set_defaults(run=run_clear)


def run_stats(args: argparse.Namespace) -> int:
    from negspace.mllm.response_cache import cache_stats, format_cache_stats

    stats = cache_stats(args.cache_dir)
    print(to_json(stats, indent=2) if args.json else format_cache_stats(stats))
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from negspace.mllm.response_cache import cache_stats, clear_cache

    if args.what in ("all", "mllm") and not args.yes:
        paid = cache_stats(args.cache_dir)["mllm"]["entries"]
        if paid:
            question = f"Delete {paid} cached MLLM answers (asking again costs MLLM calls)? [y/N] "
            if not sys.stdin.isatty():
                raise NegspaceError(
                    f"cache clear would delete {paid} cached MLLM answers; pass --yes to confirm "
                    "(or --what features to keep them)."
                )
            if input(question).strip().lower() not in ("y", "yes"):
                print("nothing cleared")
                return 0
    removed = clear_cache(args.cache_dir, args.what)
    print(", ".join(f"{name}: {count} entries removed" for name, count in removed.items()) or "nothing to clear")
    return 0
