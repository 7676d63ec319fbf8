"""A paper benchmark from Python: what ``negspace bench`` does.

    from negspace.bench import BenchConfig, run_suite
    result = run_suite(BenchConfig("imagenet", methods=("mcm", "neglabel")), data_root="data/",
                       model=ModelConfig(), out="runs/bench")
    result.evaluations["imagenet"]["neglabel"].average()

The suite's data is checked before any model loads; each image is encoded once (the feature
cache), then every method runs with its paper defaults and protocol (``params`` overrides a
method's config), and the suite's files (``results.md``, ``results.csv``, ``metrics.json``,
``report.html``) plus each method's ``eval`` files are written when ``out`` is given.
"""

from __future__ import annotations

import csv
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from negspace.bench import compare, figures
from negspace.bench.classlists import run_classes
from negspace.bench.html import ExplainedImage, RunPage, render_report
from negspace.bench.layout import check_sets, layout_report, run_sets
from negspace.bench.logged import logged_warnings
from negspace.bench.stages import StageTimes
from negspace.bench.suites import Suite, load_suite
from negspace.detectors.ants.recorder import StreamRecorder
from negspace.errors import DatasetError, NegspaceError
from negspace.evaluation import Evaluation, encode_set
from negspace.jsonio import to_json
from negspace.bench.published import PUBLISHED_NAMES
from negspace.methods import FEW_SHOT_METHODS, LLM_METHODS, METHODS, build_detector
from negspace.outdir import prepare_out_dir, remove_empty_out_dir
from negspace.runconfig import ANTSRunConfig, EvalConfig, MLLMConfig, ModelConfig
from negspace.runs import build_inputs, load_mllm, resolve_encoder, score_sets

log = logging.getLogger("negspace")

ALL_METHODS = tuple(METHODS)
GALLERY_SIZE = 12  # most OOD-looking images shown per stream in report.html
SUITE_FILES = ("results.md", "results.csv", "metrics.json", "report.html")


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run: the suite, the methods, and the few settings a benchmark exposes.

    Each method runs with its paper defaults (its config class), the seed being ``seed``;
    ``params`` replaces a method's config (e.g. ``{"ants": ANTSConfig.authors()}``). ``limit``
    samples at most that many images per set; ``check_counts=False`` runs on sets whose file
    count is not the expected one (both mark the run as not the papers' sets).
    """

    suite: str
    methods: tuple[str, ...] = ALL_METHODS
    limit: int | None = None
    check_counts: bool = True
    batch_size: int = 256
    seed: int = 0
    scoring_backend: str = "numpy"
    params: Mapping[str, Any] = field(default_factory=dict)
    ants: ANTSRunConfig = field(default_factory=ANTSRunConfig)
    shots: int = 16  # ID images per class the few-shot methods draw from a run's training split

    def eval_config(self, method: str) -> EvalConfig:
        """The evaluation of one method within the benchmark: per-set streams, paper defaults."""
        params = self.params.get(method)
        if params is None:  # the paper's defaults, with the benchmark's seed where the method has one
            config_type = METHODS[method].config
            seeded = "seed" in {f.name for f in fields(config_type)}
            params = config_type(seed=self.seed) if seeded else config_type()
        ants = replace(self.ants, negative_space=None, explanations=GALLERY_SIZE)
        return EvalConfig(method, params, stream="per-set", batch_size=self.batch_size, seed=self.seed,
                          scoring_backend=self.scoring_backend, ants=ants)


@dataclass
class SuiteResult:
    """What a benchmark run produced: every evaluation per run and method, the comparisons with
    the published numbers, the notes a reader needs, and whether ANTS stopped."""

    suite: Suite
    evaluations: dict[str, dict[str, Evaluation]]
    pages: list[RunPage]
    notes: list[str]
    stopped: str | None = None
    out: Path | None = None
    stages: StageTimes = field(default_factory=StageTimes)  # wall time per stage (metrics.json)


def check_data(suite: Suite, data_root: Path, check_counts: bool) -> tuple[dict, dict]:
    """Every set and class list of the suite, or one error listing all that is wrong."""
    if not data_root.is_dir():
        raise NegspaceError(f"--data-root {data_root} is not a folder.")
    try:
        checks = check_sets(suite, data_root, check_counts)
    except OSError as err:  # a folder it may not list, a file it may not read
        raise NegspaceError(f"--data-root {data_root}: cannot read {err.filename or 'it'} ({err.strerror}).") from None
    classes, class_problems = {}, []
    for run in suite.runs:
        try:
            classes[run.name] = run_classes(run.classes, data_root)
        except DatasetError as err:
            class_problems.append(f"  run {run.name}: {err}")
        except OSError as err:
            class_problems.append(f"  run {run.name}: cannot read {err.filename} ({err.strerror})")
    if any(c.problem for c in checks.values()) or class_problems:
        report = layout_report(suite, data_root, checks) if any(c.problem for c in checks.values()) else \
            f"suite {suite.name}: class lists missing under --data-root {data_root}:"
        raise NegspaceError("\n".join([report, *class_problems]))
    return checks, classes


def run_suite(config: BenchConfig, *, data_root: str | Path, model: ModelConfig | None = None, encoder: Any = None,
              mllm: MLLMConfig | Any = None, out: str | Path | None = None, overwrite: bool = False,
              command: Sequence[str] | None = None) -> SuiteResult:
    """Run ``config``'s methods on its suite under ``data_root``; see the module docstring.

    ANTS runs only with an ``mllm`` (otherwise it is skipped with a note). When the MLLM fails on
    too many requests, ANTS's results are marked incomplete, it is dropped for later runs and
    ``SuiteResult.stopped`` names where.
    """
    model = model or ModelConfig()
    data_root = Path(data_root)
    try:
        suite = load_suite(config.suite)
    except ValueError as err:
        raise NegspaceError(f"--suite: {err}.") from None
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise NegspaceError(f"methods {list(config.methods)}: expected some of {', '.join(ALL_METHODS)}.")
    with logged_warnings() as warnings:
        return _check_and_bench(config, suite, data_root, model, encoder, mllm, out, overwrite, command, warnings)


def _check_and_bench(config, suite, data_root, model, encoder, mllm, out, overwrite, command, warnings) -> SuiteResult:
    methods = list(dict.fromkeys(config.methods))
    stages = StageTimes()
    with stages.timed("listing and checking"):
        checks, classes = check_data(suite, data_root, config.check_counts)
    notes = []
    if "ants" in methods and mllm is None:
        methods.remove("ants")
        notes.append("ANTS was skipped: it needs a multimodal LLM (--mllm SPEC).")
    if not methods:
        raise NegspaceError("no method left to run: ANTS needs --mllm SPEC.")
    not_papers = not_the_papers_sets(checks, config.limit, config.seed)
    if not_papers:
        notes.append(f"Not the papers' sets at their counts ({'; '.join(not_papers)}): the published numbers are "
                     "shown for reference only, with no difference; ours are not comparable with them.")
    missing_train = [run.train or f"(run {run.name} has none)" for run in suite.runs
                     if not run.train or not (data_root / run.train).is_dir()]
    few_shot = [m for m in methods if m in FEW_SHOT_METHODS]
    if few_shot and missing_train:
        methods = [m for m in methods if m not in FEW_SHOT_METHODS]
        names = " and ".join(PUBLISHED_NAMES.get(m, m) for m in few_shot)
        notes.append(f"{names} skipped: each draws {config.shots} labelled images per class (seed {config.seed}) "
                     f"from the ID training split, {missing_train[0]} under --data-root, which is missing.")
    if not methods:
        raise NegspaceError(f"no method left to run: InterNeg and TINS need the ID training split {missing_train[0]} "
                            "under --data-root.")
    if "negrefine" in methods and mllm is None:
        notes.append("NegRefine ran without its LLM filter (no --mllm or --llm): its bank is the initial selection, "
                     "cleaned; not the authors' method.")
    if any(m in LLM_METHODS for m in methods) and isinstance(mllm, MLLMConfig):
        mllm = load_mllm(mllm)
    out_dir = Path(out) if out is not None else None
    created_top = None
    if out_dir is not None:
        if overwrite and out_dir.is_dir():  # what an earlier bench wrote there, eval's files included
            for name in [*SUITE_FILES, *(run.name for run in suite.runs)]:
                old = out_dir / name
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        created_top = prepare_out_dir(out_dir, overwrite)
    try:
        return _bench(config, suite, methods, checks, classes, notes, model, encoder, mllm, out_dir, command,
                      not_papers, warnings, data_root, stages)
    except BaseException:
        if out_dir is not None:  # a failed run leaves no empty folder behind
            remove_empty_out_dir(out_dir, created_top)
        raise


def not_the_papers_sets(checks: Mapping[str, Any], limit: int | None, seed: int) -> list[str]:
    """Why the run's sets are not the papers' sets at their counts (empty when they are)."""
    reasons = [f"a subset of at most {limit} images per set, seed {seed}"] if limit is not None else []
    wrong = [f"{name} {len(check.images):,} of {check.spec.count:,}" for name, check in checks.items()
             if check.images is not None and len(check.images) != check.spec.count]
    if wrong:
        reasons.append("image counts other than the papers' (" + ", ".join(wrong[:4])
                       + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "") + ")")
    return reasons


def _bench(config, suite, methods, checks, classes, notes, model, encoder, mllm, out_dir, command,
           not_papers, warnings, data_root, stages) -> SuiteResult:
    with stages.timed("loading the model"):
        encoder, model_spec = resolve_encoder(model, encoder)
    backbone = model_spec + (f" (weights {model.weights})" if model.weights else "")
    pages, summary, evaluations = [], {}, {}
    mllm_seen: dict[str, int] = {}  # the MLLM's counters, accounted for run after run
    stopped = None
    last_use = {s.name: i for i, run in enumerate(suite.runs) for s in (run.id, *run.ood)}
    for index, spec in enumerate(suite.runs):
        # the listings no later run reads: dropped once encoded (a Path costs 331 bytes an image)
        release = [name for name, last in last_use.items() if last == index]
        page, run_evaluations = _run_one(config, suite, spec, checks, classes[spec.name], methods, model, model_spec,
                                         encoder, mllm, out_dir, mllm_seen, stages, comparable=not not_papers,
                                         data_root=data_root, release=release)
        pages.append(page)
        evaluations[spec.name] = run_evaluations
        summary[spec.name] = {m: {"ood": {k: r.as_dict() for k, r in ev.results.items()}, "average": ev.average(),
                                  "incomplete": "incomplete" in ev.info} for m, ev in run_evaluations.items()}
        if page.stopped is not None:
            stopped = f"run {spec.name}, stream {page.stopped}"
            methods = [m for m in methods if m != "ants"]
            notes.append(f"ANTS stopped on {stopped}: more than {config.ants.max_failures:.0%} of its MLLM requests "
                         "failed or gave unusable answers; its numbers there are incomplete and it was not run on "
                         "later runs. Check the server (--mllm) and run again.")
            if not methods:
                break
    if out_dir is not None:
        _write_suite_files(config, suite, pages, summary, notes, backbone, model_spec, encoder, out_dir, command,
                           not_papers, warnings, stages)
    log.info("bench %s: seconds per stage: %s", suite.name,
             ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in stages.seconds.items()))
    return SuiteResult(suite, evaluations, pages, notes, stopped, out_dir, stages)


def _run_one(config, suite, spec, checks, classes, methods, model, model_spec, encoder, mllm, out_dir,
             mllm_seen, stages, comparable=True, data_root=Path("."),
             release: Sequence[str] = ()) -> tuple[RunPage, dict[str, Evaluation]]:
    """Encode one run's sets once, then run every method on them (``stages`` gets the times).
    The listings of the sets named in ``release`` leave ``checks`` once encoded: their sample ids
    (strings) are all the run needs of them from then on."""
    from negspace.report import write_report

    id_images, ood_images = run_sets(spec, checks, config.limit, config.seed)
    id_set = encode_set(id_images, encoder, config.batch_size, model.progress)
    ood_sets = [encode_set(s, encoder, config.batch_size, model.progress) for s in ood_images]
    del id_images, ood_images
    for name in release:
        checks.pop(name, None)
    for encoded in (id_set, *ood_sets):
        stages.add_all({f"images: {stage}": seconds for stage, seconds in encoded.seconds.items()})
    stream_size = len(id_set.features) + max(len(s.features) for s in ood_sets)
    evaluations: dict[str, Evaluation] = {}
    page_notes, traces, galleries, stopped = [], {}, {}, None
    for method in methods:
        eval_config = config.eval_config(method)
        if spec.train:  # the few-shot methods' ID shots, drawn from the training split with the bench's seed
            eval_config = replace(eval_config, id_shots=data_root / spec.train, shots=config.shots)
        method_dir = out_dir / spec.name / method if out_dir is not None else None
        log.info("bench %s / %s: %s", suite.name, spec.name, method)
        with stages.timed(f"{method}: building (texts, banks)"):
            inputs = build_inputs(eval_config, encoder, classes, model, model_spec, stream_size,
                                  mllm if method in LLM_METHODS else None)
            detector = build_detector(inputs)
        recorder = StreamRecorder(method_dir, GALLERY_SIZE, config.ants.max_failures,
                                  stats_seen=mllm_seen) if method == "ants" else None
        with stages.timed(f"{method}: scoring"):
            evaluation = score_sets(detector, id_set, ood_sets, eval_config, True, recorder)
        evaluation.info = {"method": method, "params": detector.get_params(), "suite": suite.name, "run": spec.name,
                           **inputs.notes, **evaluation.info,
                           **(recorder.write(mllm) if recorder is not None else {})}
        incomplete = recorder.incomplete([s.name for s in spec.ood], evaluation.ood_scores) if recorder else None
        if incomplete is not None:
            stopped = evaluation.stopped = recorder.stopped
            evaluation.info["incomplete"] = incomplete
        if method_dir is not None:
            with stages.timed("report"):
                write_report(evaluation, method_dir)
        evaluation.detector = detector
        evaluations[method] = evaluation
        if recorder is not None:
            traces = evaluation.traces["lam"] = recorder.lam
            galleries = _galleries(recorder.explanation_rows, titles_of(spec), set(id_set.sample_ids),
                                   spec.id.published_as)
            if recorder.stopped is not None:
                name = titles_of(spec).get(recorder.stopped, recorder.stopped)
                page_notes.append(f"ANTS stopped on the stream of {name}: too many MLLM requests failed; its numbers "
                                  "are incomplete.")
    comparison = compare.compare_run(suite, spec, evaluations, comparable=comparable)
    titles = titles_of(spec)
    with stages.timed("report"):
        page = _run_page(comparison, evaluations, spec, titles, traces, galleries, page_notes, stopped)
    return page, evaluations


def _run_page(comparison, evaluations, spec, titles, traces, galleries, page_notes, stopped) -> RunPage:
    """The run's section of report.html: its table, figures and gallery."""
    return RunPage(comparison, figures.roc_figure(evaluations, [s.name for s in spec.ood], titles),
                   {m: figures.histogram_figure(m, ev, titles) for m, ev in evaluations.items()},
                   figures.lam_figure(traces, titles) if any(traces.values()) else None, galleries, page_notes,
                   stopped)


def titles_of(spec: Any) -> dict[str, str]:
    """A run's OOD set names as the tables print them."""
    return {s.name: s.published_as for s in spec.ood}


def _galleries(rows: list[dict[str, Any]], titles: dict[str, str], id_samples: set[str],
               id_title: str) -> dict[str, list[ExplainedImage]]:
    """The explained images of each OOD stream (rows of explanations.csv), with thumbnails, each
    marked with the set it is from (``id_samples``: the ID set's sample ids)."""
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        sample = grouped.setdefault(titles.get(row["ood_set"], row["ood_set"]), {}).setdefault(
            row["sample"], {"score": row["score"], "texts": []})
        sample["texts"].append((row["text"], row["source"], float(row["weight"])))
    return {name: [ExplainedImage(path, info["score"], figures.thumbnail(path), tuple(info["texts"]),
                                  *(("ID", id_title) if path in id_samples else ("OOD", name)))
                   for path, info in samples.items()] for name, samples in grouped.items()}


def _write_suite_files(config, suite, pages, summary, notes, backbone, model_spec, encoder, out_dir, command,
                       not_papers, warnings, stages) -> None:
    """results.md, results.csv and report.html, then metrics.json, whose times include the others'."""
    from negspace import __version__

    started = time.perf_counter()
    subset = bool(not_papers)
    (out_dir / "results.md").write_text(
        f"# {suite.title}\n\nOurs: {backbone}. FPR95 = {suite.fpr95} (the tables' convention). "
        f"Compared with {', '.join(suite.tables)}.\n\n"
        + "".join(f"> {note}\n\n" for note in notes)
        + "\n\n".join(f"## ID: {p.comparison.run.id.published_as}\n\n{compare.markdown(p.comparison)}" for p in pages)
        + "\n", encoding="utf-8")
    rows = [row for p in pages for row in compare.csv_rows(p.comparison, backbone)]
    with (out_dir / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["suite"])
        writer.writeheader()
        writer.writerows(rows)
    facts = [("suite", f"{suite.name}: {suite.title}"), ("compared with", ", ".join(suite.tables)),
             ("FPR95", f"{suite.fpr95} (the tables' convention)"), ("ours", backbone),
             ("negspace", __version__),
             ("images", f"not the papers' sets: {'; '.join(not_papers)}" if subset
              else "the papers' sets at their counts")]
    # file names that are not UTF-8 (surrogates on Linux) are written escaped, not refused
    page = render_report(f"negspace bench: {suite.name}", facts, pages, notes, warnings,
                         "; ".join(not_papers) if subset else None)
    (out_dir / "report.html").write_text(page, encoding="utf-8", errors="backslashreplace")
    stages.add("report", time.perf_counter() - started)
    info = {"suite": suite.name, "tables": list(suite.tables), "fpr95_convention": suite.fpr95,
            "negspace_version": __version__, "command": list(command) if command is not None else None,
            "model": model_spec, "weights_fingerprint": encoder.fingerprint, "device": str(encoder.device),
            "limit": config.limit, "subset": subset, "papers_sets": not subset, "not_papers_sets_because": not_papers,
            "seed": config.seed, "batch_size": config.batch_size,
            "notes": notes, "warnings": list(warnings), "runs": summary, "seconds": round(stages.elapsed(), 3),
            "seconds_per_stage": stages.rounded(),
            "metric_units": "fractions in [0, 1] (results.md/.csv: percent)"}
    (out_dir / "metrics.json").write_text(to_json(info, indent=2), encoding="utf-8")
