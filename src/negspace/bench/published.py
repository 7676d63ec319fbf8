"""The published numbers the suites are compared with (``data/published.csv``, see PROVENANCE.txt)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

# negspace's method names -> the tables' names
PUBLISHED_NAMES = {"mcm": "MCM", "neglabel": "NegLabel", "csp": "CSP", "negrefine": "NegRefine", "tanl": "TANL",
                   "adaneg": "AdaNeg", "ants": "ANTS", "interneg": "InterNeg", "tins": "TINS"}


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
    return tuple(PublishedValue(**{**row, "value": float(row["value"])}) for row in rows)


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
