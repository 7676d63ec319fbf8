"""``negspace demo-data``: a tiny ID/OOD image set (real photos vs. patterns)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from negspace.errors import NegspaceError


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo-data", parents=[common], help="write a tiny ID/OOD image set (real photos vs. patterns)"
    )
    demo.add_argument("folder", type=Path, help="where to write id/ and ood/")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from negspace.demo import write_demo_data

    if args.folder.exists() and not args.folder.is_dir():
        raise NegspaceError(f"{args.folder} is a file; demo-data writes a folder (give a new or empty folder).")
    try:
        id_dir, ood_dir = write_demo_data(args.folder)
    except ValueError as err:
        raise NegspaceError(f"{err}.") from None
    print(f"ID images (3 photos, 4 variants each) in {id_dir}, OOD images (12 patterns) in {ood_dir}")
    return 0
