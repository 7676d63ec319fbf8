"""Our numbers beside the published ones: one comparison per run of a suite (pure functions).

A published cell is *compared* (its difference Δ = ours − published shown) only when nothing
differs between the run and the published result:

* the sets: the papers' sets at their counts (no ``limit`` sample, no other image count);
* the backbone: the run's model is the row's backbone, architecture and pretrained weights
  (:func:`identify_backbone`: a hub spec that loads them, or a local file whose SHA-256 is a known
  release of them; a local file of unknown checksum is unverified, so not that backbone);
* the protocol of the test-time methods (their stream and batch size, the few-shot methods'
  shots) as the suite states it (:class:`~negspace.bench.suites.Protocol`);
* the FPR95 convention of the table the cell is from.

Otherwise the cell is a reference only, and the :class:`Difference` that stands in its way is
listed (in the console, ``results.md``, ``report.html`` and ``metrics.json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from negspace.bench.published import (
    BACKBONES,
    PUBLISHED_NAMES,
    normalise_spec,
    published_for,
    published_methods,
    published_values,
)
from negspace.bench.suites import RunSpec, Suite
from negspace.evaluation import Evaluation

METRICS = ("FPR95", "AUROC")  # the tables' columns; FPR95 in the suite's convention
LOWER_IS_BETTER = {"FPR95": True, "AUROC": False}
UNIT = "%"  # every number of the tables is a percentage
CONVENTIONS = {
    "fpr95_ood": "ID rejected at 95% OOD recall, OOD positive",
    "fpr95": "OOD accepted at 95% ID recall, ID positive",
}


@dataclass(frozen=True)
class ModelRecord:
    """The model a run used, as ``metrics.json`` records it: its spec, the fingerprint of the
    weights it loaded (``hub:NAME@REVISION``, ``sha256:HEX`` of a file, ``dir-sha256:HEX`` of a
    folder) and the local weights given in place of the hub's, if any."""

    spec: str
    fingerprint: str
    weights: str | None = None

    def short(self) -> str:
        """The spec, a model config file's path shortened to its name."""
        spec = self.spec
        if spec.startswith("openclip:") and ".json" in spec:
            head, _, tag = spec[len("openclip:") :].rpartition(".json")
            spec = f"openclip:{Path(head + '.json').name}{tag}"
        return spec

    def describe(self) -> str:
        """:meth:`short`, and local weights with their hash."""
        spec = self.short()
        if self.weights is None and not self.fingerprint.startswith(("sha256:", "dir-sha256:")):
            return spec
        kind, _, digest = self.fingerprint.partition(":")
        weights = f"weights {Path(self.weights).name}, " if self.weights else "weights "
        return f"{spec}, {weights}{kind}:{digest[:12]}…"


@dataclass(frozen=True)
class BackboneMatch:
    """Which published backbone a model is (``name``; ``None``: none known), and how it was told."""

    name: str | None
    how: str


def identify_backbone(model: ModelRecord) -> BackboneMatch:
    """The published backbone ``model`` is, from its spec and the fingerprint of its weights.

    Hub weights count when the spec is one that loads a backbone's weights (and the fingerprint
    says they came from the hub); a local file counts only when its SHA-256 is a known release of
    those weights, loaded under a spec that runs it as published. Anything else is unverified.
    """
    spec = normalise_spec(model.spec)
    kind, _, digest = model.fingerprint.partition(":")
    if kind == "hub" and model.weights is None:
        # the fingerprint must name what the spec names: "hub:ViT-B-16/openai@REV", "hub:openai/clip-...@REV"
        hub_name = spec.split(":", 1)[1].removeprefix("hf-hub:")
        for backbone in BACKBONES.values():
            if spec in backbone.hub_specs and digest.lower().startswith(hub_name + "@"):
                return BackboneMatch(backbone.name, f"{backbone.weights} from the hub ({model.fingerprint})")
        return BackboneMatch(None, "not a spec that loads the weights of a published backbone")
    if kind == "sha256":
        for backbone in BACKBONES.values():
            if digest.lower() in backbone.sha256:
                if spec in backbone.file_specs:
                    return BackboneMatch(backbone.name, f"a local copy of {backbone.weights} (SHA-256 verified)")
                return BackboneMatch(
                    None,
                    f"a local copy of {backbone.name}'s weights, but run as {model.spec}, "
                    f"not as published (one of {', '.join(backbone.file_specs)})",
                )
        return BackboneMatch(
            None, "local weights, unverified: their SHA-256 is not a known release of a published backbone"
        )
    if kind == "dir-sha256":
        return BackboneMatch(None, "a local folder of weights, unverified: negspace knows no checksum of a folder")
    return BackboneMatch(None, f"weights of unknown origin, unverified: {model.fingerprint or 'no fingerprint'}")


@dataclass(frozen=True)
class RunFacts:
    """What a comparison needs to know of how the run was made.

    ``sets``: why the sets are not the papers' sets at their counts (empty when they are);
    ``test_time`` and ``few_shot``: the methods run (tables' names) whose scores depend on the
    stream and its batch size, and on their shots; ``departures``: per method (tables' name), how
    its stream departs from the paper's (e.g. ANTS in two passes).
    """

    sets: tuple[str, ...]
    model: ModelRecord
    batch_size: int
    shots: int = 16
    stream: str = "per-set"
    seed: int = 0
    test_time: frozenset[str] = frozenset()
    few_shot: frozenset[str] = frozenset()
    departures: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    """One way the run differs from the published results, and which cells it keeps from being
    compared: every cell, or only those of ``methods``, of ``tables``, of ``metric``, or of rows
    whose backbone is in ``backbones``."""

    what: str  # "sets", "backbone", "batch size", "stream", "shots", "FPR95 convention"
    ours: str
    published: str
    methods: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    metric: str = ""
    backbones: tuple[str, ...] | None = None

    def applies(self, method: str, cell: Cell, metric: str) -> bool:
        """Whether this difference stands between ``cell`` of ``method`` and its published value."""
        return (
            (not self.methods or method in self.methods)
            and (not self.tables or cell.table in self.tables)
            and (not self.metric or metric == self.metric)
            and (self.backbones is None or cell.backbone in self.backbones)
        )

    def text(self) -> str:
        """``what: ours …, published …`` and what it concerns, in one line."""
        scope = []
        if self.methods:
            scope.append(", ".join(self.methods))
        if self.tables:
            scope.append(", ".join(self.tables) + (f", {self.metric} only" if self.metric else ""))
        return f"{self.what}: ours {self.ours}, published {self.published}" + (
            f" ({'; '.join(scope)})" if scope else ""
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "what": self.what,
            "ours": self.ours,
            "published": self.published,
            "methods": list(self.methods),
            "tables": list(self.tables),
            "metric": self.metric,
            "text": self.text(),
        }


def published_backbones(suite: Suite) -> dict[str, list[str]]:
    """The backbones of the suite's published cells ("" where a table states none), each with the
    tables ("SOURCE/TABLE") that use it, in first-seen order."""
    ids = {run.id.published_as for run in suite.runs}
    found: dict[str, list[str]] = {}
    for value in published_values():
        table = f"{value.source}/{value.table}"
        if value.id_set in ids and table in suite.tables and table not in found.setdefault(value.backbone, []):
            found[value.backbone].append(table)
    return found


def run_differences(suite: Suite, facts: RunFacts) -> list[Difference]:
    """Every way the run described by ``facts`` differs from the suite's published results."""
    protocol = suite.protocol
    found = []
    if facts.sets:
        found.append(Difference("sets", "; ".join(facts.sets), "the full sets at their counts"))
    match = identify_backbone(facts.model)
    other = {name: tables for name, tables in published_backbones(suite).items() if not name or name != match.name}
    if other:
        published = [
            f"{name} ({BACKBONES[name].weights})" if name in BACKBONES else name or f"not stated ({', '.join(tables)})"
            for name, tables in other.items()
        ]
        found.append(
            Difference(
                "backbone", f"{facts.model.describe()} ({match.how})", "; ".join(published), backbones=tuple(other)
            )
        )
    test_time = tuple(sorted(facts.test_time))
    if test_time and facts.batch_size != protocol.batch_size:
        found.append(Difference("batch size", str(facts.batch_size), str(protocol.batch_size), methods=test_time))
    if test_time and facts.stream != protocol.stream:
        found.append(Difference("stream", facts.stream, protocol.stream, methods=test_time))
    for method, departure in sorted(facts.departures.items()):
        found.append(Difference("stream", departure, "the paper's online stream", methods=(method,)))
    few_shot = tuple(sorted(facts.few_shot))
    if few_shot and facts.shots != protocol.shots:
        found.append(Difference("shots", f"{facts.shots} per class", f"{protocol.shots} per class", methods=few_shot))
    for table, convention in suite.table_fpr95:
        if convention != suite.fpr95:
            found.append(
                Difference(
                    "FPR95 convention",
                    f"{suite.fpr95} ({CONVENTIONS[suite.fpr95]})",
                    f"{convention} ({CONVENTIONS[convention]})",
                    tables=(table,),
                    metric="FPR95",
                )
            )
    return found


@dataclass(frozen=True)
class Cell:
    """One table cell: ours and the published value (percent), with the table and backbone it is
    from, and whether the two are compared (nothing differs between them)."""

    ours: float | None = None
    published: float | None = None
    table: str = ""
    backbone: str = ""
    compared: bool = False

    @property
    def difference(self) -> float | None:
        """ours − published, only where the two are compared."""
        if not self.compared or self.ours is None or self.published is None:
            return None
        return self.ours - self.published


@dataclass
class RunComparison:
    """A run's table: rows are methods (ours first, then published-only ones), columns the OOD
    sets and averages under the tables' names; ``differences`` are every way the run differs from
    the published results (those that keep some cell from being compared: :meth:`applying`)."""

    suite: Suite
    run: RunSpec
    columns: list[str]
    cells: dict[str, dict[tuple[str, str], Cell]] = field(default_factory=dict)  # method -> (column, metric)
    ours: set[str] = field(default_factory=set)  # the methods we ran (tables' names)
    differences: list[Difference] = field(default_factory=list)

    def applying(self) -> list[Difference]:
        """The differences that keep at least one of our cells from its published value."""
        return [
            d
            for d in self.differences
            if any(
                d.applies(method, cell, metric)
                for method in self.ours
                for (_, metric), cell in self.cells.get(method, {}).items()
                if cell.ours is not None and cell.published is not None
            )
        ]

    @property
    def comparable(self) -> bool:
        """True when every published cell beside one of ours is compared."""
        return not self.applying()

    @property
    def subset(self) -> bool:
        """Whether the sets are not the papers' sets at their counts."""
        return any(d.what == "sets" for d in self.differences)

    def compared(self, method: str) -> bool:
        """Whether some cell of ``method`` is compared with its published value."""
        return any(cell.compared for cell in self.cells.get(method, {}).values())

    def backbone_of(self, method: str) -> str:
        """The backbone(s) the published cells of ``method`` were measured with."""
        names = dict.fromkeys(c.backbone for c in self.cells[method].values() if c.published is not None)
        return "; ".join(name or "not stated" for name in names)

    def methods(self) -> list[str]:
        return list(self.cells)


def our_values(suite: Suite, run: RunSpec, evaluation: Evaluation) -> dict[tuple[str, str], float]:
    """Our FPR95 (the suite's convention) and AUROC in percent, per OOD set and average, under
    the tables' names; an average is the plain mean of its sets' metrics (as OpenOOD and the
    papers compute it)."""
    per_set: dict[str, dict[str, float]] = {}
    for spec in run.ood:
        result = evaluation.results.get(spec.name)
        if result is not None:
            per_set[spec.published_as] = {"FPR95": 100 * getattr(result, suite.fpr95), "AUROC": 100 * result.auroc}
    values = {(name, metric): value for name, metrics in per_set.items() for metric, value in metrics.items()}
    for average in run.averages:
        members = [spec.published_as for spec in run.average_members(average)]
        if members and all(m in per_set for m in members):
            for metric in METRICS:
                values[(average.name, metric)] = float(np.mean([per_set[m][metric] for m in members]))
    return values


def compare_run(
    suite: Suite, run: RunSpec, evaluations: Mapping[str, Evaluation], differences: Sequence[Difference] = ()
) -> RunComparison:
    """The side-by-side table of one run; ``evaluations`` maps negspace method names to results;
    ``differences`` (from :func:`run_differences`) decide which cells are compared."""
    columns = [spec.published_as for spec in run.ood] + [average.name for average in run.averages]
    comparison = RunComparison(suite, run, columns, differences=list(differences))
    published = published_for(suite.tables, run.id.published_as)
    lookup = {(v.method, v.ood_set, v.metric): v for v in published}
    ours = {PUBLISHED_NAMES.get(method, method): our_values(suite, run, ev) for method, ev in evaluations.items()}
    comparison.ours = set(ours)
    for method in [*ours, *(m for m in published_methods(published) if m not in ours)]:
        row = {}
        for column in columns:
            for metric in METRICS:
                value = lookup.get((method, column, metric))
                cell = Cell(
                    ours.get(method, {}).get((column, metric)),
                    value.value if value else None,
                    f"{value.source}/{value.table}" if value else "",
                    value.backbone if value else "",
                )
                blocked = any(d.applies(method, cell, metric) for d in differences)
                both = cell.ours is not None and cell.published is not None
                row[(column, metric)] = Cell(cell.ours, cell.published, cell.table, cell.backbone, both and not blocked)
        comparison.cells[method] = row
    return comparison


def merged_differences(comparisons: Sequence[RunComparison]) -> list[Difference]:
    """The differences that apply in any of ``comparisons``, each once, in first-seen order."""
    return list(dict.fromkeys(d for c in comparisons for d in c.applying()))


def verdict_lines(differences: Sequence[Difference]) -> list[str]:
    """What a reader is told first: compared or a reference only, and every difference."""
    if not differences:
        return [
            (
                "Comparable with the published numbers: the papers' sets at their counts, the published backbone "
                "and protocol; Δ = ours − published."
            )
        ]
    return [
        "Not comparable with the published numbers, which are a reference only where these differ:",
        *(f"  {d.text()}" for d in differences),
    ]


def protocol_sentence(suite: Suite, facts: RunFacts) -> str:
    """The stream protocol and batch size the test-time methods ran with (results.md)."""
    published = f"the papers: batches of {suite.protocol.batch_size}"
    if not facts.test_time:
        return (
            f"No test-time method ran: every method scored each image on its own (batch size "
            f"{facts.batch_size} changes no score; {published} for test-time methods)."
        )
    few_shot = (
        f" {', '.join(sorted(facts.few_shot))}: {facts.shots} labelled ID images per class "
        f"(the papers: {suite.protocol.shots})."
        if facts.few_shot
        else ""
    )
    departures = "".join(f" {method}: {text}." for method, text in sorted(facts.departures.items()))
    return (
        f"Test-time methods ({', '.join(sorted(facts.test_time))}): stream protocol {facts.stream}, i.e. for each "
        f"OOD set one stream of the ID set and that OOD set shuffled together (seed {facts.seed}), scored in "
        f"batches of {facts.batch_size}, the detector's state reset between OOD sets ({published})."
        f"{few_shot}{departures} The other methods score each image on its own."
    )


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def row_kinds(comparison: RunComparison, method: str) -> list[str]:
    """The rows a method gets: ``ours`` (when run), ``published`` or ``published (reference)``
    (when none of its cells is compared), and ``Δ`` where some cell is compared."""
    ran = method in comparison.ours
    compared = comparison.compared(method)
    return (
        (["ours"] if ran else [])
        + ["published" if compared else "published (reference)"]
        + (["Δ"] if ran and compared else [])
    )


def markdown(comparison: RunComparison, our_backbone: str = "") -> str:
    """A Markdown table, values in percent: per method, rows ``ours``, ``published`` with its
    backbone and ``Δ`` (ours − published) where compared."""
    header = ["method", "", "backbone"] + [
        f"{column} {metric} ({UNIT}){'↓' if LOWER_IS_BETTER[metric] else '↑'}"
        for column in comparison.columns
        for metric in METRICS
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    keys = [(column, metric) for column in comparison.columns for metric in METRICS]
    for method in comparison.methods():
        cells = comparison.cells[method]
        for i, kind in enumerate(row_kinds(comparison, method)):
            if kind == "ours":
                backbone, values = our_backbone, [_number(cells[k].ours) for k in keys]
            elif kind == "Δ":
                backbone, values = "", [_number(cells[k].difference, signed=True) for k in keys]
            else:
                backbone, values = comparison.backbone_of(method), [_number(cells[k].published) for k in keys]
            lines.append(f"| {method if i == 0 else ''} | {kind} | {backbone} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def csv_rows(comparison: RunComparison, backbone: str) -> list[dict[str, object]]:
    """Long-format rows (one per method, column and metric) for ``results.csv``."""
    rows: list[dict[str, object]] = []
    for method, cells in comparison.cells.items():
        for (column, metric), cell in cells.items():
            if cell.ours is None and cell.published is None:
                continue
            rows.append(
                {
                    "suite": comparison.suite.name,
                    "run": comparison.run.name,
                    "id_set": comparison.run.id.published_as,
                    "ood_set": column,
                    "method": method,
                    "metric": metric,
                    "unit": "percent",
                    "fpr95_convention": comparison.suite.fpr95 if metric == "FPR95" else "",
                    "ours": "" if cell.ours is None else round(cell.ours, 4),
                    "published": "" if cell.published is None else cell.published,
                    "difference": "" if cell.difference is None else round(cell.difference, 4),
                    "compared": cell.compared,
                    "published_in": cell.table,
                    "published_backbone": cell.backbone if cell.published is not None else "",
                    "published_fpr95_convention": comparison.suite.fpr95_of(cell.table)
                    if metric == "FPR95" and cell.published is not None
                    else "",
                    "our_backbone": backbone if cell.ours is not None else "",
                    "subset": comparison.subset,
                }
            )
    return rows


def console_summary(comparison: RunComparison) -> str:
    """A few lines for the terminal: per method we ran, the averages (or, with none, each OOD set)
    as ``ours (published, Δ)`` where compared, ``ours (published …, reference)`` elsewhere; the
    full tables are in results.md and report.html."""
    averages = [a.name for a in comparison.run.averages] or comparison.columns
    lines = []
    width = max([len(m) for m in comparison.ours] + [6])
    for method in comparison.methods():
        if method not in comparison.ours:
            continue
        parts = []
        for column in averages:
            for metric in METRICS:
                cell = comparison.cells[method][(column, metric)]
                if cell.published is None:
                    published = ""
                elif cell.compared:
                    published = f" ({_number(cell.published)}, Δ {_number(cell.difference, True)})"
                else:
                    published = f" (published {_number(cell.published)}, a reference only)"
                parts.append(f"{column} {metric} {_number(cell.ours)}{published}")
        lines.append(f"  {method:<{width}}  " + "; ".join(parts))
    return "\n".join(lines)
