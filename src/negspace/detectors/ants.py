"""ANTS: the adaptive negative textual space (Zhu et al., "ANTS: Shaping the Adaptive Negative
Textual Space by MLLM for OOD Detection"; SPEC section 4).

Over a test stream, ANTS grows two negative banks with a multimodal LLM and fuses their scores::

    S_nl   = NegLabel's grouped score (corpus bank)                        (SPEC 3)
    X_neg  = the eta fraction of lowest S_nl among S_nl < gamma0; gamma* = max S_nl over X_neg
    ENS    = MLLM descriptions of negative images ("... Do not include the class name {H(x)}.")
    Y'     = top delta*K ID classes by prediction frequency among negatives
    VSNL   = MLLM "five class names that share visual features with {c}" for c in Y'
    S_ens  = S(v; ENS),  S_vsnl = S(v; VSNL)          (section-1 score, groups of fixed size)
    lam    = (1 - a) / ((1 - a) + (1 - b)),  a / b = mean S_ens / S_vsnl over the negatives
    S_ada  = lam * S_ens + (1 - lam) * S_vsnl          (a missing bank falls back to S_nl)

**Online mode** (the paper): :meth:`ANTS.score_features` scores a batch with the banks as they
are, then updates the state. **Two-pass mode** (``two_pass=True``): :meth:`ANTS.score_stream`
builds the banks from the whole stream first, then scores every image with the final banks; the
scores depend only on the set of (feature, image) pairs, not on their order (see
:meth:`ANTS.score_stream` for exactly what is invariant).

State is bounded (:class:`~negspace.detectors.ants_state.ANTSState`), MLLM work has a budget
(``max_mllm_calls`` requests per run; reaching it freezes the banks), and a learned space can be
saved and reused without an MLLM (:meth:`ANTS.save`, :meth:`ANTS.load`).

Choices where the paper leaves room (SPEC section 4 is followed otherwise):

- Online mining (``threshold="paper"``): Eq. 5-6 are applied to the whole history, kept as a
  fixed-bin histogram of ``S_nl``: ``gamma*`` is the ``eta`` quantile of all past scores below
  ``gamma0`` (current batch included), and a batch's negatives are its images with
  ``S_nl <= gamma*``. Re-applying Eq. 6 to the candidates below the *previous* ``gamma*`` would
  shrink the threshold at every update until nothing is left, so candidates are always taken
  below ``gamma0``. ``threshold="histogram"`` is the authors' rule (start 0.8, updated at each
  ENS update from bins of 0.1).
- ``a`` and ``b`` are running means of ``S_ens`` / ``S_vsnl`` over every negative, as scored
  when it was seen (``S_nl`` where a bank did not exist yet); two-pass uses the final banks.
- The changing banks are grouped with a fixed group size (``group_size`` = 100): the newest
  ``floor(n / 100) * 100`` rows, permuted by :func:`negspace.scoring.group_order`; a bank of at
  most 100 rows is scored ungrouped.
- VSNL answers are cached per class (at most ``K`` entries); the bank holds the labels of the
  classes currently in ``Y'``, deduplicated case-insensitively. Failed requests are not cached.
- MLLM budget: ``max_mllm_calls`` counts requests sent by this detector since the last
  :meth:`reset` (``mllm_calls_total`` counts across resets).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from negspace.detectors.ants_banks import BankBuilder
from negspace.detectors.ants_state import (
    ANTSConfig,
    ANTSState,
    exact_paper_negatives,
    histogram_add,
    histogram_threshold,
    paper_threshold,
    scaled_schedule,
    similar_classes,
)
from negspace.detectors.base import OnlineDetector, StreamBatch, as_unit_rows
from negspace.mllm.protocol import MLLM
from negspace.scoring import group_order, grouped_id_mass, id_mass

if TYPE_CHECKING:
    from negspace.corpus.mining import MinedNegatives

log = logging.getLogger(__name__)

ID_TEMPLATE = "The nice {}."
_CHUNK = 1024  # rows per scoring chunk in two-pass mode (fixed, so results do not depend on batching)

__all__ = ["ANTS", "ANTSConfig", "ANTSState", "TextEncoder", "scaled_schedule"]


class TextEncoder(Protocol):
    """Anything that turns texts into unit rows (e.g. :class:`negspace.encoders.ClipEncoder`)."""

    def encode_texts(self, texts: Sequence[str], template: str = "{}", progress: bool = True) -> np.ndarray: ...


class ANTS(BankBuilder, OnlineDetector):
    """Adaptive negative textual space; scores are higher for in-distribution samples.

    Build with :meth:`from_features` (features and a text encoder) or :meth:`from_encoder`
    (a CLIP encoder and mined negatives). All hyper-parameters are :class:`ANTSConfig` fields.
    """

    def __init__(
        self,
        id_text_features: np.ndarray,
        neg_text_features: np.ndarray,
        text_encoder: TextEncoder | None,
        mllm: MLLM | None,
        class_names: Sequence[str],
        config: ANTSConfig | None = None,
        neg_labels: Sequence[str] | None = None,
    ) -> None:
        self.config = config or ANTSConfig()
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
        self._corpus_order = group_order(len(self.neg_text_features), self.config.groups, self.config.seed)
        self._grouped_corpus = self.neg_text_features[self._corpus_order]
        self._bank_cache: dict[str, tuple[int, np.ndarray, int]] = {}
        self._logged: set[str] = set()
        self.mllm_calls_total = 0  # requests over every run (reset() does not clear it)
        self._jobs = deque()
        self._executor = None
        self._vsnl_wanted = []
        self.state = self._fresh_state()
        self._initial_state = copy.deepcopy(self.state)

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
        **config: Any,
    ) -> ANTS:
        """Build from ``(K, D)`` ID and ``(M, D)`` corpus negative text features.

        ``text_encoder.encode_texts(texts, template=..., progress=...)`` encodes the MLLM's
        sentences (no template) and labels (``The nice {}.``); ``config`` are
        :class:`ANTSConfig` fields (``tau``, ``groups``, ``mode``, ``two_pass``, ...).
        """
        return cls(id_text_features, neg_text_features, text_encoder, mllm, class_names,
                   ANTSConfig(**config), neg_labels=neg_labels)

    @classmethod
    def from_encoder(
        cls, encoder: Any, class_names: Sequence[str], mined: MinedNegatives, mllm: MLLM | None, **config: Any
    ) -> ANTS:
        """Build on a CLIP encoder: ID names as ``The nice {}.``, the mined NegLabel bank."""
        id_features = encoder.encode_texts(list(class_names), template=ID_TEMPLATE)
        det = cls(id_features, mined.features, encoder, mllm, class_names, ANTSConfig(**config),
                  neg_labels=mined.labels)
        det.encoder = encoder
        return det

    def _fresh_state(self) -> ANTSState:
        cfg = self.config
        return ANTSState(
            dim=self.id_text_features.shape[1],
            n_classes=len(self.id_text_features),
            histogram_bins=cfg.histogram_bins,
            threshold=cfg.histogram_start if cfg.threshold == "histogram" else math.nan,
            ens_capacity=cfg.ens_size,
        )

    def reset(self) -> None:
        """Restore the state the detector started with (empty banks, or the loaded space)."""
        self._discard_pending_answers()
        self._vsnl_wanted = []
        self.state = copy.deepcopy(self._initial_state)
        self._bank_cache.clear()

    def wait_for_mllm(self) -> None:
        """Apply every answer still being worked on in the background (end of a stream)."""
        self._apply_due_answers(wait_all=True)

    def freeze(self) -> None:
        """Stop learning: later batches are scored with the current banks and ``lam``."""
        self.frozen = True

    # -- scoring --------------------------------------------------------------------------------

    def _grouped_bank(self, name: str, bank: np.ndarray) -> tuple[np.ndarray, int]:
        """The bank in group order with fixed group size (newest rows kept), cached per version."""
        cached = self._bank_cache.get(name)
        if cached is not None and cached[0] == self.state.version:
            return cached[1], cached[2]
        size = self.config.group_size
        n = len(bank)
        if n <= size:
            grouped, groups = bank, 1
        else:
            groups = n // size
            used = groups * size
            grouped = bank[n - used :][group_order(used, groups, self.config.seed)]
        self._bank_cache[name] = (self.state.version, grouped, groups)
        return grouped, groups

    def _bank_score(self, name: str, bank: np.ndarray, image: np.ndarray, id_cos: np.ndarray) -> np.ndarray | None:
        if len(bank) == 0:
            return None
        grouped, groups = self._grouped_bank(name, bank)
        cos = image @ grouped.T
        if groups == 1:
            return id_mass(id_cos, cos, self.config.tau)
        return grouped_id_mass(id_cos, cos, groups, self.config.tau)

    def _components(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """``S_nl``, ``S_ens``, ``S_vsnl`` (with fallback), the prediction, and the unit features."""
        image = as_unit_rows(features, "image features", self.id_text_features.shape[1])
        id_cos = image @ self.id_text_features.T
        s_nl = grouped_id_mass(id_cos, image @ self._grouped_corpus.T, self.config.groups, self.config.tau)
        s_ens = s_vsnl = None
        if self.config.uses_ens:
            s_ens = self._bank_score("ens", self.state.ens_bank, image, id_cos)
        if self.config.uses_vsnl:
            s_vsnl = self._bank_score("vsnl", self.state.vsnl_bank, image, id_cos)
        return {
            "image": image,
            "pred": np.argmax(id_cos, axis=1),
            "nl": s_nl,
            "ens": s_nl if s_ens is None else s_ens,
            "vsnl": s_nl if s_vsnl is None else s_vsnl,
        }

    @property
    def lam(self) -> float:
        """The current fusion weight (fixed ``lam`` if configured)."""
        return self.state.lam(self.config.lam)

    def _fuse(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        mode = self.config.mode
        if mode == "neglabel":
            return parts["nl"]
        if mode == "ens":
            return parts["ens"]
        if mode == "vsnl":
            return parts["vsnl"]
        lam = self.lam
        return lam * parts["ens"] + (1.0 - lam) * parts["vsnl"]

    def score_fixed(self, features: np.ndarray) -> np.ndarray:
        """Score with the current banks and ``lam``; never updates the state."""
        return self._fuse(self._components(features))

    def score_features(self, image_features: np.ndarray, images: Sequence[Any] | None = None) -> np.ndarray:
        """Online ANTS: score the batch with the banks as they are, then update the state.

        ``images`` (paths or PIL images, aligned with the rows) are needed only for the negatives
        sent to the MLLM; without them the ENS bank cannot grow. A frozen or two-pass detector
        only scores (two-pass learns in :meth:`score_stream`).
        """
        self._apply_due_answers()
        parts = self._components(image_features)
        scores = self._fuse(parts)
        if not (self.frozen or self.config.two_pass or self.config.mode == "neglabel"):
            if images is not None and len(images) != len(scores):
                raise ValueError(f"{len(images)} images for a batch of {len(scores)} features")
            self._update(parts, images)
        return scores

    def score_images(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Encode PIL images with the detector's encoder and score them as one online batch."""
        if self.encoder is None:
            raise RuntimeError("ANTS was built from features; use score_features or from_encoder(...)")
        return self.score_features(self.encoder.encode_images(images, batch_size=batch_size), images=images)

    # -- online update --------------------------------------------------------------------------

    def _update(self, parts: dict[str, np.ndarray], images: Sequence[Any] | None) -> None:
        st, cfg = self.state, self.config
        s_nl, pred = parts["nl"], parts["pred"]
        st.batches_seen += 1
        st.images_seen += len(s_nl)
        histogram_add(st.score_hist, s_nl)
        st.all_pred_counts += np.bincount(pred, minlength=st.n_classes)
        if cfg.threshold == "paper":
            gamma = paper_threshold(st.score_hist, cfg.gamma0, cfg.eta)
            if gamma is not None:
                st.threshold = gamma
            negatives = (s_nl < cfg.gamma0) & (s_nl <= st.threshold) if gamma is not None else np.zeros(len(s_nl), bool)
        else:
            negatives = s_nl < st.threshold
        if negatives.any():
            st.sum_ens += float(parts["ens"][negatives].sum())
            st.sum_vsnl += float(parts["vsnl"][negatives].sum())
            st.n_negatives += int(negatives.sum())
            st.neg_pred_counts += np.bincount(pred[negatives], minlength=st.n_classes)
            self._pool(parts, negatives, images)
        if st.pending_count >= cfg.min_candidates:
            self._flush_pool()
        if (cfg.uses_vsnl and st.batches_seen >= cfg.vsnl_start
                and (st.batches_seen - cfg.vsnl_start) % cfg.vsnl_every == 0):
            self._update_vsnl(similar_classes(st, cfg))

    def _pool(self, parts: dict[str, np.ndarray], negatives: np.ndarray, images: Sequence[Any] | None) -> None:
        """Queue negatives for the next ENS update (the histogram rule also counts them for its
        threshold update, so it queues them even when nothing will be described)."""
        st, cfg = self.state, self.config
        describable = cfg.uses_ens and not st.budget_exhausted and images is not None
        if cfg.uses_ens and images is None:
            self._log_once("no-images", "ANTS got negatives without images; the ENS bank cannot grow "
                           "(pass images= to score_features)")
        if not (describable or cfg.threshold == "histogram"):
            return
        index = np.flatnonzero(negatives)
        st.pending_features.append(parts["image"][index])
        st.pending_images.extend([images[i] for i in index] if describable else [None] * len(index))
        st.pending_preds.append(parts["pred"][index])
        st.pending_scores.append(parts["nl"][index])

    def _flush_pool(self) -> None:
        """ENS update (Eq. 7): describe the pooled negatives, then start a new pool."""
        st, cfg = self.state, self.config
        features = np.concatenate(st.pending_features)
        preds = np.concatenate(st.pending_preds)
        scores = np.concatenate(st.pending_scores)
        images = list(st.pending_images)
        st.clear_pending()
        if cfg.threshold == "histogram":  # the authors update their threshold at this point
            gamma = histogram_threshold(st.score_hist, cfg.eta, cfg.histogram_coarse_width)
            if gamma is not None:
                st.threshold = gamma
        if cfg.uses_ens and not st.budget_exhausted:
            keep = [i for i in range(len(images)) if images[i] is not None]
            if keep:
                keep_arr = np.asarray(keep)
                self._describe(features[keep_arr], preds[keep_arr], scores[keep_arr],
                               [images[i] for i in keep], cfg.diversity_size)

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message)

    # -- streams --------------------------------------------------------------------------------

    def score_stream(self, batches: Sequence[StreamBatch]) -> list[np.ndarray]:
        """Score a whole stream: online (batch by batch) or two-pass.

        Two-pass (``two_pass=True``): pass 1 computes ``S_nl`` for every image, mines the negatives
        from all scores at once (Eq. 5-6 exactly, ties kept), builds ``Y'`` and the VSNL bank from
        them, and describes the negatives (lowest ``S_nl`` first, or a k-center spread of
        ``ceil(n_neg / min_candidates) * diversity_size``) within the budget; ``a`` and ``b`` are
        the means over the negatives with the final banks (``math.fsum``). Pass 2 scores every
        image with the final banks. Both passes visit the images in a canonical order (sorted by
        feature bytes) in fixed chunks, so scores, banks and MLLM requests depend only on the set
        of (feature, image) pairs: any permutation of the stream gives bit-identical scores.
        Not invariant: images with byte-identical features but different pixels (their relative
        order follows the stream), and a non-deterministic MLLM (sampling, a changing server).
        """
        if not self.config.two_pass:
            self._warn_short_stream(batches)
            scores = super().score_stream(batches)
            self.wait_for_mllm()
            self._warn_empty_banks(sum(len(b.features) for b in batches), len(batches))
            return scores
        features = np.concatenate([as_unit_rows(b.features, "image features", self.state.dim) for b in batches])
        images: list[Any] = []
        for b in batches:
            images.extend(b.images if b.images is not None else [None] * len(b.features))
        row_bytes = features.shape[1] * features.itemsize
        canon = np.argsort(np.ascontiguousarray(features).view(np.dtype((np.void, row_bytes))).ravel(), kind="stable")
        feats_c = features[canon]
        images_c = [images[i] for i in canon]
        if not self.frozen and self.config.mode != "neglabel":
            self._build_two_pass(feats_c, images_c)
        scores_c = np.concatenate([self.score_fixed(feats_c[s : s + _CHUNK]) for s in range(0, len(feats_c), _CHUNK)])
        scores = np.empty_like(scores_c)
        scores[canon] = scores_c
        out, start = [], 0
        for b in batches:
            out.append(scores[start : start + len(b.features)])
            start += len(b.features)
        return out

    def _build_two_pass(self, feats: np.ndarray, images: list[Any]) -> None:
        st, cfg = self.state, self.config
        chunks = [self._components(feats[s : s + _CHUNK]) for s in range(0, len(feats), _CHUNK)]
        s_nl = np.concatenate([c["nl"] for c in chunks])
        pred = np.concatenate([c["pred"] for c in chunks])
        st.batches_seen += 1
        st.images_seen += len(s_nl)
        histogram_add(st.score_hist, s_nl)
        st.all_pred_counts += np.bincount(pred, minlength=st.n_classes)
        if cfg.threshold == "paper":
            negatives, gamma = exact_paper_negatives(s_nl, cfg.gamma0, cfg.eta)
        else:
            gamma = histogram_threshold(st.score_hist, cfg.eta, cfg.histogram_coarse_width)
            negatives = s_nl < gamma if gamma is not None else np.zeros(len(s_nl), bool)
        if gamma is not None:
            st.threshold = gamma
        index = np.flatnonzero(negatives)
        st.neg_pred_counts += np.bincount(pred[index], minlength=st.n_classes)
        if len(index) and cfg.uses_vsnl:
            self._update_vsnl(similar_classes(st, cfg))
        with_image = np.asarray([i for i in index if images[i] is not None], dtype=np.int64)
        if cfg.uses_ens and len(with_image) and not st.budget_exhausted:
            k = math.ceil(len(index) / cfg.min_candidates) * cfg.diversity_size
            self._describe(feats[with_image], pred[with_image], s_nl[with_image], [images[i] for i in with_image], k)
        elif cfg.uses_ens and len(index) and not len(with_image):
            self._log_once("no-images", "ANTS two-pass got no images; the ENS bank cannot be built")
        if len(index):
            parts = [self._components(feats[index[s : s + _CHUNK]]) for s in range(0, len(index), _CHUNK)]
            st.sum_ens = math.fsum(np.concatenate([p["ens"] for p in parts]).tolist())
            st.sum_vsnl = math.fsum(np.concatenate([p["vsnl"] for p in parts]).tolist())
            st.n_negatives = len(index)

    def _warn_short_stream(self, batches: Sequence[StreamBatch]) -> None:
        cfg = self.config
        if self.frozen or cfg.mode == "neglabel":
            return
        if cfg.uses_vsnl and len(batches) < cfg.vsnl_start:
            n = sum(len(b.features) for b in batches)
            log.warning("ANTS: the stream has %d batches but VSNL starts at batch %d, so the VSNL bank stays "
                        "empty; use two-pass mode or a schedule scaled to the stream, e.g. %s",
                        len(batches), cfg.vsnl_start, scaled_schedule(n, len(batches[0].features) if batches else 256))

    def _warn_empty_banks(self, n_images: int, n_batches: int) -> None:
        st, cfg = self.state, self.config
        if self.frozen or cfg.mode == "neglabel" or cfg.two_pass:
            return
        if cfg.uses_ens and st.ens_updates == 0 and not st.budget_exhausted:
            batch = max(1, round(n_images / max(1, n_batches)))
            log.warning("ANTS: only %d negatives were found in %d images, fewer than min_candidates=%d, so the "
                        "ENS bank stayed empty; the stream is too short for the schedule: use two-pass mode "
                        "or a schedule scaled to the stream, e.g. %s", st.n_negatives, n_images,
                        cfg.min_candidates, scaled_schedule(n_images, batch))

    # -- reporting ------------------------------------------------------------------------------

    @property
    def mllm_calls(self) -> int:
        """MLLM requests sent in the current run (since the last reset)."""
        return self.state.mllm_requests

    def run_info(self) -> dict[str, Any]:
        """What the run learned and cost, for ``metrics.json``."""
        st = self.state
        info = {
            "mllm_calls": st.mllm_requests,
            "mllm_calls_total": self.mllm_calls_total,
            "mllm_failed_answers": st.failed_answers,
            "mllm_rejected_answers": st.rejected_answers,
            "mllm_budget": self.config.max_mllm_calls,
            "mllm_budget_exhausted": st.budget_exhausted,
            "ens_size": st.ens_count,
            "vsnl_size": len(st.vsnl_texts),
            "vsnl_classes": [self.class_names[c] for c in st.vsnl_classes],
            "ens_updates": st.ens_updates,
            "vsnl_updates": st.vsnl_updates,
            "negatives": st.n_negatives,
            "threshold": None if math.isnan(st.threshold) else st.threshold,
            "lam": self.lam,
            "frozen": self.frozen,
            "loaded_space_mllm_calls": self.space_mllm_calls,
        }
        if self.mllm is not None and hasattr(self.mllm, "stats"):
            info["mllm_model"] = getattr(self.mllm, "model_id", None)
            info["mllm_stats"] = self.mllm.stats.as_dict()
        return info

    def get_params(self) -> dict[str, Any]:
        return {"n_classes": len(self.id_text_features), "n_negatives": len(self.neg_text_features),
                **self.config.as_dict()}

    # -- explanations and persistence (ants_io) ----------------------------------------------------

    def explain(self, features: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
        """Per image, the ``top`` negative texts that pulled it toward OOD: ``(text, source, weight)``.

        ``weight`` is the text's softmax mass over ``ID ∪ its bank`` (ungrouped), times the
        weight of that bank in the fused score (``lam`` for ENS, ``1 - lam`` for VSNL, the rest
        for the corpus bank a missing bank falls back to). Sources: ``ens``, ``vsnl``, ``corpus``.
        """
        from negspace.detectors.ants_io import explain

        return explain(self, features, top=top)

    def save(self, directory: str | Path) -> Path:
        """Write the negative space as plain files (see :mod:`negspace.detectors.ants_io`)."""
        from negspace.detectors.ants_io import save_ants

        self.wait_for_mllm()
        return save_ants(self, directory)

    @classmethod
    def load(cls, directory: str | Path, text_encoder: TextEncoder | None = None, mllm: MLLM | None = None,
             frozen: bool | None = None) -> ANTS:
        """Load a saved space; with no MLLM (default) it is frozen: it scores, never learns."""
        from negspace.detectors.ants_io import load_ants

        return load_ants(cls, directory, text_encoder=text_encoder, mllm=mllm, frozen=frozen)

    def explanation_rows(self, features: np.ndarray, sample_ids: Sequence[str], scores: np.ndarray | None = None,
                         n_images: int = 100, top: int = 5) -> list[dict[str, Any]]:
        """Rows for ``explanations.csv``: the ``n_images`` lowest-scoring samples and their texts."""
        from negspace.detectors.ants_io import explanation_rows

        return explanation_rows(self, features, sample_ids, scores, n_images=n_images, top=top)
