"""The published numbers the suites are compared with (``data/published.csv``, see PROVENANCE.txt),
and the backbones those numbers were measured with (:data:`BACKBONES`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# negspace's method names -> the tables' names
PUBLISHED_NAMES = {
    "mcm": "MCM",
    "neglabel": "NegLabel",
    "csp": "CSP",
    "negrefine": "NegRefine",
    "tanl": "TANL",
    "adaneg": "AdaNeg",
    "ants": "ANTS",
    "interneg": "InterNeg",
    "tins": "TINS",
}


@dataclass(frozen=True)
class Backbone:
    """A backbone named in ``published.csv``, and how a run is recognised as using it.

    A run uses it when its model spec loads these weights from a hub (``hub_specs``, normalised by
    :func:`normalise_spec`), or when a local checkpoint file whose SHA-256 is one of ``sha256`` is
    loaded under one of ``file_specs`` (the specs that run that file as published, e.g. with
    QuickGELU). Any other local file is unverified, so not this backbone.
    """

    name: str  # as published.csv writes it
    weights: str  # the pretrained weights, in words
    hub_specs: tuple[str, ...]
    file_specs: tuple[str, ...]
    sha256: tuple[str, ...]
    source: str  # where the checksums and specs come from


BACKBONES = {
    "CLIP ViT-B/16": Backbone(
        "CLIP ViT-B/16",
        "OpenAI's CLIP weights",
        hub_specs=(
            "openclip:vit-b-16/openai",
            "openclip:vit-b-16-quickgelu/openai",
            "openclip:hf-hub:timm/vit_base_patch16_clip_224.openai",
            "hf:openai/clip-vit-base-patch16",
        ),
        file_specs=("openclip:vit-b-16/openai", "openclip:vit-b-16-quickgelu/openai", "openclip:vit-b-16-quickgelu"),
        sha256=("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",),
        source="OpenAI's release ViT-B-16.pt: its download URL's folder is the file's SHA-256, which openai/CLIP "
        "(clip/clip.py, _MODELS and _download) and open_clip (pretrained.py, the openai tag of ViT-B-16) "
        "check after downloading; open_clip's hub copy (timm/vit_base_patch16_clip_224.openai) and "
        "transformers' openai/clip-vit-base-patch16 are the same weights converted, known by name only",
    ),
}


def normalise_spec(spec: str) -> str:
    """A model spec in the form :data:`BACKBONES` lists: lower case, ``openclip:ARCH/TAG`` with the
    architecture's slashes as dashes (``ViT-B/16`` is ``vit-b-16``) and no tag for ``none``."""
    spec = spec.strip()
    if not spec.lower().startswith("openclip:"):
        return spec.lower()
    rest = spec[len("openclip:") :].strip()
    # split as negspace.encoders reads the spec: ARCH/TAG, the tag after the last slash
    if rest.lower().startswith(("hf-hub:", "local-dir:")) or rest.lower().endswith(".json"):
        arch, tag = rest, ""
    else:
        arch, _, tag = rest.rpartition("/") if "/" in rest else (rest, "", "")
    if tag.strip().lower() in ("", "none", "null", "random"):
        tag = ""
    if not arch.lower().startswith(("hf-hub:", "local-dir:")) and not arch.lower().endswith(".json"):
        arch = arch.replace("/", "-")
    name = arch.strip().lower()
    return f"openclip:{name}/{tag.strip().lower()}" if tag else f"openclip:{name}"


@dataclass(frozen=True)
class PublishedValue:
    """One published cell: a method's metric on one OOD set (or average) of one ID set."""

    source: str
    table: str
    backbone: str
    id_set: str
    ood_set: str
    group: str
    method: str
    metric: str  # "FPR95" or "AUROC", in percent
    value: float
    note: str = ""


@cache
def published_values() -> tuple[PublishedValue, ...]:
    """Every published cell shipped with negspace."""
    text = (resources.files("negspace.bench") / "data" / "published.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text))
    fields: list[dict[str, Any]] = [{**row, "value": float(row["value"])} for row in rows]
    return tuple(PublishedValue(**cell) for cell in fields)


def published_for(tables: Sequence[str], id_set: str) -> list[PublishedValue]:
    """The cells of ``tables`` ("SOURCE/TABLE", e.g. "ANTS paper/Table 1") for ``id_set``; where
    two tables hold the same cell (Table 5 repeats Table 1), the first table listed wins."""
    chosen: dict[tuple[str, str, str], PublishedValue] = {}
    for entry in tables:
        source, _, table = entry.rpartition("/")
        for value in published_values():
            if value.source == source and value.table == table and value.id_set == id_set:
                chosen.setdefault((value.ood_set, value.method, value.metric), value)
    return list(chosen.values())


def published_methods(values: Sequence[PublishedValue]) -> list[str]:
    """The methods of ``values`` in first-seen order (the tables' row order)."""
    return list(dict.fromkeys(v.method for v in values))
