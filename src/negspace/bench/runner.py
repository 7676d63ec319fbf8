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
from negspace.bench.layout import SetCheck, check_sets, layout_report, run_sets
from negspace.bench.logged import logged_warnings
from negspace.bench.published import PUBLISHED_NAMES
from negspace.bench.stages import StageTimes
from negspace.bench.suites import RunSpec, Suite, load_suite
from negspace.classnames import ClassList
from negspace.detectors.ants.recorder import StreamRecorder
from negspace.detectors.base import OnlineDetector
from negspace.errors import DatasetError, NegspaceError, arg
from negspace.evaluation import Evaluation, encode_set
from negspace.jsonio import to_json
from negspace.methods import FEW_SHOT_METHODS, LLM_METHODS, METHODS, build_detector
from negspace.outdir import prepare_out_dir, remove_empty_out_dir
from negspace.reprs import with_config_repr
from negspace.runconfig import ANTSRunConfig, EvalConfig, MLLMConfig, ModelConfig
from negspace.runs import build_inputs, load_mllm, resolve_encoder, score_sets

log = logging.getLogger("negspace")

ALL_METHODS = tuple(METHODS)
GALLERY_SIZE = 12  # most OOD-looking images shown per stream in report.html
SUITE_FILES = ("results.md", "results.csv", "metrics.json", "report.html")


@with_config_repr
@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run: the suite, the methods, and the few settings a benchmark exposes.

    Each method runs with its paper defaults (its config class), the seed being ``seed``;
    ``params`` replaces a method's config (e.g. ``{"ants": ANTSConfig.authors()}``). ``limit``
    samples at most that many images per set (below a set's size: a subset, not the papers' sets);
    ``check_counts=False`` runs on sets whose file count is not the expected one (then marked as
    not the papers' sets). The published numbers are compared with only when the sets, the
    backbone and the protocol (``batch_size``, ``shots``, the stream) are the papers'.
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
        return EvalConfig(
            method,
            params,
            stream="per-set",
            batch_size=self.batch_size,
            seed=self.seed,
            scoring_backend=self.scoring_backend,
            ants=ants,
        )


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
    # what keeps our numbers from being compared with the published ones (empty: compared)
    differences: list[compare.Difference] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        """Whether every published number beside one of ours is compared (Δ shown)."""
        return not self.differences


def check_data(suite: Suite, data_root: Path, check_counts: bool) -> tuple[dict[str, SetCheck], dict[str, ClassList]]:
    """Every set and class list of the suite, or one error listing all that is wrong."""
    if not data_root.is_dir():
        raise NegspaceError(f"{arg('data_root')} {data_root} is not a folder.")
    try:
        checks = check_sets(suite, data_root, check_counts)
    except OSError as err:  # a folder it may not list, a file it may not read
        raise NegspaceError(
            f"{arg('data_root')} {data_root}: cannot read {err.filename or 'it'} ({err.strerror})."
        ) from None
    classes: dict[str, ClassList] = {}
    class_problems: list[str] = []
    for run in suite.runs:
        try:
            classes[run.name] = run_classes(run.classes, data_root)
        except DatasetError as err:
            class_problems.append(f"  run {run.name}: {err}")
        except OSError as err:
            class_problems.append(f"  run {run.name}: cannot read {err.filename} ({err.strerror})")
    if any(c.problem for c in checks.values()) or class_problems:
        report = (
            layout_report(suite, data_root, checks)
            if any(c.problem for c in checks.values())
            else f"suite {suite.name}: class lists missing under {arg('data_root')} {data_root}:"
        )
        raise NegspaceError("\n".join([report, *class_problems]))
    return checks, classes


def run_suite(
    config: BenchConfig,
    *,
    data_root: str | Path,
    model: ModelConfig | None = None,
    encoder: Any = None,
    mllm: MLLMConfig | Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
) -> SuiteResult:
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
        raise NegspaceError(f"{arg('suite')}: {err}.") from None
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise NegspaceError(
            f"{arg('methods', '--method')} {list(config.methods)}: expected some of {', '.join(ALL_METHODS)}."
        )
    for name, option in (("limit", "--limit"), ("batch_size", "--batch-size"), ("shots", "--shots")):
        value = getattr(config, name)
        if (value is not None or name != "limit") and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise NegspaceError(f"{arg(name, option)} must be a positive whole number, got {value!r}.")
    with logged_warnings() as warnings:
        return _check_and_bench(config, suite, data_root, model, encoder, mllm, out, overwrite, command, warnings)


def _check_and_bench(
    config: BenchConfig,
    suite: Suite,
    data_root: Path,
    model: ModelConfig,
    encoder: Any,
    mllm: MLLMConfig | Any,
    out: str | Path | None,
    overwrite: bool,
    command: Sequence[str] | None,
    warnings: list[str],
) -> SuiteResult:
    methods = list(dict.fromkeys(config.methods))
    stages = StageTimes()
    with stages.timed("listing and checking"):
        checks, classes = check_data(suite, data_root, config.check_counts)
    notes: list[str] = []
    if "ants" in methods and mllm is None:
        methods.remove("ants")
        notes.append("ANTS was skipped: it needs a multimodal LLM (--mllm SPEC).")
    if not methods:
        raise NegspaceError(f"no method left to run: ANTS needs {arg('mllm', '--mllm SPEC')}.")
    not_papers = not_the_papers_sets(checks, config.limit, config.seed)
    missing_train = [
        run.train or f"(run {run.name} has none)"
        for run in suite.runs
        if not run.train or not (data_root / run.train).is_dir()
    ]
    few_shot = [m for m in methods if m in FEW_SHOT_METHODS]
    if few_shot and missing_train:
        methods = [m for m in methods if m not in FEW_SHOT_METHODS]
        names = " and ".join(PUBLISHED_NAMES.get(m, m) for m in few_shot)
        notes.append(
            f"{names} skipped: each draws {config.shots} labelled images per class (seed {config.seed}) "
            f"from the ID training split, {missing_train[0]} under --data-root, which is missing."
        )
    if not methods:
        raise NegspaceError(
            f"no method left to run: InterNeg and TINS need the ID training split {missing_train[0]} "
            f"under {arg('data_root')}."
        )
    if "negrefine" in methods and mllm is None:
        notes.append(
            "NegRefine ran without its LLM filter (no --mllm or --llm): its bank is the initial selection, "
            "cleaned; not the authors' method."
        )
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
        return _bench(
            config,
            suite,
            methods,
            checks,
            classes,
            notes,
            model,
            encoder,
            mllm,
            out_dir,
            command,
            not_papers,
            warnings,
            data_root,
            stages,
        )
    except BaseException:
        if out_dir is not None:  # a failed run leaves no empty folder behind
            remove_empty_out_dir(out_dir, created_top)
        raise


def not_the_papers_sets(checks: Mapping[str, Any], limit: int | None, seed: int) -> list[str]:
    """Why the run's sets are not the papers' sets at their counts (empty when they are). A
    ``limit`` at or above every set's size samples nothing away: it is no subset."""
    sizes = [len(check.images) for check in checks.values() if check.images is not None]
    subset = limit is not None and any(size > limit for size in sizes)
    reasons = [f"a subset of at most {limit} images per set, seed {seed}"] if subset else []
    wrong = [
        f"{name} {len(check.images):,} of {check.spec.count:,}"
        for name, check in checks.items()
        if check.images is not None and len(check.images) != check.spec.count
    ]
    if wrong:
        reasons.append(
            "image counts other than the papers' ("
            + ", ".join(wrong[:4])
            + (f" and {len(wrong) - 4} more" if len(wrong) > 4 else "")
            + ")"
        )
    return reasons


def _bench(
    config: BenchConfig,
    suite: Suite,
    methods: list[str],
    checks: dict[str, SetCheck],
    classes: dict[str, ClassList],
    notes: list[str],
    model: ModelConfig,
    encoder: Any,
    mllm: Any,
    out_dir: Path | None,
    command: Sequence[str] | None,
    not_papers: list[str],
    warnings: list[str],
    data_root: Path,
    stages: StageTimes,
) -> SuiteResult:
    with stages.timed("loading the model"):
        encoder, model_spec = resolve_encoder(model, encoder)
    backbone = model_spec + (f" (weights {model.weights})" if model.weights else "")
    facts = run_facts(
        config,
        methods,
        not_papers,
        compare.ModelRecord(
            model_spec, str(getattr(encoder, "fingerprint", "")), str(model.weights) if model.weights else None
        ),
    )
    differences = compare.run_differences(suite, facts)
    pages: list[RunPage] = []
    summary: dict[str, Any] = {}
    evaluations: dict[str, dict[str, Evaluation]] = {}
    mllm_seen: dict[str, int] = {}  # the MLLM's counters, accounted for run after run
    stopped = None
    last_use = {s.name: i for i, run in enumerate(suite.runs) for s in (run.id, *run.ood)}
    for index, spec in enumerate(suite.runs):
        # the listings no later run reads: dropped once encoded (a Path costs 331 bytes an image)
        release = [name for name, last in last_use.items() if last == index]
        page, run_evaluations = _run_one(
            config,
            suite,
            spec,
            checks,
            classes[spec.name],
            methods,
            model,
            model_spec,
            encoder,
            mllm,
            out_dir,
            mllm_seen,
            stages,
            differences=differences,
            data_root=data_root,
            release=release,
        )
        pages.append(page)
        evaluations[spec.name] = run_evaluations
        summary[spec.name] = {
            m: {
                "ood": {k: r.as_dict() for k, r in ev.results.items()},
                "average": ev.average(),
                "incomplete": "incomplete" in ev.info,
            }
            for m, ev in run_evaluations.items()
        }
        if page.stopped is not None:
            stopped = f"run {spec.name}, stream {page.stopped}"
            methods = [m for m in methods if m != "ants"]
            notes.append(
                f"ANTS stopped on {stopped}: more than {config.ants.max_failures:.0%} of its MLLM requests "
                "failed or gave unusable answers; its numbers there are incomplete and it was not run on "
                "later runs. Check the server (--mllm) and run again."
            )
            if not methods:
                break
    applying = compare.merged_differences([page.comparison for page in pages])
    if out_dir is not None:
        _write_suite_files(
            config,
            suite,
            pages,
            summary,
            notes,
            backbone,
            facts,
            applying,
            encoder,
            out_dir,
            command,
            not_papers,
            warnings,
            stages,
        )
    log.info(
        "bench %s: seconds per stage: %s",
        suite.name,
        ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in stages.seconds.items()),
    )
    return SuiteResult(suite, evaluations, pages, notes, stopped, out_dir, stages, applying)


def run_facts(
    config: BenchConfig, methods: Sequence[str], not_papers: Sequence[str], model: compare.ModelRecord
) -> compare.RunFacts:
    """How the run is made, for the comparison with the published results: its sets, model,
    batch size and shots, and how ANTS's stream departs from the paper's."""
    names = {m: PUBLISHED_NAMES.get(m, m) for m in methods}
    departures = {}
    if "ants" in methods:
        ants = []
        if getattr(config.eval_config("ants").params, "two_pass", False):
            ants.append("two passes over each stream")
        if config.ants.schedule != "default":
            ants.append(f"the bank-update schedule {config.ants.schedule} (fitted to the stream's length)")
        if ants:
            departures[names["ants"]] = ", ".join(ants)
    return compare.RunFacts(
        tuple(not_papers),
        model,
        config.batch_size,
        config.shots,
        stream="per-set",
        seed=config.seed,
        test_time=frozenset(names[m] for m in methods if issubclass(METHODS[m].detector, OnlineDetector)),
        few_shot=frozenset(names[m] for m in methods if m in FEW_SHOT_METHODS),
        departures=departures,
    )


def _run_one(
    config: BenchConfig,
    suite: Suite,
    spec: RunSpec,
    checks: dict[str, SetCheck],
    classes: ClassList,
    methods: Sequence[str],
    model: ModelConfig,
    model_spec: str,
    encoder: Any,
    mllm: Any,
    out_dir: Path | None,
    mllm_seen: dict[str, int],
    stages: StageTimes,
    differences: Sequence[compare.Difference] = (),
    data_root: Path = Path(),
    release: Sequence[str] = (),
) -> tuple[RunPage, dict[str, Evaluation]]:
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
    page_notes: list[str] = []
    traces: dict[str, list[tuple[int, float]]] = {}
    galleries: dict[str, list[ExplainedImage]] = {}
    stopped: str | None = None
    for method in methods:
        eval_config = config.eval_config(method)
        if spec.train:  # the few-shot methods' ID shots, drawn from the training split with the bench's seed
            eval_config = replace(eval_config, id_shots=data_root / spec.train, shots=config.shots)
        method_dir = out_dir / spec.name / method if out_dir is not None else None
        log.info("bench %s / %s: %s", suite.name, spec.name, method)
        with stages.timed(f"{method}: building (texts, banks)"):
            inputs = build_inputs(
                eval_config, encoder, classes, model, model_spec, stream_size, mllm if method in LLM_METHODS else None
            )
            detector = build_detector(inputs)
        recorder = (
            StreamRecorder(method_dir, GALLERY_SIZE, config.ants.max_failures, stats_seen=mllm_seen)
            if method == "ants"
            else None
        )
        with stages.timed(f"{method}: scoring"):
            evaluation = score_sets(detector, id_set, ood_sets, eval_config, True, recorder)
        evaluation.info = {
            "method": method,
            "params": detector.get_params(),
            "suite": suite.name,
            "run": spec.name,
            **inputs.notes,
            **evaluation.info,
            **(recorder.write(mllm) if recorder is not None else {}),
        }
        incomplete = recorder.incomplete([s.name for s in spec.ood], evaluation.ood_scores) if recorder else None
        if recorder is not None and incomplete is not None:
            stopped = evaluation.stopped = recorder.stopped
            evaluation.info["incomplete"] = incomplete
        if method_dir is not None:
            with stages.timed("report"):
                write_report(evaluation, method_dir)
        evaluation.detector = detector
        evaluations[method] = evaluation
        if recorder is not None:
            traces = evaluation.traces["lam"] = recorder.lam
            galleries = _galleries(
                recorder.explanation_rows, titles_of(spec), set(id_set.sample_ids), spec.id.published_as
            )
            if recorder.stopped is not None:
                name = titles_of(spec).get(recorder.stopped, recorder.stopped)
                page_notes.append(
                    f"ANTS stopped on the stream of {name}: too many MLLM requests failed; its numbers are incomplete."
                )
    comparison = compare.compare_run(suite, spec, evaluations, differences)
    titles = titles_of(spec)
    with stages.timed("report"):
        page = _run_page(comparison, evaluations, spec, titles, traces, galleries, page_notes, stopped)
    return page, evaluations


def _run_page(
    comparison: compare.RunComparison,
    evaluations: dict[str, Evaluation],
    spec: RunSpec,
    titles: dict[str, str],
    traces: dict[str, list[tuple[int, float]]],
    galleries: dict[str, list[ExplainedImage]],
    page_notes: list[str],
    stopped: str | None,
) -> RunPage:
    """The run's section of report.html: its table, figures and gallery."""
    return RunPage(
        comparison,
        figures.roc_figure(evaluations, [s.name for s in spec.ood], titles),
        {m: figures.histogram_figure(m, ev, titles) for m, ev in evaluations.items()},
        figures.lam_figure(traces, titles) if any(traces.values()) else None,
        galleries,
        page_notes,
        stopped,
    )


def titles_of(spec: Any) -> dict[str, str]:
    """A run's OOD set names as the tables print them."""
    return {s.name: s.published_as for s in spec.ood}


def _galleries(
    rows: list[dict[str, Any]], titles: dict[str, str], id_samples: set[str], id_title: str
) -> dict[str, list[ExplainedImage]]:
    """The explained images of each OOD stream (rows of explanations.csv), with thumbnails, each
    marked with the set it is from (``id_samples``: the ID set's sample ids)."""
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        sample = grouped.setdefault(titles.get(row["ood_set"], row["ood_set"]), {}).setdefault(
            row["sample"], {"score": row["score"], "texts": []}
        )
        sample["texts"].append((row["text"], row["source"], float(row["weight"])))
    return {
        name: [
            ExplainedImage(
                path,
                info["score"],
                figures.thumbnail(path),
                tuple(info["texts"]),
                *(("ID", id_title) if path in id_samples else ("OOD", name)),
            )
            for path, info in samples.items()
        ]
        for name, samples in grouped.items()
    }


def _write_suite_files(
    config: BenchConfig,
    suite: Suite,
    pages: list[RunPage],
    summary: dict[str, Any],
    notes: list[str],
    backbone: str,
    facts: compare.RunFacts,
    differences: Sequence[compare.Difference],
    encoder: Any,
    out_dir: Path,
    command: Sequence[str] | None,
    not_papers: list[str],
    warnings: list[str],
    stages: StageTimes,
) -> None:
    """results.md, results.csv and report.html, then metrics.json, whose times include the others'."""
    from negspace import __version__

    started = time.perf_counter()
    subset = bool(not_papers)
    verdict = compare.verdict_lines(differences)
    protocol = compare.protocol_sentence(suite, facts)
    (out_dir / "results.md").write_text(
        f"# {suite.title}\n\nOurs: {backbone}. Every number is a percentage; FPR95 = {suite.fpr95} "
        f"({compare.CONVENTIONS[suite.fpr95]}, the tables' convention). Compared with {', '.join(suite.tables)}.\n\n"
        f"{protocol}\n\n**{verdict[0]}**\n"
        + "".join(f"\n- {line.strip()}" for line in verdict[1:])
        + "\n\n"
        + "".join(f"> {note}\n\n" for note in notes)
        + "\n\n".join(
            f"## ID: {p.comparison.run.id.published_as} (values in percent)\n\n"
            f"{compare.markdown(p.comparison, facts.model.short())}"
            for p in pages
        )
        + "\n",
        encoding="utf-8",
    )
    rows = [row for p in pages for row in compare.csv_rows(p.comparison, backbone)]
    with (out_dir / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["suite"])
        writer.writeheader()
        writer.writerows(rows)
    match = compare.identify_backbone(facts.model)
    lines = [
        ("suite", f"{suite.name}: {suite.title}"),
        ("compared with", ", ".join(suite.tables)),
        ("units", "every number of the tables is a percentage"),
        ("FPR95", f"{suite.fpr95} ({compare.CONVENTIONS[suite.fpr95]}; the tables' convention)"),
        ("ours", f"{backbone}: {match.name or 'not a published backbone'} ({match.how})"),
        ("test-time methods", protocol),
        ("negspace", __version__),
        ("images", f"not the papers' sets: {'; '.join(not_papers)}" if subset else "the papers' sets at their counts"),
    ]
    # file names that are not UTF-8 (surrogates on Linux) are written escaped, not refused
    page = render_report(f"negspace bench: {suite.name}", lines, pages, notes, warnings, verdict, facts.model.short())
    (out_dir / "report.html").write_text(page, encoding="utf-8", errors="backslashreplace")
    stages.add("report", time.perf_counter() - started)
    info = {
        "suite": suite.name,
        "tables": list(suite.tables),
        "fpr95_convention": suite.fpr95,
        "fpr95_of_tables": dict(suite.table_fpr95),
        "negspace_version": __version__,
        "command": list(command) if command is not None else None,
        "model": facts.model.spec,
        "weights_fingerprint": encoder.fingerprint,
        "device": str(encoder.device),
        "backbone": {"ours": facts.model.describe(), "published_as": match.name, "how": match.how},
        "limit": config.limit,
        "subset": subset,
        "papers_sets": not subset,
        "not_papers_sets_because": not_papers,
        # compared with the published numbers only when nothing below differs (papers_sets alone is not enough)
        "comparable": not differences,
        "differences": [d.as_dict() for d in differences],
        "seed": config.seed,
        "batch_size": config.batch_size,
        "stream": facts.stream,
        "test_time_methods": sorted(facts.test_time),
        "shots": config.shots,
        "published_protocol": {
            "batch_size": suite.protocol.batch_size,
            "stream": suite.protocol.stream,
            "shots": suite.protocol.shots,
            "about": suite.protocol.about,
        },
        "notes": notes,
        "warnings": list(warnings),
        "runs": summary,
        "seconds": round(stages.elapsed(), 3),
        "seconds_per_stage": stages.rounded(),
        "metric_units": "fractions in [0, 1] (results.md/.csv: percent)",
    }
    (out_dir / "metrics.json").write_text(to_json(info, indent=2), encoding="utf-8")
