"""Short ``repr()`` of results, configs and detectors: a notebook cell shows shapes, counts and
names, never whole arrays or label lists."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

ConfigClass = TypeVar("ConfigClass", bound=type)

MAX_ITEMS = 4  # a sequence or mapping longer than this is shown by its size
MAX_TEXT = 60  # characters of a string or an unknown object's repr
MAX_DEPTH = 2  # nested containers deeper than this are shown by their size


def short(value: Any, depth: int = 0) -> str:
    """A one-line, bounded rendering of ``value``: arrays by shape and dtype, long sequences and
    mappings by their length, long strings cut."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # a NumPy array or a torch tensor
        return f"array(shape={tuple(shape)}, dtype={value.dtype})"
    if isinstance(value, str):
        return repr(value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…")
    if isinstance(value, (bool, int, float, type(None))):
        return repr(value)
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS or depth >= MAX_DEPTH:
            return f"<{len(value)} entries>"
        return "{" + ", ".join(f"{short(k, depth + 1)}: {short(v, depth + 1)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        if len(value) > MAX_ITEMS or depth >= MAX_DEPTH:
            return f"<{len(value)} {type(value).__name__} items>"
        inner = ", ".join(short(item, depth + 1) for item in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value).__name__ + "(…)" if depth >= MAX_DEPTH else fields_repr(value, depth=depth + 1)
    text = repr(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def fields_repr(obj: Any, names: Iterable[str] | None = None, depth: int = 0) -> str:
    """``Type(field=value, ...)`` of a dataclass's fields (or ``names``), each value :func:`short`."""
    if names is None:
        names = [f.name for f in dataclasses.fields(obj) if f.repr]
    return f"{type(obj).__name__}(" + ", ".join(f"{name}={short(getattr(obj, name), depth)}" for name in names) + ")"


def params_repr(type_name: str, params: Mapping[str, Any]) -> str:
    """``Type(key=value, ...)`` of a parameter mapping, each value :func:`short`."""
    return f"{type_name}(" + ", ".join(f"{key}={short(value)}" for key, value in params.items()) + ")"


def changed_fields(config: Any) -> dict[str, Any]:
    """The fields of a config dataclass that differ from their defaults (scikit-learn prints a
    model this way): what makes this config this one."""
    changed = {}
    for f in dataclasses.fields(config):
        if not f.repr:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING  # a required field: always shown
        value = getattr(config, f.name)
        if default is dataclasses.MISSING or not _equal(value, default):
            changed[f.name] = value
    return changed


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. arrays: compared elementwise, no single truth
        return a is b


def config_repr(config: Any) -> str:
    """``Type(field=value, ...)`` with only the fields that differ from the defaults; the text
    still builds the same config when evaluated, and the paper's defaults read as ``Type()``."""
    return params_repr(type(config).__name__, changed_fields(config))


def with_config_repr(cls: ConfigClass) -> ConfigClass:
    """Class decorator (above ``@dataclass``): the config's repr shows only what differs from its
    defaults (:func:`config_repr`)."""
    cls.__repr__ = config_repr  # type: ignore[assignment]  # replacing it is what the decorator is for
    return cls
