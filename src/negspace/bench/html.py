"""``report.html``: one self-contained page (no network: styles inline, pictures as data URIs)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape

from negspace.bench.compare import LOWER_IS_BETTER, METRICS, UNIT, RunComparison, row_kinds


@dataclass(frozen=True)
class ExplainedImage:
    """One of the most OOD-looking images of a stream, with the texts that pulled it there."""

    sample: str
    score: float
    thumbnail: bytes | None
    texts: tuple[tuple[str, str, float], ...]  # (negative text, bank, weight)
    truth: str = ""  # "ID" or "OOD": which set the image is from
    set_name: str = ""  # that set's name as the tables print it


@dataclass
class RunPage:
    """What the page shows for one run of the suite."""

    comparison: RunComparison
    roc_png: bytes
    histogram_pngs: dict[str, bytes] = field(default_factory=dict)  # method -> PNG
    lam_png: bytes | None = None
    galleries: dict[str, list[ExplainedImage]] = field(default_factory=dict)  # OOD set -> images
    notes: list[str] = field(default_factory=list)
    stopped: str | None = None  # the ANTS stream whose MLLM failures stopped it


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
  margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{margin-top:1.4em}
table.cmp{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
table.cmp th,table.cmp td{border:1px solid #ddd;padding:3px 6px;text-align:right}
table.cmp td.m,table.cmp th.m{text-align:left}
table.cmp caption{caption-side:top;text-align:left;color:#555;padding:2px 0}td.bb{font-size:0.85em;color:#555}
.banner ul,#comparison ul{font-weight:400;margin:0.3em 0 0 1.2em;padding:0}
tr.ours td{font-weight:600}tr.pub td{color:#555}tr.delta td{color:#777;font-size:0.9em}
td.better{color:#176317}td.worse{color:#a11}
.facts td{padding:2px 10px 2px 0;vertical-align:top}
.note{background:#fff6d5;border:1px solid #e8d48a;padding:0.5em 1em;margin:1em 0}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.banner{background:#fde2e1;border:2px solid #c0392b;padding:0.6em 1em;margin:1em 0;font-weight:600}
#notes ul{margin:0.3em 0 0 1.2em;padding:0}#notes li{margin:0.2em 0}
.card{width:220px;border:1px solid #ddd;padding:6px;font-size:0.78em}
.card.id{border:2px solid #d35400}.card.ood{border:2px solid #2471a3}
.mark{display:inline-block;font-weight:700;padding:0 5px;border-radius:3px;color:#fff;margin-bottom:3px}
.mark.id{background:#d35400}.mark.ood{background:#2471a3}
.card img{max-width:208px;max-height:160px;display:block;margin:0 auto 4px}
.card ol{margin:4px 0 0 1.2em;padding:0}
img.fig{max-width:100%;display:block}
p.caption{font-size:0.9em;color:#444;max-width:60em;margin:0.3em 0 0.6em}
"""


_ROC_CAPTION = (
    "<p class='caption'>One panel per OOD set: the share of ID images accepted (true positive rate, "
    "%) against the share of OOD images accepted (false positive rate, %) as the threshold moves, ID "
    "positive. The dashed line marks 95% of ID accepted; the dotted diagonal is chance. "
    "Each method has its own colour, dash pattern and marker; the legend under each panel gives "
    "its AUROC in percent and names the curves that coincide (drawn one over the other).</p>"
)
_HISTOGRAM_CAPTION = (
    "<p class='caption'>One picture per method, one panel per OOD set: how many ID and OOD images "
    "(image counts) received each score, higher meaning more in-distribution. The dashed line is "
    "the threshold that keeps 95% of the ID images. A method whose scores pile up at 0 and 1 is "
    "drawn on the logit scale, log(s / (1 − s)), in all its panels, so its panels share one "
    "axis.</p>"
)
_LAM_CAPTION = (
    "<p class='caption'>ANTS's weight of its negative space from the images (ENS) after each batch, "
    "0 to 1, against the number of images of the stream seen so far; one line per stream.</p>"
)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def comparison_table(comparison: RunComparison, our_backbone: str = "") -> str:
    """The side-by-side table, in percent: per method ``ours``, ``published`` (with its backbone)
    and ``Δ`` where compared; a Δ is green when we do better than published (lower FPR95, higher
    AUROC). A published row none of whose cells is compared reads ``published (reference)``."""
    head = [
        (
            f"<caption>Values in percent ({UNIT}); Δ = ours − published, only where the two are compared."
            "</caption><tr><th class='m' rowspan='2'>method</th><th class='m' rowspan='2'></th>"
            "<th class='m' rowspan='2'>backbone</th>"
        )
    ]
    head += [f"<th colspan='{len(METRICS)}'>{escape(column)}</th>" for column in comparison.columns]
    head.append("</tr><tr>")
    head += [f"<th>{m} ({UNIT}){'↓' if LOWER_IS_BETTER[m] else '↑'}</th>" for _ in comparison.columns for m in METRICS]
    head.append("</tr>")
    rows = []
    keys = [(column, metric) for column in comparison.columns for metric in METRICS]
    for method in comparison.methods():
        cells = comparison.cells[method]
        kinds = row_kinds(comparison, method)
        for i, label in enumerate(kinds):
            kind = "published" if label.startswith("published") else label
            css = {"ours": "ours", "published": "pub", "Δ": "delta"}[kind]
            backbone = {"ours": our_backbone, "published": comparison.backbone_of(method)}.get(kind, "")
            tds = []
            for key in keys:
                cell = cells[key]
                if kind == "ours":
                    tds.append(f"<td>{_number(cell.ours)}</td>")
                elif kind == "published":
                    title = f" title='{escape(cell.table)}'" if cell.table else ""
                    tds.append(f"<td{title}>{_number(cell.published)}</td>")
                else:
                    diff = cell.difference
                    better = diff is not None and ((diff < 0) == LOWER_IS_BETTER[key[1]]) and diff != 0
                    grade = "" if diff is None or diff == 0 else (" class='better'" if better else " class='worse'")
                    tds.append(f"<td{grade}>{_number(diff, signed=True)}</td>")
            name = f"<td class='m' rowspan='{len(kinds)}'>{escape(method)}</td>" if i == 0 else ""
            rows.append(
                f"<tr class='{css}'>{name}<td class='m'>{label}</td><td class='m bb'>{escape(backbone)}</td>"
                f"{''.join(tds)}</tr>"
            )
    return f"<table class='cmp'>{''.join(head)}{''.join(rows)}</table>"


def _gallery(images: list[ExplainedImage]) -> str:
    cards = []
    for image in images:
        picture = (
            f"<img src='{_data_uri(image.thumbnail, 'image/jpeg')}' alt='{escape(image.sample)}'>"
            if image.thumbnail
            else "<p><em>image not readable</em></p>"
        )
        texts = "".join(
            f"<li>{escape(text)} <small>({escape(source)}, {weight:.2f})</small></li>"
            for text, source, weight in image.texts
        )
        kind = image.truth.lower() if image.truth in ("ID", "OOD") else ""
        mark = f"<span class='mark {kind}'>{escape(image.truth)}</span> {escape(image.set_name)}<br>" if kind else ""
        cards.append(
            f"<div class='card {kind}'>{mark}{picture}<div title='{escape(image.sample)}'>score "
            f"{image.score:.4g}</div><ol>{texts}</ol></div>"
        )
    return f"<div class='gallery'>{''.join(cards)}</div>"


def notes_section(notes: list[str], warnings: list[str]) -> str:
    """What a reader should know about the run: its notes, then every warning it logged."""
    parts = ["<section id='notes'><h2>Notes</h2>"]
    if notes:
        parts.append("<ul class='run-notes'>" + "".join(f"<li>{escape(note)}</li>" for note in notes) + "</ul>")
    if warnings:
        parts.append(
            "<h3>Warnings logged during the run</h3><ul class='warnings'>"
            + "".join(f"<li>{escape(text)}</li>" for text in warnings)
            + "</ul>"
        )
    if not notes and not warnings:
        parts.append("<p>Nothing to note: the run logged no warning.</p>")
    parts.append("</section>")
    return "".join(parts)


def render_report(
    title: str,
    facts: list[tuple[str, str]],
    runs: list[RunPage],
    notes: list[str],
    warnings: list[str] | None = None,
    verdict: list[str] | None = None,
    our_backbone: str = "",
) -> str:
    """The whole page as one HTML string: first whether ours are compared with the published
    numbers (``verdict``: its first line, then each difference that keeps them apart, as
    :func:`negspace.bench.compare.verdict_lines` writes them; a red banner when any), the facts,
    the notes and logged warnings, then per run its table, pictures and ANTS galleries."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>",
    ]
    if verdict:
        css = "banner" if len(verdict) > 1 else "note"
        items = "".join(f"<li>{escape(line.strip())}</li>" for line in verdict[1:])
        parts.append(
            f"<div class='{css}' id='comparison'>{escape(verdict[0])}"
            + (f"<ul class='differences'>{items}</ul>" if items else "")
            + "</div>"
        )
    parts.append(
        "<table class='facts'>"
        + "".join(f"<tr><td><b>{escape(k)}</b></td><td>{escape(v)}</td></tr>" for k, v in facts)
        + "</table>"
    )
    parts.append(notes_section(notes, warnings or []))
    for page in runs:
        run = page.comparison.run
        parts.append(f"<section class='run' id='run-{escape(run.name)}'><h2>ID: {escape(run.id.published_as)}</h2>")
        parts += [f"<div class='note'>{escape(note)}</div>" for note in page.notes]
        parts.append(comparison_table(page.comparison, our_backbone))
        parts.append(
            f"<h3>ROC curves</h3>{_ROC_CAPTION}<img class='fig' alt='ROC curves' "
            f"src='{_data_uri(page.roc_png, 'image/png')}'>"
        )
        parts.append(f"<h3>Score histograms</h3>{_HISTOGRAM_CAPTION}")
        parts += [
            f"<img class='fig' alt='{escape(method)} histograms' src='{_data_uri(png, 'image/png')}'>"
            for method, png in page.histogram_pngs.items()
        ]
        if page.lam_png is not None:
            parts.append(
                f"<h3>ANTS: lam over the stream</h3>{_LAM_CAPTION}"
                f"<img class='fig' alt='lam over the stream' src='{_data_uri(page.lam_png, 'image/png')}'>"
            )
        for ood_set, images in page.galleries.items():
            parts.append(
                f"<h3>ANTS: the most OOD-looking images of the stream of {escape(ood_set)} (ID and "
                f"{escape(ood_set)} images) and the negative texts that pulled them toward OOD</h3>"
                "<p>Each card says which set its image is from: <span class='mark id'>ID</span> or "
                "<span class='mark ood'>OOD</span>. An ID image scored below the threshold line of the "
                "histograms is a false alarm; an OOD image there is a detection.</p>"
            )
            parts.append(_gallery(images))
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)
