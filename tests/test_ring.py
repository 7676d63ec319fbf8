"""RingBuffer: FIFO order over wraps, and the running column sums TANL reads its queue means from."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from negspace.detectors import ring
from negspace.detectors.ring import RingBuffer

pytestmark = pytest.mark.numerics  # run again under other BLAS kernels in CI (.ci/run)


@pytest.mark.parametrize("track_sum", [False, True])
def test_ring_keeps_the_newest_rows_like_a_deque(track_sum):
    rng = np.random.default_rng(0)
    buffer = RingBuffer(7, 3, np.float32, track_sum=track_sum)
    reference: deque[np.ndarray] = deque(maxlen=7)
    for size in [2, 0, 5, 1, 7, 9, 3, 4, 6, 13, 1]:  # pushes that fit, wrap, fill exactly and overflow
        rows = rng.random((size, 3), dtype=np.float32)
        buffer.push(rows)
        reference.extend(rows)
        assert buffer.count == len(reference)
        # storage order is rotated by head once full; as a multiset the rows are the deque's
        got = buffer.rows()[np.lexsort(buffer.rows().T)]
        want = np.array(reference)[np.lexsort(np.array(reference).T)]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(buffer.mean(), np.mean(reference, axis=0, dtype=np.float64), rtol=1e-6)


def test_running_sum_is_rebuilt_after_many_turns(monkeypatch):
    monkeypatch.setattr(ring, "RESYNC_TURNS", 2)
    buffer = RingBuffer(4, 2, np.float32, track_sum=True)
    buffer.push(np.ones((4, 2), np.float32))
    buffer._sum += 5.0  # a drifted sum ...
    buffer.push(np.ones((3, 2), np.float32))
    assert buffer.mean()[0] != pytest.approx(1.0)
    buffer.push(np.ones((1, 2), np.float32))  # ... is replaced by the exact one after 2 turns (8 rows)
    np.testing.assert_array_equal(buffer.mean(), [1.0, 1.0])


def test_caller_given_sum_is_used_and_empty_mean_is_zero():
    buffer = RingBuffer(3, 2, np.float32, track_sum=True)
    np.testing.assert_array_equal(buffer.mean(), [0.0, 0.0])
    rows = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    buffer.push(rows, rows_sum=np.array([4.0, 6.0]))
    np.testing.assert_array_equal(buffer.mean(), [2.0, 3.0])
