"""Benchmark suites: each a small declarative spec in package data (``suites/NAME.json``).

A suite names the papers' tables it reproduces, the FPR95 convention those tables use (and the
tables that use the other one), the protocol of their test-time results (stream, batch size,
shots), and one or more *runs*: an ID set with its class list against OOD sets, each set with the folder layout it
is read from (under ``--data-root``), the file count expected, the name the tables give it and
where it is published. Averages are named groups of OOD sets (all of them, or OpenOOD's near and
far groups). Nothing here downloads data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

# folder: every image below a folder; openood: an OpenOOD image list and its root; stem-list: a
# split file whose lines start with an image's path stem (Food-101 meta/test.txt, Oxford-IIIT Pet
# annotations/test.txt) under a root; cub: the test half of CUB_200_2011 (images.txt and
# train_test_split.txt).
FORMATS = ("folder", "openood", "stem-list", "cub")
CLASS_FORMATS = ("lines", "cub", "cars-mat")
FPR95_CONVENTIONS = ("fpr95", "fpr95_ood")


@dataclass(frozen=True)
class SetSpec:
    """One image set of a run, as found under the data root."""

    name: str  # folder-safe name used in results, e.g. "inaturalist"
    published_as: str  # the tables' name, e.g. "iNaturalist"
    path: str  # a folder ("folder", "cub") or a list file ("openood", "stem-list"), under --data-root
    count: int  # images expected
    format: str = "folder"
    root: str = ""  # "openood", "stem-list": the folder the list's paths are relative to
    pattern: str = "{}.jpg"  # "stem-list": an image's path from its stem
    group: str = ""  # "near" or "far" in OpenOOD's split, else ""
    about: str = ""  # where the set is published

    def layout(self) -> str:
        """The expected location, in words."""
        if self.format == "openood":
            return f"{self.path} (OpenOOD list, paths under {self.root}/)"
        if self.format == "stem-list":
            return f"{self.path} (split list, images {self.root}/{self.pattern.format('STEM')})"
        if self.format == "cub":
            return f"{self.path}/ (CUB_200_2011: images/, images.txt, train_test_split.txt; the test half)"
        return f"{self.path}/"


@dataclass(frozen=True)
class ClassSpec:
    """A run's class list: a built-in list, or a file of the dataset under --data-root."""

    builtin: str = ""  # e.g. "imagenet", "imagenet-a" (negspace.classnames.BUILTIN_CLASS_LISTS)
    file: str = ""  # e.g. "food-101/meta/classes.txt"
    format: str = "lines"  # how to read ``file``: lines, cub (classes.txt), cars-mat (devkit)
    about: str = ""

    def describe(self) -> str:
        return self.builtin if self.builtin else f"{self.file} ({self.format})"


@dataclass(frozen=True)
class Average:
    """A named mean over the OOD sets of a group ("" = every OOD set), as the tables report it."""

    name: str
    group: str = ""


@dataclass(frozen=True)
class RunSpec:
    """One ID set and its class list against its OOD sets."""

    name: str
    id: SetSpec
    classes: ClassSpec
    ood: tuple[SetSpec, ...]
    averages: tuple[Average, ...] = ()
    train: str = ""  # the ID training split, a folder of class folders under --data-root (few-shot methods)

    def average_members(self, average: Average) -> list[SetSpec]:
        return [s for s in self.ood if not average.group or s.group == average.group]


@dataclass(frozen=True)
class Protocol:
    """How the published results of the test-time methods were produced.

    ``stream="per-set"``: for each OOD set, one stream of the ID set and that OOD set shuffled
    together, scored in batches of ``batch_size``, the detector's state reset between OOD sets;
    the few-shot methods draw ``shots`` labelled ID images per class.
    """

    batch_size: int = 256
    stream: str = "per-set"
    shots: int = 16
    about: str = ""  # where these facts come from


@dataclass(frozen=True)
class Suite:
    """A paper benchmark: its runs, the tables it reproduces and their FPR95 convention."""

    name: str
    title: str
    tables: tuple[str, ...]  # published tables compared, "SOURCE/TABLE", e.g. "ANTS paper/Table 1"
    fpr95: str  # "fpr95_ood" (FPR of ID at 95% OOD recall) or "fpr95" (FPR of OOD at 95% ID recall)
    runs: tuple[RunSpec, ...]
    notes: str = ""
    protocol: Protocol = Protocol()
    # (table, convention) for the tables whose FPR95 is not ``fpr95`` (e.g. a README taking ID as positive)
    table_fpr95: tuple[tuple[str, str], ...] = ()

    def fpr95_of(self, table: str) -> str:
        """The FPR95 convention of a published table ("SOURCE/TABLE")."""
        return dict(self.table_fpr95).get(table, self.fpr95)

    def all_sets(self) -> list[SetSpec]:
        """Every set of every run, once each (runs may share OOD sets)."""
        seen: dict[tuple[str, str], SetSpec] = {}
        for run in self.runs:
            for spec in (run.id, *run.ood):
                seen.setdefault((spec.path, spec.root), spec)
        return list(seen.values())


def suite_names() -> list[str]:
    """The suites shipped with negspace, sorted."""
    folder = resources.files("negspace.bench") / "suites"
    return sorted(item.name[: -len(".json")] for item in folder.iterdir() if item.name.endswith(".json"))


def load_suite(name: str) -> Suite:
    """The suite ``name`` from package data.

    Raises:
        ValueError: no such suite (the message lists the known ones), or a malformed spec.
    """
    names = suite_names()
    if name not in names:
        raise ValueError(f"unknown suite {name!r}; the suites are {', '.join(names)}")
    return parse_suite(_suite_doc(name))


def _suite_doc(name: str) -> dict:
    return json.loads((resources.files("negspace.bench") / "suites" / f"{name}.json").read_text(encoding="utf-8"))


def parse_suite(doc: dict) -> Suite:
    """A :class:`Suite` from its JSON document (checked: formats, conventions, names).

    ``"sets"`` defines sets that runs name by key; ``"sets_from"`` takes them from another suite.
    """
    shared_docs = dict(_suite_doc(doc["sets_from"]).get("sets", {})) if "sets_from" in doc else {}
    shared_docs.update(doc.get("sets", {}))
    shared = {key: _set(value) for key, value in shared_docs.items()}

    def resolve(item: str | dict) -> SetSpec:
        return shared[item] if isinstance(item, str) else _set(item)

    runs = []
    for run in doc["runs"]:
        averages = tuple(Average(a["name"], a.get("group", "")) for a in run.get("averages", doc.get("averages", [])))
        classes = run["classes"]
        spec = ClassSpec(builtin=classes) if isinstance(classes, str) else ClassSpec(**classes)
        if spec.format not in CLASS_FORMATS:
            raise ValueError(f"run {run['name']}: class list format must be one of {CLASS_FORMATS}")
        runs.append(
            RunSpec(
                run["name"],
                resolve(run["id"]),
                spec,
                tuple(resolve(item) for item in run["ood"]),
                averages,
                run.get("train", ""),
            )
        )
    protocol = Protocol(**doc.get("protocol", {}))
    table_fpr95 = tuple(doc.get("fpr95_of_tables", {}).items())
    suite = Suite(
        doc["name"],
        doc["title"],
        tuple(doc["tables"]),
        doc["fpr95"],
        tuple(runs),
        doc.get("notes", ""),
        protocol,
        table_fpr95,
    )
    for convention in (suite.fpr95, *(c for _, c in table_fpr95)):
        if convention not in FPR95_CONVENTIONS:
            raise ValueError(f"suite {suite.name}: fpr95 must be one of {FPR95_CONVENTIONS}, got {convention!r}")
    unknown = [table for table, _ in table_fpr95 if table not in suite.tables]
    if unknown:
        raise ValueError(f"suite {suite.name}: fpr95_of_tables names tables it does not compare with: {unknown}")
    if protocol.batch_size < 1 or protocol.shots < 1 or protocol.stream != "per-set":
        raise ValueError(f"suite {suite.name}: protocol needs a positive batch_size and shots, stream 'per-set'")
    for run in suite.runs:
        names = [s.name for s in run.ood]
        if len(set(names)) != len(names) or run.id.name in names:
            raise ValueError(f"suite {suite.name}, run {run.name}: set names must be unique")
    return suite


def _set(doc: dict) -> SetSpec:
    spec = SetSpec(**doc)
    if spec.format not in FORMATS:
        raise ValueError(f"set {spec.name}: format must be one of {FORMATS}, got {spec.format!r}")
    if spec.format in ("openood", "stem-list") and not spec.root:
        raise ValueError(f"set {spec.name}: a {spec.format} set needs its image root")
    return spec
