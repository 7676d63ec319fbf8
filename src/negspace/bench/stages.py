"""Wall time per stage of a benchmark run (what ``metrics.json`` reports as ``seconds_per_stage``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageTimes:
    """Seconds per named stage, summed over every time the stage ran, in first-seen order."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)  # when the run began

    def elapsed(self) -> float:
        """Wall seconds since the run began."""
        return time.perf_counter() - self.started

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def add_all(self, seconds: Mapping[str, float]) -> None:
        for stage, value in seconds.items():
            self.add(stage, value)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``stage`` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.seconds.items()}

    def summary(self, largest: int = 3) -> str:
        """The total and the ``largest`` stages, e.g. ``"95 s in all; csp: building 44 s, ..."``."""
        total = sum(self.seconds.values())
        top = sorted(self.seconds.items(), key=lambda item: -item[1])[:largest]
        return f"{total:.0f} s in all; most in " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in top)
