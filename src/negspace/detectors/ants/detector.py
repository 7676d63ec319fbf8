"""ANTS: the adaptive negative textual space (Zhu et al., "ANTS: Shaping the Adaptive Negative
Textual Space by MLLM for OOD Detection"; docs/methods/ants.md).

Over a test stream, ANTS grows two negative banks with a multimodal LLM and fuses their scores::

    S_nl   = NegLabel's grouped score (corpus bank)   (docs/methods/neglabel.md)
    X_neg  = the eta fraction of lowest S_nl among S_nl < gamma0; gamma* = max S_nl over X_neg
    ENS    = MLLM descriptions of negative images ("... Do not include the class name {H(x)}.")
    Y'     = top delta*K ID classes by prediction frequency among negatives
    VSNL   = MLLM "five class names that share visual features with {c}" for c in Y'
    S_ens  = S(v; ENS),  S_vsnl = S(v; VSNL)       (section-1 score, target group size 100)
    lam    = (1 - a) / ((1 - a) + (1 - b)),  a / b = mean S_ens / S_vsnl over the negatives (Eq. 15)
    S_ada  = lam * S_ens + (1 - lam) * S_vsnl          (a missing bank falls back to S_nl)

**Online mode** (the paper): per batch, the base score, the negatives, the ENS and VSNL updates,
then the batch is scored with the **updated** banks and fused (the authors' order,
docs/methods/ants.md, step 9; ``mllm_lag >= 1`` instead lets the MLLM work in the background and changes the banks
before batch ``t + lag``). **Two-pass mode** (``two_pass=True``): :meth:`ANTS.score_stream`
builds the banks from the whole stream first, then scores every image with the final banks.

``lam`` (``lam_rule="paper"``) is Eq. 15 with the banks as they are now, over the newest
``lam_sample`` negatives (their features are kept, and ``a``, ``b`` recomputed whenever a bank
changes), so it moves as the banks fit the stream. ``lam_rule="authors"`` is the authors' running
mean of balanced scores over every sample; :meth:`ANTSConfig.authors` gathers all of the
authors' rules (their code produced the published numbers). ``ens_score="activation"`` is the
authors' activation-aware ENS score (docs/methods/ants.md, step 11).

Choices where the paper leaves room (docs/methods/ants.md is followed otherwise):

- Online mining (``threshold="paper"``): Eq. 5-6 are applied to the whole history, kept as a
  fixed-bin histogram of ``S_nl``: ``gamma*`` is the ``eta`` quantile of all past scores below
  ``gamma0`` (current batch included), and a batch's negatives are its images with
  ``S_nl <= gamma*``. Candidates are always taken below ``gamma0`` (re-applying Eq. 6 below the
  previous ``gamma*`` would shrink it at every update until nothing is left).
- VSNL answers are cached per class (at most ``K`` entries); failed requests are not cached.
- MLLM budget: ``max_mllm_calls`` counts requests sent by this detector since the last
  :meth:`reset` (``mllm_calls_total`` counts across resets); ``None`` = no limit.
- At the end of a stream the negatives still pooled (fewer than ``min_candidates``) are described
  too (``describe_leftovers``), so the saved space wastes no mined negative.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from negspace.backend import resolve_backend, to_numpy
from negspace.detectors.ants import explain as ants_explain
from negspace.detectors.ants.banks import BankBuilder
from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.io import SavedSpace, read_space, save_space
from negspace.detectors.ants.rules import (
    activation_ens_score,
    activation_threshold,
    changing_bank_groups,
    changing_bank_score,
    crossfit_lam,
    exact_paper_negatives,
    frequency_classes,
    fusion_weight,
    histogram_add,
    histogram_threshold,
    paper_threshold,
    scaled_schedule,
    top_counts,
)
from negspace.detectors.ants.scoring import StackedBanks
from negspace.detectors.ants.state import ANTSState
from negspace.detectors.base import (
    LabelledColumns,
    OnlineDetector,
    StreamBatch,
    nearest_texts,
    resolve_config,
)
from negspace.mllm.protocol import MLLM, describe_model
from negspace.scoring import as_unit_rows, group_order
from negspace.templates import ID_TEMPLATE

if TYPE_CHECKING:
    from negspace.corpus.mining import MinedNegatives
    from negspace.detectors.ring import RingBuffer

log = logging.getLogger(__name__)

_CHUNK = 1024  # rows per scoring chunk in two-pass mode (fixed, so results do not depend on batching)

__all__ = ["ANTS", "ANTSConfig", "ANTSState", "TextEncoder", "scaled_schedule"]


class TextEncoder(Protocol):
    """Anything that turns texts into unit rows (e.g. :class:`negspace.encoders.ClipEncoder`)."""

    def encode_texts(self, texts: Sequence[str], template: str = "{}", *, progress: bool = True) -> np.ndarray: ...


_LAM_TRACE_LENGTH = 10_000  # batches of lam history kept for reports


@dataclass
class _Base:
    """What every score of a batch starts from."""

    image: np.ndarray  # unit rows, on the host (pooled, sampled, described)
    id_cos: Any  # (B, K) on the scoring backend
    s_nl: np.ndarray
    pred: np.ndarray
    id_lse: Any  # log Σ_i exp(id_cos_i / τ) on the backend, shared by every bank's score
    device_image: Any  # ``image`` on the backend (the same array for NumPy)
    corpus_cos: Any = None  # (B, M') cosines to the corpus in group order, on the backend

    def host_id_cos(self) -> np.ndarray:
        """``id_cos`` as a NumPy array (for the rules computed on the host)."""
        return to_numpy(self.id_cos, np.float32)


def _schedule_advice(n_images: int, batch_size: int) -> str:
    """What to do about a stream too short for the schedule, in terms both the CLI and Python accept."""
    schedule = scaled_schedule(n_images, batch_size)
    fields = ", ".join(f"{k}={v}" for k, v in schedule.items())
    return (
        f"use two-pass mode (--ants-mode two-pass; two_pass=True) or a schedule scaled to the stream "
        f"(--ants-schedule scaled; in Python the ANTSConfig fields {fields})"
    )


class ANTS(BankBuilder, OnlineDetector):
    """Adaptive negative textual space; scores are higher for in-distribution samples.

    Build with :meth:`from_features` (features and a text encoder) or :meth:`from_encoder`
    (a CLIP encoder and mined negatives). All hyper-parameters are :class:`ANTSConfig` fields;
    ``ANTSConfig.authors(...)`` reproduces the authors' code.
    """

    class_names: list[str]  # always given (Detector's may be None)

    def __init__(
        self,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        text_encoder: TextEncoder | None,
        mllm: MLLM | None,
        class_names: Sequence[str],
        config: ANTSConfig | None = None,
        neg_labels: Sequence[str] | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        self.config = resolve_config(ANTSConfig, config, params)
        self.backend = resolve_backend(backend, device)
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        dim = self.id_text_features.shape[1]
        self.neg_text_features = as_unit_rows(neg_text_features, "negative text features", dim)
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) != len(self.id_text_features):
            raise ValueError(f"{len(self.class_names)} class names for {len(self.id_text_features)} ID features")
        if neg_labels is not None and len(neg_labels) != len(self.neg_text_features):
            raise ValueError(f"{len(neg_labels)} negative labels for {len(self.neg_text_features)} negative features")
        if not 1 <= self.config.groups <= len(self.neg_text_features):
            raise ValueError(f"groups must be between 1 and the {len(self.neg_text_features)} negatives")
        self.neg_labels = list(neg_labels) if neg_labels is not None else None
        self.text_encoder = text_encoder
        self.mllm = mllm
        self.frozen = False  # a frozen detector scores with its banks and never updates them
        self.space_mllm_calls = 0  # MLLM requests that built a loaded space (0 for a fresh one)
        self._set_corpus(self.neg_text_features)
        self._groupings: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self._stack: StackedBanks | None = None
        # (images seen, lam) after each online batch of the current stream, for reports (bounded)
        self.lam_trace: deque[tuple[int, float]] = deque(maxlen=_LAM_TRACE_LENGTH)
        self._crossfit: tuple[tuple[int, int], float | None] | None = None
        self._logged: set[str] = set()
        self.mllm_calls_total = 0  # requests over every run (reset() does not clear it)
        self._jobs = deque()
        self._executor = None
        self._vsnl_wanted = []
        # explanations of the lowest-scored images, with the space that scored them (bounded)
        self.kept_explanations = ants_explain.ExplanationKeeper()
        self.state = ANTSState.fresh(self.config, dim, len(self.id_text_features))
        self._initial_state = copy.deepcopy(self.state)

    def _set_corpus(self, features: np.ndarray) -> None:
        self.neg_text_features = features
        self._corpus_rows = group_order(len(features), self.config.groups, self.config.seed)
        # ID labels and the grouped corpus in one matrix: one GEMM gives a batch's id_cos and S_nl
        self._id_and_corpus = self.backend.asarray(np.concatenate([self.id_text_features, features[self._corpus_rows]]))
        self._id_text = self.backend.asarray(self.id_text_features)
        # the n mod G words the groups leave out: not scored, but an image's nearest word may be one
        self._corpus_tail_rows = np.arange(len(self._corpus_rows), len(features))
        self._corpus_tail = self.backend.asarray(features[self._corpus_tail_rows])

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        text_encoder: TextEncoder | None,
        mllm: MLLM | None,
        class_names: Sequence[str],
        *,
        neg_labels: Sequence[str] | None = None,
        config: ANTSConfig | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **fields: Any,
    ) -> ANTS:
        """Build from ``(K, D)`` ID and ``(M, D)`` corpus negative text features.

        ``text_encoder.encode_texts(texts, template=..., progress=...)`` encodes the MLLM's
        sentences (no template) and labels (``The nice {}.``). ``config`` (default
        ``ANTSConfig()``; e.g. ``ANTSConfig.authors()``) with ``fields`` replacing any of its
        fields (``tau``, ``groups``, ``mode``, ``two_pass``, ...). ``backend="torch"`` runs the
        bank products and scores on ``device`` (:mod:`negspace.backend`); the state stays NumPy.
        """
        return cls(
            id_text_features,
            neg_text_features,
            text_encoder,
            mllm,
            class_names,
            replace(config or ANTSConfig(), **fields),
            neg_labels=neg_labels,
            backend=backend,
            device=device,
        )

    @classmethod
    def from_encoder(
        cls,
        encoder: Any,
        class_names: Sequence[str],
        mined: MinedNegatives,
        mllm: MLLM | None,
        config: ANTSConfig | None = None,
        backend: str = "numpy",
        device: str = "auto",
        **fields: Any,
    ) -> ANTS:
        """Build on a CLIP encoder: ID names as ``The nice {}.``, the mined NegLabel bank."""
        id_features = encoder.encode_texts(list(class_names), template=ID_TEMPLATE)
        det = cls(
            id_features,
            mined.features,
            encoder,
            mllm,
            class_names,
            replace(config or ANTSConfig(), **fields),
            neg_labels=mined.labels,
            backend=backend,
            device=device,
        )
        det.encoder = encoder
        return det

    def reset(self) -> None:
        """Restore the state the detector started with (empty banks, or the loaded space)."""
        self._discard_pending_answers()
        self._vsnl_wanted = []
        self.state = copy.deepcopy(self._initial_state)
        self._crossfit = None
        self.lam_trace.clear()
        self.kept_explanations.clear()

    def wait_for_mllm(self) -> None:
        """Apply every answer still being worked on in the background."""
        self._apply_due_answers(wait_all=True)

    def freeze(self) -> None:
        """Stop learning: later batches are scored with the current banks and ``lam``."""
        self.frozen = True

    @property
    def learning(self) -> bool:
        """Whether :meth:`score_features` updates the state (online, not frozen, a bank in use)."""
        return not (self.frozen or self.config.two_pass or self.config.mode == "neglabel")

    # -- scoring --------------------------------------------------------------------------------

    def _grouping(self, n: int, size: int) -> tuple[np.ndarray, int]:
        key = (n, size)
        if key not in self._groupings:
            if len(self._groupings) >= 8:  # bank sizes change as the stream goes: keep the newest few
                self._groupings.pop(next(iter(self._groupings)))
            self._groupings[key] = changing_bank_groups(n, size, self.config.seed)
        return self._groupings[key]

    def _bank_score(self, id_cos: np.ndarray, bank_cos: np.ndarray, size: int | None = None) -> np.ndarray:
        order, groups = self._grouping(bank_cos.shape[1], size or self.config.group_size)
        return changing_bank_score(id_cos, bank_cos, order, groups, self.config.tau)

    def _stacked(self) -> StackedBanks:
        """The ENS and VSNL banks stacked in group order; rebuilt when the state's banks change."""
        banks = {"ens": self.state.ens_bank, "vsnl": self.state.vsnl_bank}
        if self._stack is None or not self._stack.built_from(banks):
            self._stack = StackedBanks(banks, lambda n: self._grouping(n, self.config.group_size), self.backend)
        return self._stack

    def _base(self, features: np.ndarray) -> _Base:
        ops, tau = self.backend.ops, self.config.tau
        image = self.backend.unit_rows(features, "image features", self.id_text_features.shape[1])
        product = image @ self._id_and_corpus.T
        n_classes = len(self.id_text_features)
        id_cos = product[:, :n_classes]
        id_lse = ops.log_sum_exp(id_cos, scale=1.0 / tau)
        s_nl = to_numpy(ops.grouped_id_mass(id_cos, product[:, n_classes:], self.config.groups, tau, id_lse=id_lse))
        pred = to_numpy(id_cos.argmax(axis=1) if isinstance(id_cos, np.ndarray) else id_cos.argmax(dim=1), np.int64)
        return _Base(to_numpy(image, np.float32), id_cos, s_nl, pred, id_lse, image, product[:, n_classes:])

    def _bank_parts(self, base: _Base, window: str = "peek") -> dict[str, np.ndarray]:
        """``S_ens`` (grouped and as scored), ``S_vsnl`` and their cosines; a missing bank is ``S_nl``.

        ``window`` says how the activation-aware ENS score uses its window of past scores:
        ``"push"`` adds the batch first (online learning), ``"peek"`` uses window and batch
        without storing (a frozen detector), ``"fixed"`` the window as it is (two-pass scoring),
        ``"skip"``: no activation-aware score (``S_ens`` is the grouped one).
        """
        st, cfg = self.state, self.config
        parts: dict[str, np.ndarray] = {"nl": base.s_nl, "ens_grouped": base.s_nl, "ens": base.s_nl, "vsnl": base.s_nl}
        banks = self._stacked()
        if not banks.blocks:
            return parts
        product = banks.cosines(base.device_image)  # ENS and VSNL in one GEMM
        parts["stacked_cos"] = product  # for the nearest negative of negspace score's rows
        # the authors' rules (activation ENS, balanced lam) also read the banks' cosines in bank order
        bank_order = cfg.ens_score == "activation" or (cfg.lam_rule == "authors" and cfg.mode == "ada")
        for name in ("ens", "vsnl"):
            if name in banks.blocks:
                parts[name] = banks.grouped_score(product, name, base.id_cos, cfg.tau, base.id_lse)
                if bank_order:
                    parts[f"{name}_cos"] = banks.in_bank_order(product, name)
        if st.ens_count:
            parts["ens_grouped"] = parts["ens"]
            if cfg.ens_score == "activation" and window != "skip":
                parts["ens"] = self._activation_score(base, parts["ens_cos"], parts["ens_grouped"], window)
        return parts

    def _activation_score(self, base: _Base, ens_cos: np.ndarray, grouped: np.ndarray, window: str) -> np.ndarray:
        ring = self.state.activation_window
        assert ring is not None  # fresh() makes one when ens_score is "activation", the only caller
        if window == "push":
            ring.push(grouped)
            past = ring.rows()
        elif window == "peek":
            past = np.concatenate([ring.rows(), grouped])[-ring.capacity :]
        else:
            past = ring.rows() if ring.count else grouped
        cfg = self.config
        score = activation_ens_score(
            base.host_id_cos(),
            ens_cos,
            grouped,
            activation_threshold(past),
            gap=cfg.activation_gap,
            negatives=cfg.activation_negatives,
            step=cfg.activation_step,
            tau=cfg.tau,
        )
        return grouped if score is None else score

    def _fuse(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        mode = self.config.mode
        if mode == "neglabel":
            return parts["nl"]
        if mode in ("ens", "vsnl"):
            return parts[mode]
        lam = self.lam
        return lam * parts["ens"] + (1.0 - lam) * parts["vsnl"]

    def score_fixed(self, features: np.ndarray) -> np.ndarray:
        """Score with the current banks and ``lam``; never updates the state."""
        return self._fuse(self._bank_parts(self._base(features), "peek"))

    def score_with_nearest(self, image_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Without learning (frozen, two-pass or NegLabel mode), the scores of :meth:`score_fixed`,
        each image's nearest ID class and nearest negative text (corpus word, ENS sentence or VSNL
        label) from the score's products; while learning, the rows after the batch's update."""
        if self.learning:
            return super().score_with_nearest(image_features)
        self.kept_explanations.scored_by(self._space_stamp())
        base = self._base(image_features)
        parts = self._bank_parts(base, "peek")
        corpus_labels = self._corpus_labels()
        blocks = [
            LabelledColumns(base.corpus_cos, corpus_labels, self._corpus_rows),
            LabelledColumns(base.device_image @ self._corpus_tail.T, corpus_labels, self._corpus_tail_rows),
        ]
        if "stacked_cos" in parts:
            stack = self._stacked()
            texts = {"ens": self.state.ens_texts, "vsnl": self.state.vsnl_texts}
            blocks += [
                LabelledColumns(stack.block_cosines(parts["stacked_cos"], name), texts[name], block.rows)
                for name, block in stack.blocks.items()
            ]
        return self._fuse(parts), base.pred, nearest_texts(blocks, len(base.pred))

    def score_features(self, image_features: np.ndarray, images: Sequence[Any] | None = None) -> np.ndarray:
        """Online ANTS on one batch: mine, update the banks, score with them, fuse (docs/methods/ants.md,
        step 9).

        ``images`` (paths or PIL images, aligned with the rows) are needed only for the negatives
        sent to the MLLM; without them the ENS bank cannot grow. A frozen or two-pass detector
        only scores (two-pass learns in :meth:`score_stream`).
        """
        if not self.learning:
            self.kept_explanations.scored_by(self._space_stamp())
            return self.score_fixed(image_features)
        if images is not None and len(images) != len(image_features):
            raise ValueError(f"{len(images)} images for a batch of {len(image_features)} features")
        self._apply_due_answers()
        base = self._base(image_features)
        negatives, halves = self._mine(base, images)
        parts = self._bank_parts(base, "push")
        self._track(base, parts, negatives, halves)
        fused = self._fuse(parts)
        self.lam_trace.append((self.state.images_seen, self.lam))
        self.kept_explanations.offer(self, image_features, fused)  # before the next batch changes the space
        return fused

    def score_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Encode PIL images with the detector's encoder and score them as one online batch."""
        if self.encoder is None:
            raise RuntimeError("ANTS was built from features; use score_features or from_encoder(...)")
        return self.score_features(self.encoder.encode_images(images, batch_size=batch_size), images=images)

    # -- the fusion weight ----------------------------------------------------------------------

    @property
    def lam(self) -> float:
        """The current fusion weight (fixed ``lam`` if configured; see :meth:`lam_terms`)."""
        return self.lam_terms()[2]

    def lam_terms(self) -> tuple[float | None, float | None, float]:
        """``(a, b, lam)`` of Eq. 15 under ``lam_rule`` (``a``, ``b`` ``None`` when nothing is known).

        ``paper``: ``a``, ``b`` = mean ``S_ens``, ``S_vsnl`` (grouped) of the newest
        ``lam_sample`` negatives with the current banks. ``authors``: running means over every
        sample so far of the balanced scores. ``crossfit``: the paper's ``a``, ``b`` with the
        ``lam`` of :func:`~negspace.detectors.ants.rules.crossfit_lam` (the paper's where it has
        no answer).
        """
        cfg, st = self.config, self.state
        if cfg.lam_rule == "authors":
            if st.balanced_count == 0:
                return None, None, 0.5 if cfg.lam is None else float(cfg.lam)
            a, b = st.balanced_sum_ens / st.balanced_count, st.balanced_sum_vsnl / st.balanced_count
        else:
            self._refresh_sample()
            if st.neg_sample.count == 0:
                return None, None, 0.5 if cfg.lam is None else float(cfg.lam)
            scores = st.neg_sample_scores.rows()
            a, b = float(scores[:, 1].mean()), float(scores[:, 2].mean())
        if cfg.lam is not None:
            return a, b, float(cfg.lam)
        lam = self._crossfit_lam() if cfg.lam_rule == "crossfit" else None
        return a, b, fusion_weight(a, b) if lam is None else lam

    def _rescore(self, rows: np.ndarray, scores: np.ndarray, ens: bool = True, vsnl: bool = True) -> None:
        """Write the grouped ``S_ens`` (column 1) and ``S_vsnl`` (column 2) of unit ``rows`` with the
        current banks into ``scores``, in chunks; column 0 (``S_nl``) is the fallback of a missing bank."""
        banks = self._stacked()
        for start in range(0, len(rows), _CHUNK):
            image = self.backend.asarray(rows[start : start + _CHUNK])
            block = scores[start : start + _CHUNK]
            id_cos = image @ self._id_text.T
            for column, wanted, name in ((1, ens, "ens"), (2, vsnl, "vsnl")):
                if wanted:
                    present = name in banks.blocks
                    block[:, column] = banks.score_one(image, name, id_cos, self.config.tau) if present else block[:, 0]

    def _refresh_sample(self) -> None:
        """Re-score the kept negatives with a bank that changed since they were scored."""
        st = self.state
        ens, vsnl = st.sample_ens_version != st.ens_version, st.sample_vsnl_version != st.vsnl_version
        if not (ens or vsnl):
            return
        if st.neg_sample.count:
            self._rescore(st.neg_sample.rows(), st.neg_sample_scores.data[: st.neg_sample.count], ens, vsnl)
        st.sample_ens_version, st.sample_vsnl_version = st.ens_version, st.vsnl_version

    def _crossfit_lam(self) -> float | None:
        """Cross-fitted ``lam``, recomputed when a bank changes (see ``lam_rule="crossfit"``)."""
        st = self.state
        key = (st.ens_version, st.vsnl_version)
        if self._crossfit is not None and self._crossfit[0] == key:
            return self._crossfit[1]
        lam = None
        if st.id_sample is not None and st.id_sample.count and st.neg_sample.count and st.ens_count:
            self._refresh_sample()
            confident = st.id_sample.rows()
            id_scores = np.zeros((len(confident), 3))
            id_scores[:, 0] = self._base(confident).s_nl
            self._rescore(confident, id_scores)
            negatives, neg_scores = st.neg_sample.rows(), st.neg_sample_scores.rows()
            half = st.neg_sample_half.rows()
            id_cos = negatives @ self.id_text_features.T
            ens_cos = negatives @ st.ens_bank.T
            held_out = neg_scores[:, 0].copy()  # S_nl where the other half described nothing
            for h in (0, 1):
                rows, cols = np.flatnonzero(half == h), np.flatnonzero(st.ens_halves & (1 << (1 - h)))
                if len(rows) and len(cols):
                    held_out[rows] = self._bank_score(id_cos[rows], ens_cos[np.ix_(rows, cols)])
            lam = crossfit_lam(id_scores[:, 1], id_scores[:, 2], held_out, neg_scores[:, 2])
        self._crossfit = (key, lam)
        return lam

    def _track(self, base: _Base, parts: dict[str, np.ndarray], negatives: np.ndarray, halves: np.ndarray) -> None:
        """After a batch is scored: the samples and sums ``lam`` is computed from."""
        st, cfg = self.state, self.config
        if cfg.lam_rule == "authors" and cfg.mode == "ada":
            ens_bal, vsnl_bal = self._balanced(base, parts)
            st.balanced_sum_ens += float(ens_bal.sum())
            st.balanced_sum_vsnl += float(vsnl_bal.sum())
            st.balanced_count += len(ens_bal)
        self._refresh_sample()  # rows kept so far, with the banks that scored this batch
        index = np.flatnonzero(negatives)
        if len(index):
            st.neg_sample.push(base.image[index])
            st.neg_sample_scores.push(np.stack([parts["nl"], parts["ens_grouped"], parts["vsnl"]], axis=1)[index])
            st.neg_sample_half.push(halves)
        if st.id_sample is not None:
            st.id_sample.push(base.image[base.s_nl >= cfg.gamma0])

    def _balanced(self, base: _Base, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The authors' balanced scores: ENS with group size ``balanced_group_size``; VSNL with its
        labels repeated ``vsnl_balance_repeats`` times first; ``S_nl`` for a missing bank."""
        size = self.config.balanced_group_size
        id_cos = base.host_id_cos()
        ens = self._bank_score(id_cos, parts["ens_cos"], size) if "ens_cos" in parts else base.s_nl
        if "vsnl_cos" not in parts:
            return ens, base.s_nl
        repeated = np.tile(parts["vsnl_cos"], (1, self.config.vsnl_balance_repeats))
        return ens, self._bank_score(id_cos, repeated, size)

    # -- online update --------------------------------------------------------------------------

    @property
    def _ens_stopped(self) -> bool:
        stop = self.config.ens_stop_step
        return stop is not None and self.state.ens_updates >= stop

    def _mine(self, base: _Base, images: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 5-6 on the batch, the pool and its ENS update, the VSNL schedule.

        Returns the batch's negative mask and each negative's half (alternating by mining order;
        the crossfit rule scores a half with the other half's descriptions).
        """
        st, cfg = self.state, self.config
        s_nl, pred = base.s_nl, base.pred
        self._see(s_nl, pred)
        if cfg.threshold == "paper":
            gamma = paper_threshold(st.score_hist, cfg.gamma0, cfg.eta)
            if gamma is not None:
                st.threshold = gamma
            negatives = (s_nl < cfg.gamma0) & (s_nl <= st.threshold) if gamma is not None else np.zeros(len(s_nl), bool)
        else:  # the authors: below the threshold of the last ENS update
            negatives = s_nl < st.threshold
        index = np.flatnonzero(negatives)
        halves = self._count_negatives(pred[index])
        if not self._ens_stopped:
            self._pool(base, index, halves, images)
            pending = st.pending_count
            if pending > cfg.min_candidates or (cfg.ens_trigger == "at_least" and pending == cfg.min_candidates):
                self._flush_pool()
        if (
            cfg.uses_vsnl
            and st.batches_seen >= cfg.vsnl_start
            and (st.batches_seen - cfg.vsnl_start) % cfg.vsnl_every == 0
        ):
            self._update_vsnl(self.similar_classes())
        return negatives, halves

    def _see(self, s_nl: np.ndarray, pred: np.ndarray) -> None:
        """Add a batch (or a whole two-pass stream) to the histories: scores, predictions."""
        st = self.state
        st.batches_seen += 1
        np.minimum.at(st.first_seen, pred, st.images_seen + np.arange(len(pred)))
        st.images_seen += len(s_nl)
        histogram_add(st.score_hist, s_nl)
        if st.score_history is not None:
            st.score_history.push(s_nl.astype(np.float32))
        st.all_pred_counts += np.bincount(pred, minlength=st.n_classes)

    def _count_negatives(self, pred: np.ndarray) -> np.ndarray:
        """Count new negatives (with their predicted classes); each one's half, alternating in
        mining order (the crossfit rule scores a half with the other half's descriptions)."""
        st = self.state
        halves = ((st.negatives_mined + np.arange(len(pred))) % 2).astype(np.int8)
        st.negatives_mined += len(pred)
        st.neg_pred_counts += np.bincount(pred, minlength=st.n_classes)
        return halves

    def similar_classes(self) -> list[int]:
        """``Y'``: Eq. 10-11 (``frequency``) or the authors' most predicted classes so far."""
        st, cfg = self.state, self.config
        if cfg.similar_classes == "history_top40":
            return top_counts(st.all_pred_counts, cfg.history_top, st.first_seen)
        return frequency_classes(st.neg_pred_counts, cfg.delta)

    def _pool(self, base: _Base, index: np.ndarray, halves: np.ndarray, images: Sequence[Any] | None) -> None:
        """Queue negatives for the next ENS update (the histogram rule also counts them for its
        threshold update, so it queues them even when nothing will be described)."""
        st, cfg = self.state, self.config
        describable = cfg.uses_ens and not st.budget_exhausted and images is not None
        if cfg.uses_ens and images is None and len(index):
            self._log_once(
                "no-images",
                "ANTS got negatives without images; the ENS bank cannot grow (pass images= to score_features)",
            )
        if cfg.uses_ens and st.budget_exhausted:
            st.negatives_undescribed_budget += len(index)
        if not (describable or cfg.threshold == "histogram") or not len(index):
            return
        st.pending_features.append(base.image[index])
        st.pending_images.extend(
            [images[i] for i in index] if describable and images is not None else [None] * len(index)
        )
        st.pending_preds.append(base.pred[index])
        st.pending_scores.append(base.s_nl[index])
        st.pending_halves.append(halves)

    def _score_history(self) -> RingBuffer:
        """The ring of recent scores the histogram rule reads (fresh() makes it for that rule)."""
        assert self.state.score_history is not None, "the histogram threshold rule keeps a score history"
        return self.state.score_history

    def _flush_pool(self) -> None:
        """ENS update (Eq. 7): (histogram rule) a new threshold, then describe the pooled negatives."""
        st, cfg = self.state, self.config
        features, preds, scores, halves, images = st.take_pending()
        st.ens_updates += 1
        if cfg.threshold == "histogram":  # the authors update their threshold at this point
            gamma = histogram_threshold(self._score_history().rows(), cfg.eta, cfg.histogram_coarse_width)
            if gamma is not None:
                st.threshold = gamma
        keep = np.asarray([i for i, img in enumerate(images) if img is not None], dtype=np.int64)
        if cfg.uses_ens and not st.budget_exhausted and len(keep):
            k = cfg.diversity_size if cfg.diversity else None
            self._describe(features[keep], preds[keep], scores[keep], halves[keep], [images[i] for i in keep], k)

    def finish_stream(self) -> None:
        """End of a stream: describe the negatives still pooled (``describe_leftovers``), apply
        every answer still in the background."""
        st, cfg = self.state, self.config
        if (
            self.learning
            and cfg.describe_leftovers
            and cfg.uses_ens
            and not self._ens_stopped
            and any(img is not None for img in st.pending_images)
        ):
            self._flush_pool()
        self.wait_for_mllm()

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message)

    # -- streams --------------------------------------------------------------------------------

    def score_stream(self, batches: Sequence[StreamBatch], finish: bool = True) -> list[np.ndarray]:
        """Score a whole stream: online (batch by batch) or two-pass.

        Online, ``finish`` (default) ends the stream with :meth:`finish_stream`; pass ``False``
        when the stream goes on in a later call (a sequential evaluation).

        Two-pass (``two_pass=True``): pass 1 computes ``S_nl`` for every image, mines the negatives
        from all scores at once (Eq. 5-6 exactly, ties kept; or the histogram rule over all
        scores), builds ``Y'`` and the VSNL bank from them, and describes every negative (or a
        k-center spread of ``ceil(n_neg / min_candidates) * diversity_size``) within the budget;
        ``lam`` comes from the final banks. Pass 2 scores every image with the final banks. Both
        passes visit the images in a canonical order (sorted by feature bytes) in fixed chunks,
        so scores, banks and MLLM requests depend only on the set of (feature, image) pairs: any
        permutation of the stream gives bit-identical scores. Not invariant: images with
        byte-identical features but different pixels (their relative order follows the stream),
        and a non-deterministic MLLM (sampling, a changing server).
        """
        if not self.config.two_pass:
            self._warn_short_stream(batches)
            per_batch = super().score_stream(batches)
            if finish:
                self.finish_stream()
                self._warn_empty_banks(sum(len(b.features) for b in batches), len(batches))
            return per_batch
        features = np.concatenate(
            [
                as_unit_rows(to_numpy(b.features, np.float32), "image features", self.state.dim, copy=False)
                for b in batches
            ]
        )
        images: list[Any] = []
        for b in batches:
            images.extend(b.images if b.images is not None else [None] * len(b.features))
        row_bytes = features.shape[1] * features.itemsize
        canon = np.argsort(np.ascontiguousarray(features).view(np.dtype((np.void, row_bytes))).ravel(), kind="stable")
        feats_c = features[canon]
        images_c = [images[i] for i in canon]
        if not self.frozen and self.config.mode != "neglabel":
            self._build_two_pass(feats_c, images_c)
        window = "fixed" if self.config.ens_score == "activation" else "peek"
        scores_c = np.concatenate(
            [
                self._fuse(self._bank_parts(self._base(feats_c[s : s + _CHUNK]), window))
                for s in range(0, len(feats_c), _CHUNK)
            ]
        )
        scores = np.empty_like(scores_c)
        scores[canon] = scores_c
        self.kept_explanations.scored_by(self._space_stamp())
        out, start = [], 0
        for b in batches:
            out.append(scores[start : start + len(b.features)])
            start += len(b.features)
        return out

    def _build_two_pass(self, feats: np.ndarray, images: list[Any]) -> None:
        st, cfg = self.state, self.config
        bases = [self._base(feats[s : s + _CHUNK]) for s in range(0, len(feats), _CHUNK)]
        s_nl = np.concatenate([b.s_nl for b in bases])
        pred = np.concatenate([b.pred for b in bases])
        self._see(s_nl, pred)
        if cfg.threshold == "paper":
            negatives, gamma = exact_paper_negatives(s_nl, cfg.gamma0, cfg.eta)
        else:
            gamma = histogram_threshold(self._score_history().rows(), cfg.eta, cfg.histogram_coarse_width)
            negatives = s_nl < gamma if gamma is not None else np.zeros(len(s_nl), bool)
        if gamma is not None:
            st.threshold = gamma
        index = np.flatnonzero(negatives)
        halves = self._count_negatives(pred[index])
        if len(index) and cfg.uses_vsnl:
            self._update_vsnl(self.similar_classes())
        has_image = np.asarray([images[i] is not None for i in index], dtype=bool)
        if cfg.uses_ens and has_image.any() and not st.budget_exhausted:
            use = index[has_image]
            k = math.ceil(len(index) / cfg.min_candidates) * cfg.diversity_size if cfg.diversity else None
            st.ens_updates += 1
            self._describe(feats[use], pred[use], s_nl[use], halves[has_image], [images[i] for i in use], k)
        elif cfg.uses_ens and len(index):
            if st.budget_exhausted:
                st.negatives_undescribed_budget += len(index)
            else:
                self._log_once("no-images", "ANTS two-pass got no images; the ENS bank cannot be built")
        # lam and the activation window from the final banks
        keep = index[-cfg.lam_sample :]
        st.neg_sample.push(feats[keep])
        st.neg_sample_scores.push(np.stack([s_nl[keep], s_nl[keep], s_nl[keep]], axis=1))
        st.neg_sample_half.push(halves[-cfg.lam_sample :])
        st.sample_ens_version = st.sample_vsnl_version = -1  # scored on first use
        if st.id_sample is not None:
            st.id_sample.push(feats[s_nl >= cfg.gamma0])
        authors_lam = cfg.lam_rule == "authors" and cfg.mode == "ada"
        if st.activation_window is None and not authors_lam:
            return  # nothing below needs the final banks' scores of every image
        for base in bases:
            parts = self._bank_parts(base, "skip")
            if st.activation_window is not None and st.ens_count:
                st.activation_window.push(parts["ens_grouped"])
            if authors_lam:
                ens_bal, vsnl_bal = self._balanced(base, parts)
                st.balanced_sum_ens += math.fsum(ens_bal.tolist())
                st.balanced_sum_vsnl += math.fsum(vsnl_bal.tolist())
                st.balanced_count += len(ens_bal)

    def _warn_short_stream(self, batches: Sequence[StreamBatch]) -> None:
        cfg = self.config
        if not self.learning:
            return
        if cfg.uses_vsnl and len(batches) < cfg.vsnl_start and self.state.batches_seen == 0:
            n = sum(len(b.features) for b in batches)
            log.warning(
                "ANTS: the stream has %d batches but VSNL starts at batch %d, so the VSNL bank stays empty; %s",
                len(batches),
                cfg.vsnl_start,
                _schedule_advice(n, len(batches[0].features) if batches else 256),
            )

    def _warn_empty_banks(self, n_images: int, n_batches: int) -> None:
        st, cfg = self.state, self.config
        if not self.learning:
            return
        if cfg.uses_ens and st.ens_updates == 0 and not st.budget_exhausted and not self._ens_stopped:
            batch = max(1, round(n_images / max(1, n_batches)))
            log.warning(
                "ANTS: only %d negatives were found in %d images, fewer than min_candidates=%d, so the "
                "ENS bank stayed empty; the stream is too short for the schedule: %s",
                st.negatives_mined,
                n_images,
                cfg.min_candidates,
                _schedule_advice(n_images, batch),
            )

    # -- reporting ------------------------------------------------------------------------------

    @property
    def mllm_calls(self) -> int:
        """MLLM requests sent in the current run (since the last reset)."""
        return self.state.mllm_requests

    def run_info(self) -> dict[str, Any]:
        """What the run (since the last reset) learned and cost, for ``metrics.json``.

        ``mllm_requests``: requests ANTS asked for in this run (answers from the response cache
        included); ``mllm_requests_since_built``: over every run of this detector object;
        ``mllm_failed_answers`` / ``mllm_rejected_answers``: requests that failed / answers no
        usable text was in; ``ens_answers_class_name_removed`` / ``vsnl_id_names_removed``:
        answers used after a part was cut out; ``loaded_space_mllm_requests``: what building a
        loaded space cost.
        """
        st = self.state
        a, b, lam = self.lam_terms()
        info: dict[str, Any] = {
            "mllm_requests": st.mllm_requests,
            "mllm_requests_since_built": self.mllm_calls_total,
            "mllm_failed_answers": st.failed_answers,
            "mllm_rejected_answers": st.rejected_answers,
            "ens_answers_class_name_removed": st.ens_names_removed,
            "vsnl_id_names_removed": st.vsnl_id_names_removed,
            "mllm_budget": self.config.max_mllm_calls,
            "mllm_budget_exhausted": st.budget_exhausted,
            "ens_size": st.ens_count,
            "vsnl_size": len(st.vsnl_texts),
            "vsnl_classes": [self.class_names[c] for c in st.vsnl_classes],
            "ens_updates": st.ens_updates,
            "vsnl_updates": st.vsnl_updates,
            "negatives_mined": st.negatives_mined,
            "negatives_described": st.negatives_described,
            "negatives_undescribed_budget": st.negatives_undescribed_budget,
            "negatives_not_selected": st.negatives_not_selected,
            "negatives_pooled": st.pending_count,
            "threshold": None if math.isnan(st.threshold) else st.threshold,
            "lam_rule": self.config.lam_rule,
            "a": a,
            "b": b,
            "lam": lam,
            "frozen": self.frozen,
            "loaded_space_mllm_requests": self.space_mllm_calls,
        }
        if self.mllm is not None:
            info["mllm"] = describe_model(self.mllm)  # endpoint host and model, never credentials
        return info

    def negative_bank(self) -> tuple[np.ndarray, list[str]] | None:
        """The corpus bank with the current ENS sentences and VSNL labels."""
        st = self.state
        features = np.concatenate([self.neg_text_features, st.ens_bank, st.vsnl_bank])
        return features, [*self._corpus_labels(), *st.ens_texts, *st.vsnl_texts]

    def _corpus_labels(self) -> list[str]:
        """The corpus words, or ``corpus word i`` for a corpus given without them (made once)."""
        if self.neg_labels:
            return self.neg_labels
        if len(getattr(self, "_unnamed_corpus", ())) != len(self.neg_text_features):
            self._unnamed_corpus = [f"corpus word {i}" for i in range(len(self.neg_text_features))]
        return self._unnamed_corpus

    def get_params(self) -> dict[str, Any]:
        return {
            "n_classes": len(self.id_text_features),
            "n_negatives": len(self.neg_text_features),
            **self.config.as_dict(),
        }

    # -- explanations and persistence -------------------------------------------------------------

    def explain(self, features: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
        """Per image, the ``top`` negative texts that pulled it toward OOD: ``(text, source, weight)``
        (see :func:`negspace.detectors.ants.explain.explain`)."""
        return ants_explain.explain(self, features, top=top)

    def explanation_rows(
        self,
        features: np.ndarray,
        sample_ids: Sequence[str],
        scores: np.ndarray | None = None,
        n_images: int = 100,
        top: int = 5,
    ) -> list[dict[str, Any]]:
        """Rows for ``explanations.csv``: the ``n_images`` lowest-scoring samples and their texts,
        each explained with the space that scored it when it was kept (see :meth:`keep_explanations`)
        or when the space has not changed since; otherwise with the current space, and its rows
        say ``space = final`` (see :func:`negspace.detectors.ants.explain.explanation_rows`)."""
        kept = self.kept_explanations
        return ants_explain.explanation_rows(
            self,
            features,
            sample_ids,
            scores,
            n_images=n_images,
            top=top,
            kept=kept,
            current_scored_all=kept.current_scored_all(self._space_stamp()),
        )

    def keep_explanations(
        self, images: int = ants_explain.EXPLAINED_IMAGES, top: int = ants_explain.EXPLAINED_TEXTS
    ) -> None:
        """While it learns online, keep the ``top`` texts of the ``images`` lowest-scored images of
        each stream, computed as their batch is scored (an online space changes after it scores an
        image, so explaining it later would credit texts it was not scored with). The default keeps
        ``EXPLAINED_IMAGES``; ``images=0`` keeps none (every later explanation uses the final space)."""
        self.kept_explanations = ants_explain.ExplanationKeeper(images, top)

    def forget_explained(self) -> None:
        """Drop the kept explanations: the images scored from now on form a new stream or segment."""
        self.kept_explanations.clear()

    def _space_stamp(self) -> tuple[Any, ...]:
        """What identifies the space that scores now: the config, the bank versions and ``lam``."""
        return self.config, self.state.ens_version, self.state.vsnl_version, self.lam

    def save(self, directory: str | Path) -> Path:
        """Write the negative space as plain files (see :mod:`negspace.detectors.ants.io`)."""
        self.wait_for_mllm()
        self._refresh_sample()
        return save_space(
            directory,
            SavedSpace(
                self.config,
                self.class_names,
                self.neg_labels,
                self.id_text_features,
                self.neg_text_features,
                self.state,
                self.frozen,
            ),
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        text_encoder: TextEncoder | None = None,
        mllm: MLLM | None = None,
        frozen: bool | None = None,
        backend: str = "numpy",
        device: str = "auto",
    ) -> ANTS:
        """Load a saved space; with no MLLM (default) it is frozen: it scores, never learns."""
        space = read_space(directory)
        det = cls(
            space.id_text_features,
            space.neg_text_features,
            text_encoder,
            mllm,
            space.class_names,
            space.config,
            neg_labels=space.neg_labels,
            backend=backend,
            device=device,
        )
        # as_unit_rows re-normalises (x / |x| with |x| ~ 1 +- 1 ulp): restore the saved rows exactly
        det.id_text_features = space.id_text_features
        det._set_corpus(space.neg_text_features)  # also the backend's copies of both
        det.state = space.state
        det.frozen = (mllm is None) if frozen is None else bool(frozen)
        # What building the space cost is history; this run's budget and count start at zero.
        det.space_mllm_calls = det.state.mllm_requests
        det.state.mllm_requests = 0
        det._initial_state = copy.deepcopy(det.state)
        return det
