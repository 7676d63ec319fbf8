"""Writing an evaluation out: the console table, metrics.json, results.md/.csv, scores, plots."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from negspace.evaluation import METRIC_NAMES, Evaluation, summarise_skipped
from negspace.jsonio import to_json
from negspace.metrics import threshold_at_id_recall
from negspace.outdir import EVAL_OUTPUTS
from negspace.plots import logit_axis, png_bytes, pyplot, roc_panel, score_histogram

log = logging.getLogger(__name__)

COLUMN_TITLES = {
    "auroc": "AUROC",
    "fpr95": "FPR95 (ID+)",
    "fpr95_ood": "FPR95 (OOD+)",
    "aupr_in": "AUPR-In",
    "aupr_out": "AUPR-Out",
}


def table_rows(evaluation: Evaluation) -> list[tuple[str, dict[str, float]]]:
    """``(set name, metrics)`` per OOD set, then ``("average", ...)`` and, for test-time methods,
    ``("whole stream", ...)`` (every ID score against every OOD score); metrics as fractions."""
    rows = [(name, {m: getattr(r, m) for m in METRIC_NAMES}) for name, r in evaluation.results.items()]
    rows.append(("average", evaluation.average()))
    if evaluation.whole is not None:
        rows.append(("whole stream", {m: getattr(evaluation.whole, m) for m in METRIC_NAMES}))
    return rows


def format_table(evaluation: Evaluation) -> str:
    """A fixed-width console table, rates in percent (the papers' unit)."""
    rows = table_rows(evaluation)
    width = max(len("OOD set"), *(len(name) for name, _ in rows))
    header = f"{'OOD set':<{width}}  " + "  ".join(f"{COLUMN_TITLES[m]:>12}" for m in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for name, metrics in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{100 * metrics[m]:>12.2f}" for m in METRIC_NAMES))
    return "\n".join(lines)


def markdown_table(evaluation: Evaluation) -> str:
    rows = table_rows(evaluation)
    lines = [
        "| OOD set | " + " | ".join(COLUMN_TITLES[m] for m in METRIC_NAMES) + " |",
        "|---|" + "---:|" * len(METRIC_NAMES),
    ]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * metrics[m]:.2f}" for m in METRIC_NAMES) + " |")
    return "\n".join(lines)


def metrics_document(evaluation: Evaluation) -> dict[str, Any]:
    """Everything needed to reproduce and audit a run, as plain JSON types."""
    sets = {evaluation.id_set.name: evaluation.id_set, **{s.name: s for s in evaluation.ood_sets}}
    return {
        **evaluation.info,
        "metric_units": "fractions in [0, 1]; fpr95 = OOD accepted at 95% ID recall (ID positive); "
        "fpr95_ood = ID rejected at 95% OOD recall (OOD positive)",
        "id_set": {"name": evaluation.id_set.name, "n": len(evaluation.id_scores)},
        "ood": {name: r.as_dict() for name, r in evaluation.results.items()},
        "average": evaluation.average(),
        "whole_stream": evaluation.whole.as_dict() if evaluation.whole is not None else None,
        "threshold_95_id_recall": {
            name: threshold_at_id_recall(evaluation.id_scores_for(name)) for name in evaluation.results
        },
        "skipped_files": summarise_skipped(sets),
        "n_skipped": sum(len(s.skipped) for s in sets.values()),
    }


def write_scores_csv(evaluation: Evaluation, path: Path) -> None:
    """One row per sample and stream: set, stream, whether it is ID, its id (path), its score.

    ``stream`` names the stream that produced the score: the OOD set's own ``ID ∪ OOD`` stream
    (or segment, ``--stream per-set|sequential``) or ``mixed``; static methods score ID once, so
    their ID rows have an empty ``stream``.
    """
    id_set = evaluation.id_set
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["set", "stream", "is_id", "sample", "score"])

        def rows(name: str, stream: str, is_id: int, samples: list[str], scores: np.ndarray) -> None:
            writer.writerows([name, stream, is_id, s, f"{v:.8g}"] for s, v in zip(samples, scores, strict=False))

        if evaluation.stream_id_scores is None:
            rows(id_set.name, "", 1, id_set.sample_ids, evaluation.id_scores)
        written: set[str] = set()
        for ood in evaluation.ood_sets:
            stream = ""
            if evaluation.stream_id_scores is not None:
                stream = (evaluation.stream_of or {}).get(ood.name, ood.name)
                if stream not in written:  # a mixed stream holds its ID samples once
                    written.add(stream)
                    rows(id_set.name, stream, 1, id_set.sample_ids, evaluation.stream_id_scores[ood.name])
            rows(ood.name, stream, 0, ood.sample_ids, evaluation.ood_scores[ood.name])


def write_results_csv(evaluation: Evaluation, path: Path) -> None:
    """The table in percent, as every table file of negspace (``results.md``, bench's
    ``results.csv``) and the console: the unit is in each column's name."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["ood_set", *(f"{m}_percent" for m in METRIC_NAMES)])
        for name, metrics in table_rows(evaluation):
            writer.writerow([name, *(f"{100 * metrics[m]:.4f}" for m in METRIC_NAMES)])


def md_text(text: str) -> str:
    """``text`` on one Markdown line: line breaks shown as ``\\n``."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def md_code(text: str) -> str:
    """``text`` as an inline code span that survives backticks and line breaks in it."""
    text = md_text(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


STREAM_PROTOCOLS = {
    "per-set": "per-set (the papers' protocol: for each OOD set, ID and that set shuffled into one stream; the "
    "detector starts afresh for each)",
    "sequential": "sequential (the OOD sets one after another, the detector kept between them)",
    "mixed": "mixed (ID and every OOD set shuffled into one stream)",
}


def stream_lines(stream: dict[str, Any] | None) -> list[str]:
    """The protocol a test-time method's numbers depend on (stream, batch size, seed), as
    Markdown list items; none for a static method, which scores every image on its own."""
    if not stream:
        return []
    mode = str(stream.get("mode"))
    protocol = STREAM_PROTOCOLS.get(mode, mode)
    lines = [
        f"- stream protocol: {protocol}, shuffled with seed {stream.get('seed')}",
        (
            f"- batch size: {stream.get('batch_size')} images per update (a test-time method learns from each "
            "batch, so its numbers depend on it)"
        ),
    ]
    if stream.get("stopped_after"):
        lines.append(f"- stopped after the stream of {md_code(stream['stopped_after'])}")
    return lines


def write_results_md(evaluation: Evaluation, path: Path) -> None:
    info = evaluation.info
    lines = [
        f"# negspace eval: {info.get('method', '?')}",
        "",
        f"- model: {md_code(info.get('model', '?'))}",
        f"- ID set: {md_code(evaluation.id_set.name)} ({len(evaluation.id_scores)} samples)",
        f"- seed: {info.get('seed', '?')}",
        *stream_lines(info.get("stream")),
        (
            "- rates in percent; FPR95 (ID+) = OOD accepted at 95% ID recall, "
            "FPR95 (OOD+) = ID rejected at 95% OOD recall"
        ),
        "",
        markdown_table(evaluation),
        "",
    ]
    skipped = summarise_skipped({s.name: s for s in [evaluation.id_set, *evaluation.ood_sets]})
    if skipped:
        lines += ["## Skipped files", ""]
        for name, files in skipped.items():
            lines += [f"- {md_code(name)}: {md_code(f['path'])}: {md_text(f['reason'])}" for f in files]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def plot_histograms(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """One PNG per OOD set: ID and OOD score histograms (image counts) with the 95%-ID-recall
    threshold, all on one x-axis scale (logit or raw, decided once for the method)."""
    written = []
    plt = pyplot()
    logit = logit_axis(
        np.concatenate([evaluation.id_scores_for(name), ood]) for name, ood in evaluation.ood_scores.items()
    )
    for name, ood in evaluation.ood_scores.items():
        fig, ax = plt.subplots(figsize=(6, 4.4), dpi=100)
        score_histogram(
            ax,
            evaluation.id_scores_for(name),
            ood,
            f"ID ({evaluation.id_set.name})",
            f"OOD ({name})",
            bins=50,
            logit=logit,
        )
        ax.set_title(f"{evaluation.info.get('method', '')}: {evaluation.id_set.name} vs {name}")
        fig.tight_layout()
        path = out_dir / f"hist_{name}.png"
        path.write_bytes(png_bytes(fig))
        written.append(path)
    return written


def plot_roc(evaluation: Evaluation, out_dir: Path) -> Path:
    """ROC curves (ID positive, in percent) of every OOD set in one PNG, the legend under the axes
    naming the curves that coincide."""
    fig, ax = pyplot().subplots(figsize=(5, 6), dpi=100)
    curves = {name: (evaluation.id_scores_for(name), ood) for name, ood in evaluation.ood_scores.items()}
    roc_panel(ax, curves, {name: f"{name} ({100 * evaluation.results[name].auroc:.1f})" for name in curves})
    ax.set_title(f"ROC: {evaluation.info.get('method', '')}, ID = {evaluation.id_set.name}")
    fig.tight_layout()
    path = out_dir / "roc.png"
    path.write_bytes(png_bytes(fig))
    return path


def write_report(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write every output file of ``negspace eval`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(to_json(metrics_document(evaluation), indent=2), encoding="utf-8")
    written = [metrics_path, out_dir / "results.md", out_dir / "results.csv", out_dir / "scores.csv"]
    write_results_md(evaluation, written[1])
    write_results_csv(evaluation, written[2])
    write_scores_csv(evaluation, written[3])
    written += plot_histograms(evaluation, out_dir)
    written.append(plot_roc(evaluation, out_dir))
    # the run's other files in the folder (ANTS's explanations.csv, written by its recorder)
    written += sorted(
        {path for pattern in EVAL_OUTPUTS for path in out_dir.glob(pattern) if path.is_file()} - set(written)
    )
    log.info("wrote %d files to %s", len(written), out_dir)
    return written
