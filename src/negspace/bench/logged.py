"""The warnings a run logs, kept for its report (the console's lines would otherwise be lost)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Collector(logging.Handler):
    def __init__(self, texts: list[str], limit: int) -> None:
        super().__init__(logging.WARNING)
        self.texts, self.limit = texts, limit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a malformed format: keep what the code wrote
            text = str(record.msg)
        if text not in self.texts and len(self.texts) < self.limit:
            self.texts.append(text)


@contextmanager
def logged_warnings(limit: int = 50) -> Iterator[list[str]]:
    """The warnings (and errors) negspace's loggers emit inside the block, each text once, the
    first ``limit`` of them; the list fills as the block runs."""
    texts: list[str] = []
    handler = _Collector(texts, limit)
    logger = logging.getLogger("negspace")
    logger.addHandler(handler)
    try:
        yield texts
    finally:
        logger.removeHandler(handler)
