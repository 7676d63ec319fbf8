"""Paper benchmarks: suites as data, published numbers, the comparison, the report, and
:func:`run_suite` (what ``negspace bench`` does, from Python)."""

from __future__ import annotations

import importlib

# The runner loads the detectors and the model code: on first use, so that the suites' data
# (`negspace bench --list`, the command line's choices) stays cheap to import.
_LAZY = {
    "BenchConfig": "negspace.bench.runner",
    "SuiteResult": "negspace.bench.runner",
    "run_suite": "negspace.bench.runner",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'negspace.bench' has no attribute {name!r}")


__all__ = ["BenchConfig", "SuiteResult", "run_suite"]
