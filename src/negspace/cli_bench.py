"""``negspace bench``: a paper benchmark in one command, ours beside the published numbers.

The CLI layer only: it checks the suite's data under ``--data-root`` before any model loads,
encodes each image once (the feature cache), runs every method asked for with its paper
defaults and protocol through the same builders as ``negspace eval``, and writes per run and
method the files ``eval`` writes, plus ``results.md``, ``results.csv``, ``metrics.json`` and
``report.html`` for the whole suite.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negspace import __version__, cli_ants
from negspace.bench import compare, figures
from negspace.bench.classlists import run_classes
from negspace.bench.html import ExplainedImage, RunPage, render_report
from negspace.bench.layout import check_sets, layout_report, run_sets
from negspace.bench.suites import Suite, load_suite, suite_names
from negspace.errors import DatasetError, NegspaceError
from negspace.evaluate import Evaluation, encode_set

log = logging.getLogger("negspace")

ALL_METHODS = ("mcm", "neglabel", "tanl", "adaneg", "ants")
_GALLERY_SIZE = 12  # most OOD-looking images shown per stream in report.html
_SUITE_FILES = ("results.md", "results.csv", "metrics.json", "report.html")


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
        for run in suite.runs:
            lines.append(f"  run {run.name}: ID {run.id.published_as}, classes {run.classes.describe()}")
        lines.append("  expected under --data-root:")
        for spec in suite.all_sets():
            group = f" [{spec.group}]" if spec.group else ""
            lines.append(f"    {spec.layout():<70} {spec.count:>7,} images  {spec.published_as}{group}")
            lines.append(f"      {spec.about}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class _StreamTrace:
    """After each OOD stream: ANTS's recorder, plus the ``lam`` trace for the report."""

    recorder: cli_ants.StreamRecorder
    lam: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def __call__(self, ood_name: str, detector: Any, stream: Any, scores: Any) -> bool:
        self.lam[ood_name] = list(getattr(detector, "lam_trace", []))
        return self.recorder(ood_name, detector, stream, scores)


def _eval_namespace(args: argparse.Namespace, method: str, classes_source: str) -> argparse.Namespace:
    """The options `negspace eval --method METHOD` would have, with bench's shared ones copied in:
    every method keeps its paper defaults."""
    from negspace.cli import build_parser

    ns = build_parser().parse_args(["eval", "--method", method, "--classes", classes_source, "--id", "-",
                                    "--ood", "x=-"])
    for key, value in vars(args).items():
        if hasattr(ns, key) and key not in ("method", "classes", "run", "command"):
            setattr(ns, key, value)
    ns.method, ns.classes, ns.stream = method, classes_source, "per-set"
    ns.negative_space, ns.explanations = None, _GALLERY_SIZE
    return ns


def _check_data(suite: Suite, data_root: Path, check_counts: bool) -> tuple[dict, dict]:
    """Every set and class list of the suite, or one error listing all that is wrong."""
    if not data_root.is_dir():
        raise NegspaceError(f"--data-root {data_root} is not a folder.")
    checks = check_sets(suite, data_root, check_counts)
    classes, class_problems = {}, []
    for run in suite.runs:
        try:
            classes[run.name] = run_classes(run.classes, data_root)
        except DatasetError as err:
            class_problems.append(f"  run {run.name}: {err}")
    if any(c.problem for c in checks.values()) or class_problems:
        report = layout_report(suite, data_root, checks) if any(c.problem for c in checks.values()) else \
            f"suite {suite.name}: class lists missing under --data-root {data_root}:"
        raise NegspaceError("\n".join([report, *class_problems]))
    return checks, classes


def run(args: argparse.Namespace) -> int:
    """`negspace bench`."""
    if args.list:
        print(describe_suites())
        return 0
    if args.suite is None or args.data_root is None:
        raise NegspaceError("negspace bench needs --suite NAME and --data-root DIR (see --list for the suites).")
    try:
        suite = load_suite(args.suite)
    except ValueError as err:
        raise NegspaceError(f"--suite: {err}.") from None
    methods = parse_methods(args.method)
    checks, classes = _check_data(suite, args.data_root, not args.no_count_check)
    notes = []
    if "ants" in methods and args.mllm is None:
        methods.remove("ants")
        notes.append("ANTS was skipped: it needs a multimodal LLM (--mllm SPEC).")
    if not methods:
        raise NegspaceError("no method left to run: ANTS needs --mllm SPEC.")
    if args.limit is not None:
        notes.append(f"A subset: at most {args.limit} images per set (seed {args.seed}); the published numbers "
                     "are on the full sets.")
    mllm = cli_ants.load_mllm_from_args(args) if "ants" in methods else None

    from negspace.cli import _prepare_out_dir

    out_dir = args.out or Path("runs") / f"bench-{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.overwrite and out_dir.is_dir():  # what an earlier bench wrote there, eval's files included
        for name in [*_SUITE_FILES, *(run.name for run in suite.runs)]:
            old = out_dir / name
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    created_top = _prepare_out_dir(out_dir, args.overwrite)
    try:
        return _bench(args, suite, methods, checks, classes, notes, mllm, out_dir)
    except BaseException:
        if created_top is not None:  # a failed run leaves no empty folder behind
            from negspace.cli import _remove_empty_out_dir

            _remove_empty_out_dir(out_dir, created_top)
        raise


def _bench(args, suite, methods, checks, classes, notes, mllm, out_dir) -> int:
    from negspace.cli import _encoder

    started = time.perf_counter()
    encoder = _encoder(args)
    backbone = f"{args.model}" + (f" (weights {args.weights})" if args.weights else "")
    pages, summary = [], {}
    mllm_seen: dict[str, int] = {}  # the MLLM's counters, accounted for run after run
    stopped = None
    for spec in suite.runs:
        page, evaluations = _run_one(args, suite, spec, checks, classes[spec.name], methods, encoder, mllm, out_dir,
                                     mllm_seen)
        pages.append(page)
        summary[spec.name] = {m: {"ood": {k: r.as_dict() for k, r in ev.results.items()}, "average": ev.average(),
                                  "incomplete": "incomplete" in ev.info} for m, ev in evaluations.items()}
        if page.stopped is not None:
            stopped = f"run {spec.name}, stream {page.stopped}"
            methods = [m for m in methods if m != "ants"]
            notes.append(f"ANTS stopped on {stopped}: more than {args.mllm_max_failures:.0%} of its MLLM requests "
                         "failed or gave unusable answers; its numbers there are incomplete and it was not run on "
                         "later runs. Check the server (--mllm) and run again.")
            if not methods:
                break
    _write_suite_files(args, suite, pages, summary, notes, backbone, encoder, out_dir, time.perf_counter() - started)
    for page in pages:
        print(f"\n{suite.name} / {page.comparison.run.name}: ID {page.comparison.run.id.published_as}, ours "
              f"(published, Δ), FPR95 = {suite.fpr95}, in %")
        print(compare.console_summary(page.comparison))
    for note in notes:
        print(f"\nnote: {note}")
    print(f"\nOurs: {backbone}. Every set and method side by side: {out_dir / 'results.md'}, "
          f"{out_dir / 'report.html'} (open it in a browser)")
    if stopped is not None:
        print(f"negspace: error: the MLLM failed on {stopped}; the ANTS results are incomplete.", file=sys.stderr)
        return 3
    return 0


def _run_one(args, suite, spec, checks, classes, methods, encoder, mllm, out_dir,
             mllm_seen) -> tuple[RunPage, dict[str, Evaluation]]:
    """Encode one run's sets once, then run every method on them."""
    from negspace.cli import METHODS, BuildContext, _score

    id_images, ood_images = run_sets(spec, checks, args.limit, args.seed)
    progress = not args.quiet
    id_set = encode_set(id_images, encoder, args.batch_size, progress)
    ood_sets = [encode_set(s, encoder, args.batch_size, progress) for s in ood_images]
    stream_size = len(id_set.features) + max(len(s.features) for s in ood_sets)
    evaluations: dict[str, Evaluation] = {}
    page_notes, traces, galleries, stopped = [], {}, {}, None
    for method in methods:
        eval_args = _eval_namespace(args, method, classes.source)
        method_dir = out_dir / spec.name / method
        log.info("bench %s / %s: %s", suite.name, spec.name, method)
        try:
            context = BuildContext(eval_args, encoder, classes.names, stream_size, mllm if method == "ants" else None)
            detector = METHODS[method](context)
        except ValueError as err:
            raise NegspaceError(f"Invalid {method} setting: {err}.") from None
        trace = _StreamTrace(cli_ants.StreamRecorder(method_dir, _GALLERY_SIZE, args.mllm_max_failures,
                                                     stats_seen=mllm_seen)) if method == "ants" else None
        evaluation = _score(detector, id_set, ood_sets, eval_args, True, trace)
        evaluation.info = {"method": method, "params": detector.get_params(), "suite": suite.name, "run": spec.name,
                           **context.notes, **evaluation.info,
                           **(trace.recorder.write(mllm) if trace is not None else {})}
        if trace is not None and trace.recorder.stopped is not None:
            stopped = trace.recorder.stopped
            evaluation.info["incomplete"] = {"reason": f"more than {args.mllm_max_failures:.0%} of the MLLM "
                                                       f"requests of stream {stopped} failed or gave unusable answers",
                                             "ood_sets_not_scored": [s.name for s in spec.ood
                                                                     if s.name not in evaluation.ood_scores]}
        from negspace.report import write_report

        write_report(evaluation, method_dir)
        evaluations[method] = evaluation
        if trace is not None:
            traces = trace.lam
            galleries = _galleries(trace.recorder.explanation_rows, {s.name: s.published_as for s in spec.ood})
            if trace.recorder.stopped is not None:
                name = titles_of(spec).get(trace.recorder.stopped, trace.recorder.stopped)
                page_notes.append(f"ANTS stopped on the stream of {name}: too many MLLM requests failed; its numbers "
                                  "are incomplete.")
    comparison = compare.compare_run(suite, spec, evaluations)
    titles = titles_of(spec)
    page = RunPage(comparison, figures.roc_figure(evaluations, [s.name for s in spec.ood], titles),
                   {m: figures.histogram_figure(m, ev, titles) for m, ev in evaluations.items()},
                   figures.lam_figure(traces, titles) if any(traces.values()) else None, galleries, page_notes,
                   stopped)
    return page, evaluations


def titles_of(spec: Any) -> dict[str, str]:
    """A run's OOD set names as the tables print them."""
    return {s.name: s.published_as for s in spec.ood}


def _galleries(rows: list[dict[str, Any]], titles: dict[str, str]) -> dict[str, list[ExplainedImage]]:
    """The explained images of each OOD stream (rows of explanations.csv), with thumbnails."""
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        sample = grouped.setdefault(titles.get(row["ood_set"], row["ood_set"]), {}).setdefault(
            row["sample"], {"score": row["score"], "texts": []})
        sample["texts"].append((row["text"], row["source"], float(row["weight"])))
    return {name: [ExplainedImage(path, info["score"], figures.thumbnail(path), tuple(info["texts"]))
                   for path, info in samples.items()] for name, samples in grouped.items()}


def _write_suite_files(args, suite, pages, summary, notes, backbone, encoder, out_dir, seconds) -> None:
    subset = args.limit is not None
    (out_dir / "results.md").write_text(
        f"# {suite.title}\n\nOurs: {backbone}. FPR95 = {suite.fpr95} (the tables' convention). "
        f"Compared with {', '.join(suite.tables)}.\n\n"
        + "".join(f"> {note}\n\n" for note in notes)
        + "\n\n".join(f"## ID: {p.comparison.run.id.published_as}\n\n{compare.markdown(p.comparison)}" for p in pages)
        + "\n", encoding="utf-8")
    rows = [row for p in pages for row in compare.csv_rows(p.comparison, backbone, subset)]
    with (out_dir / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["suite"])
        writer.writeheader()
        writer.writerows(rows)
    info = {"suite": suite.name, "tables": list(suite.tables), "fpr95_convention": suite.fpr95,
            "negspace_version": __version__, "command": args.command_line, "model": args.model,
            "weights_fingerprint": encoder.fingerprint, "device": str(encoder.device), "limit": args.limit,
            "subset": subset, "seed": args.seed, "batch_size": args.batch_size, "notes": notes,
            "runs": summary, "seconds": round(seconds, 3),
            "metric_units": "fractions in [0, 1] (results.md/.csv: percent)"}
    (out_dir / "metrics.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    facts = [("suite", f"{suite.name}: {suite.title}"), ("compared with", ", ".join(suite.tables)),
             ("FPR95", f"{suite.fpr95} (the tables' convention)"), ("ours", backbone),
             ("negspace", __version__), ("images", "a subset" if subset else "the full sets")]
    # file names that are not UTF-8 (surrogates on Linux) are written escaped, not refused
    (out_dir / "report.html").write_text(render_report(f"negspace bench: {suite.name}", facts, pages, notes),
                                         encoding="utf-8", errors="backslashreplace")
