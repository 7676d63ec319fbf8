"""The banks that change at test time (ENS and VSNL), stacked so that one GEMM scores a batch
against both, each bank already in its SPEC-1 group order.

A bank of ``n`` rows is stored as its group order (``changing_bank_groups``) followed by the
``n mod G`` rows the grouping leaves out, so the first ``kept`` columns of its block of the
product are the ``G`` groups side by side (a reshape, not an index copy) and the whole block is
still every row of the bank (for the rules that need all of them in bank order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from negspace.scoring import grouped_id_mass, id_mass

Grouping = Callable[[int], tuple[np.ndarray, int]]  # bank rows -> (group order, group count)


@dataclass(frozen=True)
class BankBlock:
    """Where one bank sits in the stacked matrix, and how it is grouped."""

    start: int
    size: int
    groups: int
    kept: int  # the first ``kept`` columns of the block are the groups, in group order
    to_bank_order: np.ndarray | None  # block columns of bank rows 0..n-1; None: already in bank order


class StackedBanks:
    """ENS and VSNL features in one ``(n_ens + n_vsnl, D)`` matrix, each in group order.

    ``sources`` holds the bank arrays the stack was built from: the detector rebuilds the stack
    when its state holds different arrays (the state replaces a bank's array on every change).
    """

    def __init__(self, banks: dict[str, np.ndarray], grouping: Grouping) -> None:
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
            self.blocks[name] = BankBlock(start, n, groups, kept, to_bank_order)
            parts.append(bank[columns])
            start += n
        dim = next(iter(banks.values())).shape[1] if banks else 0
        self.matrix = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)

    def built_from(self, banks: dict[str, np.ndarray]) -> bool:
        """Whether ``banks`` are the very arrays this stack was built from."""
        return banks.keys() == self.sources.keys() and all(banks[k] is self.sources[k] for k in banks)

    def cosines(self, image: np.ndarray) -> np.ndarray:
        """``(B, n_ens + n_vsnl)`` cosines of unit image rows to every stacked row (one GEMM)."""
        return image @ self.matrix.T

    def grouped_score(self, product: np.ndarray, name: str, id_cos: np.ndarray, tau: float,
                      id_lse: np.ndarray | None = None) -> np.ndarray:
        """``S(v; bank)`` with the bank's SPEC-1 grouping, from the stacked product."""
        block = self.blocks[name]
        return _score_groups(product[:, block.start : block.start + block.kept], block.groups, id_cos, tau, id_lse)

    def score_one(self, image: np.ndarray, name: str, id_cos: np.ndarray, tau: float) -> np.ndarray:
        """``S(v; bank)`` of one bank alone: a GEMM against its grouped rows only."""
        block = self.blocks[name]
        grouped = image @ self.matrix[block.start : block.start + block.kept].T
        return _score_groups(grouped, block.groups, id_cos, tau, None)

    def in_bank_order(self, product: np.ndarray, name: str) -> np.ndarray:
        """The ``(B, n)`` cosines of one bank with its columns in bank order."""
        block = self.blocks[name]
        columns = product[:, block.start : block.start + block.size]
        return columns if block.to_bank_order is None else columns[:, block.to_bank_order]


def _score_groups(grouped: np.ndarray, groups: int, id_cos: np.ndarray, tau: float,
                  id_lse: np.ndarray | None) -> np.ndarray:
    if groups == 1:
        return id_mass(id_cos, grouped, tau, id_lse=id_lse)
    return grouped_id_mass(id_cos, grouped, groups, tau, id_lse=id_lse)
