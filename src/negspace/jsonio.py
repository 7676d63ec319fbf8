"""JSON that every parser reads: no ``NaN`` or ``Infinity`` (Python's json writes them, JSON has
none). A number that is not finite is written as ``null``, meaning "not a number here"."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NumPy's included) replaced by ``None``, recursively."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.generic):  # NumPy ints and bools as Python's
        return value.item()
    return value


def to_json(value: Any, **options: Any) -> str:
    """Strict JSON text of ``value`` (``json.dumps`` options apply)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **options)
