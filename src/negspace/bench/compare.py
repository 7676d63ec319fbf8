"""Our numbers beside the published ones: one comparison per run of a suite (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from negspace.bench.published import PUBLISHED_NAMES, published_for, published_methods
from negspace.bench.suites import RunSpec, Suite
from negspace.evaluation import Evaluation

METRICS = ("FPR95", "AUROC")  # the tables' columns; FPR95 in the suite's convention
LOWER_IS_BETTER = {"FPR95": True, "AUROC": False}


@dataclass(frozen=True)
class Cell:
    """One table cell: ours and the published value (percent), with the table it is from."""

    ours: float | None = None
    published: float | None = None
    table: str = ""

    @property
    def difference(self) -> float | None:
        """ours − published, when both exist."""
        return None if self.ours is None or self.published is None else self.ours - self.published


@dataclass
class RunComparison:
    """A run's table: rows are methods (ours first, then published-only ones), columns the OOD
    sets and averages under the tables' names."""

    suite: Suite
    run: RunSpec
    columns: list[str]
    cells: dict[str, dict[tuple[str, str], Cell]] = field(default_factory=dict)  # method -> (column, metric)
    ours: set[str] = field(default_factory=set)  # the methods we ran (tables' names)
    # True only when the sets are the papers' sets at their counts: then ours and published are
    # set side by side with their difference; otherwise published numbers are a reference only.
    comparable: bool = True

    def difference(self, cell: Cell) -> float | None:
        """ours − published, only where the two were measured on the same sets."""
        return cell.difference if self.comparable else None

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


def compare_run(suite: Suite, run: RunSpec, evaluations: Mapping[str, Evaluation],
                comparable: bool = True) -> RunComparison:
    """The side-by-side table of one run; ``evaluations`` maps negspace method names to results;
    ``comparable=False`` when the sets are not the papers' sets at their counts."""
    columns = [spec.published_as for spec in run.ood] + [average.name for average in run.averages]
    comparison = RunComparison(suite, run, columns, comparable=comparable)
    published = published_for(suite.tables, run.id.published_as)
    lookup = {(v.method, v.ood_set, v.metric): v for v in published}
    ours = {PUBLISHED_NAMES.get(method, method): our_values(suite, run, ev) for method, ev in evaluations.items()}
    comparison.ours = set(ours)
    for method in [*ours, *(m for m in published_methods(published) if m not in ours)]:
        row = {}
        for column in columns:
            for metric in METRICS:
                value = lookup.get((method, column, metric))
                row[(column, metric)] = Cell(ours.get(method, {}).get((column, metric)),
                                             value.value if value else None, value.table if value else "")
        comparison.cells[method] = row
    return comparison


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def markdown(comparison: RunComparison) -> str:
    """A Markdown table: per method, rows ``ours``, ``published`` and ``Δ`` (ours − published)."""
    header = ["method", ""] + [f"{column} {metric}{'↓' if LOWER_IS_BETTER[metric] else '↑'}"
                               for column in comparison.columns for metric in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    keys = [(column, metric) for column in comparison.columns for metric in METRICS]
    for method in comparison.methods():
        cells = comparison.cells[method]
        kinds = [("ours", lambda c: _number(c.ours))] if method in comparison.ours else []
        kinds.append(("published" if comparison.comparable else "published (reference)", lambda c: _number(c.published)))
        if method in comparison.ours and comparison.comparable:
            kinds.append(("Δ", lambda c: _number(c.difference, signed=True)))
        for i, (kind, show) in enumerate(kinds):
            lines.append(f"| {method if i == 0 else ''} | {kind} | " + " | ".join(show(cells[k]) for k in keys) + " |")
    return "\n".join(lines)


def csv_rows(comparison: RunComparison, backbone: str) -> list[dict[str, object]]:
    """Long-format rows (one per method, column and metric) for ``results.csv``."""
    rows = []
    for method, cells in comparison.cells.items():
        for (column, metric), cell in cells.items():
            if cell.ours is None and cell.published is None:
                continue
            rows.append({"suite": comparison.suite.name, "run": comparison.run.name,
                         "id_set": comparison.run.id.published_as, "ood_set": column, "method": method,
                         "metric": metric, "unit": "percent",
                         "fpr95_convention": comparison.suite.fpr95 if metric == "FPR95" else "",
                         "ours": "" if cell.ours is None else round(cell.ours, 4),
                         "published": "" if cell.published is None else cell.published,
                         "difference": "" if comparison.difference(cell) is None
                         else round(comparison.difference(cell), 4),
                         "published_in": cell.table, "our_backbone": backbone if cell.ours is not None else "",
                         "subset": not comparison.comparable})
    return rows


def console_summary(comparison: RunComparison) -> str:
    """A few lines for the terminal: per method we ran, the averages (or, with none, each OOD set)
    as ``ours (published, Δ)``; the full tables are in results.md and report.html."""
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
                elif comparison.comparable:
                    published = f" ({_number(cell.published)}, Δ {_number(cell.difference, True)})"
                else:
                    published = f" (published on the full sets: {_number(cell.published)})"
                parts.append(f"{column} {metric} {_number(cell.ours)}{published}")
        lines.append(f"  {method:<{width}}  " + "; ".join(parts))
    return "\n".join(lines)
