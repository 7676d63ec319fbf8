"""The banks that change at test time (ENS and VSNL), stacked so that one GEMM scores a batch
against both, each bank already in the group order of docs/methods/core.md.

A bank of ``n`` rows is stored as its group order (``changing_bank_groups``) followed by the
``n mod G`` rows the grouping leaves out, so the first ``kept`` columns of its block of the
product are the ``G`` groups side by side (a reshape, not an index copy) and the whole block is
still every row of the bank (for the rules that need all of them in bank order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from negspace.backend import Backend, to_numpy

Grouping = Callable[[int], tuple[np.ndarray, int]]  # bank rows -> (group order, group count)


@dataclass(frozen=True)
class BankBlock:
    """Where one bank sits in the stacked matrix, and how it is grouped."""

    start: int
    size: int
    groups: int
    kept: int  # the first ``kept`` columns of the block are the groups, in group order
    to_bank_order: np.ndarray | None  # block columns of bank rows 0..n-1; None: already in bank order
    rows: np.ndarray  # the bank row of each block column


class StackedBanks:
    """ENS and VSNL features in one ``(n_ens + n_vsnl, D)`` matrix, each in group order.

    ``sources`` holds the bank arrays the stack was built from: the detector rebuilds the stack
    when its state holds different arrays (the state replaces a bank's array on every change).
    """

    def __init__(self, banks: dict[str, np.ndarray], grouping: Grouping, backend: Backend | None = None) -> None:
        self.backend = backend or Backend()
        self.sources = dict(banks)
        self.blocks: dict[str, BankBlock] = {}
        parts, start = [], 0
        for name, bank in banks.items():
            n = len(bank)
            if n == 0:
                continue
            order, groups = grouping(n)
            kept = len(order)
            columns = np.concatenate([order, np.arange(kept, n)])
            to_bank_order = None if np.array_equal(columns, np.arange(n)) else np.argsort(columns)
            self.blocks[name] = BankBlock(start, n, groups, kept, to_bank_order, columns)
            parts.append(bank[columns])
            start += n
        dim = next(iter(banks.values())).shape[1] if banks else 0
        self.matrix = self.backend.asarray(np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))

    def built_from(self, banks: dict[str, np.ndarray]) -> bool:
        """Whether ``banks`` are the very arrays this stack was built from."""
        return banks.keys() == self.sources.keys() and all(banks[k] is self.sources[k] for k in banks)

    def cosines(self, image: Any) -> Any:
        """``(B, n_ens + n_vsnl)`` cosines of unit image rows (on the backend) to every stacked row."""
        return image @ self.matrix.T

    def grouped_score(self, product: Any, name: str, id_cos: Any, tau: float, id_lse: Any = None) -> np.ndarray:
        """``S(v; bank)`` with the bank's grouping (docs/methods/core.md), from the stacked product
        (NumPy float64)."""
        block = self.blocks[name]
        grouped = product[:, block.start : block.start + block.kept]
        return self._score_groups(grouped, block.groups, id_cos, tau, id_lse)

    def score_one(self, image: Any, name: str, id_cos: Any, tau: float) -> np.ndarray:
        """``S(v; bank)`` of one bank alone: a GEMM against its grouped rows only."""
        block = self.blocks[name]
        grouped = image @ self.matrix[block.start : block.start + block.kept].T
        return self._score_groups(grouped, block.groups, id_cos, tau, None)

    def in_bank_order(self, product: Any, name: str) -> np.ndarray:
        """The ``(B, n)`` cosines of one bank with its columns in bank order, as NumPy float32."""
        block = self.blocks[name]
        columns = to_numpy(product[:, block.start : block.start + block.size], np.float32)
        return columns if block.to_bank_order is None else columns[:, block.to_bank_order]

    def block_cosines(self, product: Any, name: str) -> Any:
        """One bank's columns of the stacked product (its :attr:`BankBlock.rows` say which row each is)."""
        block = self.blocks[name]
        return product[:, block.start : block.start + block.size]

    def _score_groups(self, grouped: Any, groups: int, id_cos: Any, tau: float, id_lse: Any) -> np.ndarray:
        ops = self.backend.ops
        if groups == 1:
            return to_numpy(ops.id_mass(id_cos, grouped, tau, id_lse=id_lse))
        return to_numpy(ops.grouped_id_mass(id_cos, grouped, groups, tau, id_lse=id_lse))
