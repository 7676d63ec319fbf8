"""``negspace bench``: a paper benchmark in one command, ours beside the published numbers.

Bench exposes, by design, only what a benchmark varies: the suite and its data, the methods, a
subset (``--limit``), the seed and batch size, the model, and ANTS's MLLM and options. Every
other setting is each method's paper default (its config class); the run is
:func:`negspace.bench.runner.run_suite`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from negspace.bench.suites import load_suite, suite_names
from negspace.cli import options
from negspace.cli.options import positive_int, seed
from negspace.detectors.neglabel import NegLabelConfig
from negspace.errors import NegspaceError
from negspace.methods import METHODS

ALL_METHODS = tuple(METHODS)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="a paper benchmark in one command: every method, ours beside the published numbers",
    )
    bench.add_argument("--list", action="store_true", help="list the suites, their folder layouts, counts and sources")
    bench.add_argument("--suite", help="the benchmark: " + ", ".join(suite_names()))
    bench.add_argument("--data-root", type=Path, help="the folder holding the suite's data sets (see --list)")
    bench.add_argument(
        "--method",
        default="all",
        help="'all' or a comma-separated list of "
        f"{','.join(ALL_METHODS)}; ANTS runs only with --mllm (default: %(default)s)",
    )
    bench.add_argument("--limit", type=positive_int, help="a quick run: at most N images per set, sampled with --seed")
    bench.add_argument(
        "--no-count-check", action="store_true", help="run on sets whose file count is not the expected one"
    )
    bench.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: %(default)s)")
    bench.add_argument(
        "--seed", type=seed, default=0, help="seed of the groupings, the streams and --limit (default: %(default)s)"
    )
    bench.add_argument(
        "--shots",
        type=positive_int,
        default=16,
        help="ID images per class InterNeg and TINS draw from the suite's training split (default: %(default)s)",
    )
    bench.add_argument("--out", type=Path, help="results folder, new or empty (default: runs/bench-SUITE-TIMESTAMP)")
    bench.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    options.add_model_options(bench)
    options.add_mllm_options(bench)
    options.add_ants_options(bench)
    bench.set_defaults(run=run)


def parse_methods(text: str) -> list[str]:
    """``all`` or a comma-separated list of methods, in the order given."""
    if text == "all":
        return list(ALL_METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or not methods:
        raise NegspaceError(f"--method {text!r}: expected 'all' or a comma-separated list of {', '.join(ALL_METHODS)}.")
    return list(dict.fromkeys(methods))


def describe_suites() -> str:
    """What `negspace bench --list` prints: every suite, its tables, layout, counts and sources."""
    lines = []
    for name in suite_names():
        suite = load_suite(name)
        lines.append(f"{suite.name}: {suite.title}")
        lines.append(f"  compared with: {', '.join(suite.tables)}; FPR95 convention: {suite.fpr95}")
        if suite.notes:
            lines.append(f"  {suite.notes}")
        for run_spec in suite.runs:
            lines.append(f"  run {run_spec.name}: ID {run_spec.id.published_as}, classes {run_spec.classes.describe()}")
            if run_spec.train:
                lines.append(
                    f"    optional: {run_spec.train}/ (the ID training split, class folders: InterNeg draws "
                    "its --shots images per class from it)"
                )
        lines.append("  expected under --data-root:")
        for spec in suite.all_sets():
            group = f" [{spec.group}]" if spec.group else ""
            lines.append(f"    {spec.layout():<70} {spec.count:>7,} images  {spec.published_as}{group}")
            lines.append(f"      {spec.about}")
        lines.append("")
    return "\n".join(lines)


def bench_config(args: argparse.Namespace) -> Any:
    """The options bench exposes as a :class:`~negspace.bench.runner.BenchConfig`."""
    from negspace.bench.runner import BenchConfig

    methods = parse_methods(args.method)
    defaults = NegLabelConfig()  # ANTS scores with NegLabel's tau and groups
    try:
        ants, keep = options.ants_config(args, tau=defaults.tau, groups=defaults.groups)
    except ValueError as err:
        raise NegspaceError(f"Invalid ants setting: {err}.") from None
    return BenchConfig(
        args.suite,
        tuple(methods),
        limit=args.limit,
        check_counts=not args.no_count_check,
        batch_size=args.batch_size,
        seed=args.seed,
        scoring_backend=args.scoring_backend,
        params={"ants": ants},
        ants=options.ants_run_config(args, keep),
        shots=args.shots,
    )


def run(args: argparse.Namespace) -> int:
    """`negspace bench`."""
    from negspace.bench import compare
    from negspace.bench.runner import run_suite

    if args.list:
        print(describe_suites())
        return 0
    if args.suite is None or args.data_root is None:
        raise NegspaceError("negspace bench needs --suite NAME and --data-root DIR (see --list for the suites).")
    config = bench_config(args)
    out_dir = args.out or Path("runs") / f"bench-{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}"
    model = options.model_config(args)
    if args.llm and args.mllm and "ants" in config.methods:
        raise NegspaceError("--llm: bench asks one model, ANTS's --mllm, for NegRefine's filter as well; drop --llm.")
    llm = options.mllm_config(args, prefer_llm="ants" not in config.methods)
    result = run_suite(
        config,
        data_root=args.data_root,
        model=model,
        mllm=llm,
        out=out_dir,
        overwrite=args.overwrite,
        command=args.command_line,
    )
    backbone = model.spec + (f" (weights {model.weights})" if model.weights else "")
    for page in result.pages:
        shown = "(published, Δ)" if page.comparison.comparable else "(published, Δ where compared)"
        print(
            f"\n{result.suite.name} / {page.comparison.run.name}: ID {page.comparison.run.id.published_as}, ours "
            f"{shown}, FPR95 = {result.suite.fpr95}, in %"
        )
        print(compare.console_summary(page.comparison))
    print("\n" + "\n".join(compare.verdict_lines(result.differences)))
    for note in result.notes:
        print(f"\nnote: {note}")
    print(
        f"\nOurs: {backbone}. Every set and method side by side: {out_dir / 'results.md'}, "
        f"{out_dir / 'report.html'} (open it in a browser)"
    )
    print(f"Time: {result.stages.summary()} (every stage: seconds_per_stage in {out_dir / 'metrics.json'})")
    if result.stopped is not None:
        print(
            f"negspace: error: the MLLM failed on {result.stopped}; the ANTS results are incomplete.", file=sys.stderr
        )
        return 3
    return 0
