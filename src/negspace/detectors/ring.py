"""A fixed-size FIFO of rows: the bounded memory of the test-time detectors."""

from __future__ import annotations

from typing import Any

import numpy as np


class RingBuffer:
    """A fixed-size FIFO of rows (a numpy array, never a growing list).

    ``push`` writes rows over the oldest ones; ``rows()`` gives the filled rows (in storage
    order, which is all that means and thresholds need).
    """

    def __init__(self, capacity: int, width: int | None, dtype: Any) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        shape = (capacity,) if width is None else (capacity, width)
        self.data = np.zeros(shape, dtype=dtype)
        self.count = 0
        self.head = 0

    @property
    def capacity(self) -> int:
        return len(self.data)

    def push(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n == 0:
            return
        keep = min(n, self.capacity)
        index = (self.head + np.arange(n - keep, n)) % self.capacity
        self.data[index] = rows[n - keep :]
        self.head = int((self.head + n) % self.capacity)
        self.count = min(self.count + n, self.capacity)

    def rows(self) -> np.ndarray:
        return self.data[: self.count]

    def mean(self) -> np.ndarray:
        return self.rows().mean(axis=0, dtype=np.float64)
