"""ANTS hyper-parameters (docs/methods/ants.md) and the authors' preset.

:class:`ANTSConfig` holds every constant of the method as a field with the paper's default.
:meth:`ANTSConfig.authors` is the one place that lists what the authors' code
(ZhuWenjie98/ANTS, ``ANTSPostprocessor`` with ``configs/postprocessors/ants.yml``, which produced
the published numbers) does differently; read it to see every rule it changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from negspace.reprs import with_config_repr

MODES = ("ada", "ens", "vsnl", "neglabel")
THRESHOLDS = ("paper", "histogram")
SIMILAR_CLASS_RULES = ("frequency", "history_top40")
DIVERSITY = (None, "kcenter")
LAM_RULES = ("paper", "authors", "crossfit")
ENS_SCORES = ("grouped", "activation")
ENS_TRIGGERS = ("at_least", "more_than")
ENS_ORDERS = ("append", "prepend")
ENS_DEDUPE = ("bank", "update")
DESCRIBE_ORDERS = ("lowest", "stream")
VSNL_CACHES = ("keep", "forget")

_CHOICES = {
    "mode": MODES,
    "threshold": THRESHOLDS,
    "similar_classes": SIMILAR_CLASS_RULES,
    "diversity": DIVERSITY,
    "lam_rule": LAM_RULES,
    "ens_score": ENS_SCORES,
    "ens_trigger": ENS_TRIGGERS,
    "ens_order": ENS_ORDERS,
    "ens_dedupe": ENS_DEDUPE,
    "describe_order": DESCRIBE_ORDERS,
    "vsnl_cache": VSNL_CACHES,
}
_AT_LEAST_ONE = (
    "groups",
    "group_size",
    "ens_size",
    "min_candidates",
    "vsnl_every",
    "vsnl_start",
    "mllm_batch_size",
    "diversity_size",
    "histogram_bins",
    "vsnl_per_class",
    "history_top",
    "max_tokens",
    "lam_sample",
    "balanced_group_size",
    "vsnl_balance_repeats",
    "activation_negatives",
    "activation_step",
    "activation_window",
    "score_history",
)


@with_config_repr
@dataclass(frozen=True)
class ANTSConfig:
    """Hyper-parameters of ANTS; defaults from docs/methods/ants.md (ImageNet-scale streams).

    Scoring: ``S_ada = lam * S_ens + (1 - lam) * S_vsnl`` (``mode="ada"``), or one bank alone.
    ``lam_rule="paper"`` is Eq. 15 with the current banks over a bounded sample of negatives;
    ``"authors"`` the authors' running mean of balanced scores over every sample;
    ``"crossfit"`` an experimental rule (see :func:`negspace.detectors.ants.rules.crossfit_lam`).
    """

    # -- scoring
    tau: float = 0.01
    groups: int = 100  # NegLabel grouping of the corpus bank (fixed count, docs/methods/core.md)
    seed: int = 0
    group_size: int = 100  # target group size of the changing banks (ENS, VSNL; docs/methods/core.md)
    mode: str = "ada"
    lam: float | None = None  # fixed lam (ablations, paper Table 3); None = adaptive
    lam_rule: str = "paper"
    lam_sample: int = 4096  # negatives kept to recompute a, b with the current banks (paper rule)
    balanced_group_size: int = 1000  # authors' lam: group size of the balanced scores
    vsnl_balance_repeats: int = 10  # authors' lam: VSNL labels repeated before grouping
    ens_score: str = "grouped"  # or "activation" (the authors' TANL-style score, docs/methods/ants.md, step 11)
    activation_negatives: int = 1000  # sentences kept by relevance
    activation_step: int = 2  # step of the cumulative score
    activation_gap: float = 0.5  # confidence gap around the two-cluster threshold
    activation_window: int = 20_000  # past ENS scores the threshold is computed from
    # -- negative-image mining (Eq. 5-6)
    gamma0: float = 0.9
    eta: float = 0.5
    threshold: str = "paper"  # or "histogram" (the authors' rule)
    histogram_start: float = 0.8  # histogram rule: initial threshold
    histogram_coarse_width: float = 0.1  # histogram rule: bin width of the jump search
    histogram_bins: int = 1000  # paper rule: fine bins of the score histogram over [0, 1]
    score_history: int = 1_000_000  # histogram rule: newest base scores kept for its percentile
    # -- ENS (Eq. 7-8)
    ens_size: int = 10_000  # M: bank capacity, newest kept
    min_candidates: int = 200  # an ENS update when this many negatives wait ...
    ens_trigger: str = "at_least"  # ... ("at_least") or more than this many ("more_than")
    ens_stop_step: int | None = None  # at most this many ENS updates (None: no limit)
    ens_order: str = "append"  # new sentences after the old ones, or before them ("prepend")
    ens_dedupe: str = "bank"  # drop duplicates of the whole bank, or within one update only
    describe_order: str = "lowest"  # negatives sent lowest S_nl first, or in stream order
    strip_class_names: bool = True  # remove the predicted ID class name from a description
    describe_leftovers: bool = True  # describe the negatives still pooled at the end of a stream
    diversity: str | None = None  # "kcenter": describe a spread subset of each pool
    diversity_size: int = 50  # negatives described per ENS update with diversity
    description_words: int | None = 8  # descriptions cut to this many words (None: kept whole)
    # -- VSNL (Eq. 10-13)
    delta: float = 0.08  # Eq. 10 ratio of ID classes in Y'
    similar_classes: str = "frequency"  # or "history_top40" (the authors' rule)
    history_top: int = 40  # classes kept by the history rule
    vsnl_per_class: int = 5
    vsnl_every: int = 40  # VSNL update period in batches ...
    vsnl_start: int = 10  # ... starting at this batch (1-based)
    vsnl_cache: str = "keep"  # keep answers of classes that leave Y' (bounded by K), or forget them
    # -- running
    two_pass: bool = False
    max_mllm_calls: int | None = 2000  # requests per run (per reset); None: no limit
    mllm_batch_size: int = 64  # requests per generate call
    mllm_lag: int = 0  # 0: a batch is scored after its own updates; >= 1: banks change before batch t + lag
    max_tokens: int = 64

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.mllm_lag < 0:
            raise ValueError(f"mllm_lag must be >= 0, got {self.mllm_lag}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        for name in ("eta", "delta", "gamma0"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.activation_gap <= 1:
            raise ValueError(f"activation_gap must be in [0, 1], got {self.activation_gap}")
        if self.lam is not None and not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be in [0, 1] or None, got {self.lam}")
        for name in ("max_mllm_calls", "ens_stop_step"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {getattr(self, name)}")
        if self.description_words is not None and self.description_words < 1:
            raise ValueError(f"description_words must be at least 1 or None, got {self.description_words}")

    @classmethod
    def authors(cls, **overrides: Any) -> ANTSConfig:
        """The rules of the authors' code (docs/methods/ants.md, step 10), for exact reproduction.

        Every rule it changes, with the authors' behaviour:

        - ``threshold="histogram"``: candidates are ``S_nl`` below a threshold that starts at 0.8
          and is recomputed at each ENS update as ``np.percentile`` of the past scores below the
          bin edge after the largest jump of a 0.1-bin histogram.
        - ``ens_trigger="more_than"``: an ENS update when *more than* 200 candidates wait;
          ``ens_stop_step=20``: at most 20 updates.
        - ``describe_order="stream"``, ``ens_order="prepend"``, ``ens_dedupe="update"``: the
          candidates are described in stream order, the new sentences go before the old ones,
          duplicates are dropped within one update only.
        - ``strip_class_names=False``, ``description_words=None``: descriptions kept as the MLLM
          wrote them (cleaned of spaces and a trailing period).
        - ``describe_leftovers=False``: candidates still pooled at the end are never described.
        - ``similar_classes="history_top40"``, ``vsnl_cache="forget"``: ``Y'`` is the 40 most
          frequent ID predictions over every batch so far (ties: first occurrence), a class that
          leaves ``Y'`` loses its cached answer, the bank follows the cache's insertion order.
        - ``lam_rule="authors"``: ``a``, ``b`` are running means over every sample of the balanced
          scores (group size 1000; VSNL labels repeated 10 times).
        - ``max_mllm_calls=None``: no request budget.

        Any field may be overridden, e.g. the authors' far-OOD script
        ``ANTSConfig.authors(mode="ens", ens_score="activation", ens_stop_step=10,
        activation_negatives=500)`` and their near-OOD script
        ``ANTSConfig.authors(mode="vsnl", ens_stop_step=0, vsnl_start=1)``.
        """
        rules: dict[str, Any] = {
            "threshold": "histogram",
            "ens_trigger": "more_than",
            "ens_stop_step": 20,
            "describe_order": "stream",
            "ens_order": "prepend",
            "ens_dedupe": "update",
            "strip_class_names": False,
            "description_words": None,
            "describe_leftovers": False,
            "similar_classes": "history_top40",
            "vsnl_cache": "forget",
            "lam_rule": "authors",
            "max_mllm_calls": None,
        }
        return cls(**{**rules, **overrides})

    @property
    def uses_ens(self) -> bool:
        return self.mode in ("ada", "ens")

    @property
    def uses_vsnl(self) -> bool:
        return self.mode in ("ada", "vsnl")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ANTSConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
