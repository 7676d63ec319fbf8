"""How fast bad input is refused: `bench` on an empty data root, `eval` with a missing set.

    python benchmarks/refusal_time.py [--repeats 5]

Each command runs as a new process (what a user types), ``--repeats`` times; the script prints
the median and the slowest wall time beside the bound of 2 s, and beside the time Python takes to
import torch and open_clip, which a refusal must not pay (the data and options are checked before
any heavy library loads; ImageNet's class names ship as package data). Where the other core is
busy, the import time grows (20-23 s was seen on a loaded machine); the refusals should not.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOUND_S = 2.0


def wall_time(command: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # the exit code is returned
    return time.perf_counter() - started, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "negspace.cli", "-q"]
    with tempfile.TemporaryDirectory() as folder:
        empty = Path(folder) / "empty"
        empty.mkdir()
        cases = {
            "bench --data-root EMPTY": [*cli, "bench", "--suite", "imagenet", "--data-root", str(empty)],
            "eval --id MISSING": [
                *cli,
                "eval",
                "--method",
                "neglabel",
                "--classes",
                "imagenet",
                "--id",
                str(Path(folder) / "missing"),
                "--ood",
                f"x={empty}",
            ],
            "eval --ood x=EMPTY": [
                *cli,
                "eval",
                "--method",
                "neglabel",
                "--classes",
                "imagenet",
                "--id",
                str(empty),
                "--ood",
                f"x={Path(folder) / 'missing'}",
            ],
            "(import torch, open_clip)": [sys.executable, "-c", "import torch, open_clip"],
        }
        print(f"{'command':<28} {'median s':>9} {'max s':>7}  bound")
        for name, command in cases.items():
            times, codes = zip(*(wall_time(command) for _ in range(args.repeats)), strict=True)
            expected = 0 if name.startswith("(") else 2
            if set(codes) != {expected}:
                raise SystemExit(f"{name}: exit codes {sorted(set(codes))}, expected {expected}")
            bound = "(what a refusal must not pay)" if expected == 0 else f"{BOUND_S:.1f} s"
            print(f"{name:<28} {statistics.median(times):>9.2f} {max(times):>7.2f}  {bound}")


if __name__ == "__main__":
    main()
