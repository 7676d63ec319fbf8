"""How ANTS grows its banks with the MLLM: describing negatives (ENS, Eq. 7-8) and asking for
visually similar labels (VSNL, Eq. 12-13), within a request budget, never raising on bad answers.

A mixin of :class:`negspace.detectors.ants.ANTS` (kept apart so each file has one job); it uses
the detector's ``config``, ``state``, ``mllm``, ``text_encoder`` and ``class_names``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.rules import kcenter_greedy
from negspace.detectors.ants.state import ANTSState
from negspace.mllm.prompts import describe_request, read_class_list, read_description, vsnl_request
from negspace.mllm.protocol import GenerationParams
from negspace.scoring import as_unit_rows
from negspace.templates import ENS_TEMPLATE, VSNL_TEMPLATE  # also re-exported

log = logging.getLogger("negspace.detectors.ants")

_UNLIMITED = 1 << 62


class BankBuilder:
    """ENS and VSNL updates through the MLLM (mixin; see the module doc)."""

    config: ANTSConfig
    state: ANTSState
    mllm: Any
    text_encoder: Any
    class_names: list[str]
    mllm_calls_total: int
    # Background MLLM work of the online mode: (due batch count, answers, how to apply them).
    _jobs: deque[tuple[int, Future[list[str | None]], Callable[[list[str | None]], None]]]
    _executor: ThreadPoolExecutor | None
    _vsnl_wanted: list[int]

    def _log_once(self, key: str, message: str) -> None:  # pragma: no cover - defined by ANTS
        raise NotImplementedError

    # -- ENS ------------------------------------------------------------------------------------

    def _select(self, features: np.ndarray, scores: np.ndarray, k: int | None) -> np.ndarray:
        """Which negatives to describe, in the order they are sent: all (lowest ``S_nl`` first,
        or in stream order), or a k-center spread of ``k``."""
        cfg = self.config
        order = np.argsort(scores, kind="stable") if cfg.describe_order == "lowest" else np.arange(len(scores))
        if cfg.diversity == "kcenter" and k is not None:
            spread: np.ndarray = order[kcenter_greedy(features[order], k, first=0)]
            return spread
        return order

    def _describe(
        self,
        features: np.ndarray,
        preds: np.ndarray,
        scores: np.ndarray,
        halves: np.ndarray,
        images: Sequence[Any],
        k: int | None,
    ) -> None:
        """ENS update (Eq. 7-8): describe the selected negatives; the parsed sentences join the bank
        when the answers are applied (at once, or ``mllm_lag`` batches later; see :meth:`_ask`)."""
        st = self.state
        selected = self._select(features, scores, k)
        chosen = selected[: self._ens_budget_left()]
        st.negatives_not_selected += len(scores) - len(selected)
        st.negatives_undescribed_budget += len(selected) - len(chosen)
        st.negatives_described += len(chosen)
        if not len(chosen):
            self._log_once("ens-budget", "ANTS: the ENS share of the MLLM budget is used; the rest is kept for VSNL")
            return
        excluded = [self.class_names[preds[i]] for i in chosen]
        sources = halves[chosen]
        requests = [describe_request(images[i], name, self._params()) for i, name in zip(chosen, excluded, strict=True)]

        def apply(answers: list[str | None]) -> None:
            cfg = self.config
            sentences, kept_halves = [], []
            rejected = st.rejected_answers
            for name, half, answer in zip(excluded, sources, answers, strict=True):
                if answer is None:
                    continue
                read = read_description(answer, name, cfg.description_words, cfg.strip_class_names)
                if read is None:
                    self._reject(answer)
                    continue
                st.ens_names_removed += read[1]
                sentences.append(read[0])
                kept_halves.append(half)
            self._warn_rejected(st.rejected_answers - rejected, len(answers), "descriptions")
            self._add_sentences(sentences, kept_halves)

        self._ask(requests, apply)

    def _add_sentences(self, sentences: list[str], halves: list[int]) -> None:
        """De-duplicate (case-insensitive; within the update, and against the bank unless
        ``ens_dedupe="update"``), encode without template, add to the bank.

        Each sentence remembers which halves of the negatives produced it (a bit each, for the
        crossfit ``lam``); a duplicate adds its half to the sentence it repeats.
        """
        st = self.state
        index = {t.casefold(): i for i, t in enumerate(st.ens_texts)} if self.config.ens_dedupe == "bank" else {}
        new: list[str] = []
        sources: list[int] = []
        fresh: dict[str, int] = {}
        for text, half in zip(sentences, halves, strict=True):
            key, bit = text.casefold(), 1 << int(half)
            if key in fresh:
                sources[fresh[key]] |= bit
            elif key in index:
                st.ens_halves[index[key]] |= bit
            else:
                fresh[key] = len(new)
                new.append(text)
                sources.append(bit)
        if new:
            st.add_ens(
                new, self._encode(new, ENS_TEMPLATE), np.asarray(sources), prepend=self.config.ens_order == "prepend"
            )

    # -- VSNL -----------------------------------------------------------------------------------

    def _update_vsnl(self, classes: list[int]) -> None:
        """VSNL update (Eq. 12): ask for the classes of ``Y'`` not answered yet; bank = ``Y'``'s labels.

        With ``vsnl_cache="forget"`` classes that left ``Y'`` lose their answers first. The bank is
        rebuilt at once from the answers already cached (classes that left ``Y'`` drop out now)
        and again when the new answers are applied.
        """
        st = self.state
        if st.budget_exhausted:
            return
        if self.config.vsnl_cache == "forget":
            for c in [c for c in st.vsnl_answers if c not in classes]:
                del st.vsnl_answers[c], st.vsnl_answer_features[c]
        self._vsnl_wanted = list(classes)
        missing = [c for c in classes if c not in st.vsnl_answers][: self._budget_left()]

        def apply(answers: list[str | None]) -> None:
            parsed: dict[int, list[str]] = {}
            rejected = st.rejected_answers
            for c, answer in zip(missing, answers, strict=True):
                if answer is None:
                    continue  # not cached: asked again at the next update if still in Y'
                # Every ID name is excluded (not only the asked class): an ID name is no negative.
                names, dropped = read_class_list(answer, self.class_names, k=self.config.vsnl_per_class)
                if names:
                    st.vsnl_id_names_removed += dropped
                else:
                    self._reject(answer)
                parsed[c] = names
            self._warn_rejected(st.rejected_answers - rejected, len(answers), "class lists")
            to_encode = sorted({n for names in parsed.values() for n in names})
            encoded = dict(zip(to_encode, self._encode(to_encode, VSNL_TEMPLATE), strict=True)) if to_encode else {}
            for c, names in parsed.items():
                st.vsnl_answers[c] = names
                st.vsnl_answer_features[c] = (
                    np.stack([encoded[n] for n in names]) if names else np.zeros((0, st.dim), np.float32)
                )
            self._rebuild_vsnl(self._vsnl_wanted)
            st.vsnl_updates += 1

        self._rebuild_vsnl(classes)
        if missing:
            self._ask([vsnl_request(self.class_names[c], self._params()) for c in missing], apply)
        else:
            apply([])

    def _rebuild_vsnl(self, classes: list[int]) -> None:
        """The VSNL bank: the answered labels of ``classes``, de-duplicated (case-insensitive),
        in ``Y'`` order (``vsnl_cache="keep"``) or the cache's insertion order (``"forget"``)."""
        st = self.state
        wanted = set(classes)
        if self.config.vsnl_cache == "forget":
            active = [c for c in st.vsnl_answers if c in wanted]
        else:
            active = [c for c in classes if c in st.vsnl_answers]
        texts: list[str] = []
        rows: list[np.ndarray] = []
        seen: set[str] = set()
        for c in active:
            for name, row in zip(st.vsnl_answers[c], st.vsnl_answer_features[c], strict=True):
                if name.casefold() not in seen:
                    seen.add(name.casefold())
                    texts.append(name)
                    rows.append(row)
        st.vsnl_classes = active
        st.vsnl_texts = texts
        st.vsnl_features = np.stack(rows).astype(np.float32) if rows else np.zeros((0, st.dim), np.float32)
        st.vsnl_version += 1

    # -- MLLM plumbing --------------------------------------------------------------------------

    def _params(self) -> GenerationParams:
        return GenerationParams(max_tokens=self.config.max_tokens, temperature=0.0, seed=self.config.seed)

    def _budget_left(self) -> int:
        if self.config.max_mllm_calls is None:
            return _UNLIMITED
        return max(0, self.config.max_mllm_calls - self.state.mllm_requests)

    def _vsnl_reserve(self) -> int:
        """Requests kept for VSNL until it has asked about ``ceil(delta K)`` classes.

        ENS could otherwise spend the whole budget on descriptions before the first VSNL update
        (ENS asks once per negative, VSNL once per similar class), leaving near-OOD uncovered.
        """
        if not self.config.uses_vsnl or self.config.max_mllm_calls is None:
            return 0
        wanted = min(math.ceil(self.config.delta * len(self.class_names)), self.config.max_mllm_calls // 2)
        return max(0, wanted - len(self.state.vsnl_answers))

    def _ens_budget_left(self) -> int:
        return max(0, self._budget_left() - self._vsnl_reserve())

    def _ask(self, requests: list[Any], apply: Callable[[list[str | None]], None]) -> None:
        """Send ``requests`` to the MLLM and hand the answers (``None`` = failed) to ``apply``.

        ``mllm_lag = 0`` (default) and two-pass apply at once (blocking): the batch that asked is
        scored with the updated banks, as in the authors' code. Online with ``mllm_lag >= 1`` the
        MLLM works in a background thread and ``apply`` runs on the scoring thread before batch
        ``t + mllm_lag`` is scored (``t`` = the batch that asked): scoring never waits on the MLLM
        before then, and the point where a bank changes does not depend on how fast the MLLM
        answers, so scores stay reproducible.
        """
        self._account(len(requests))
        if self.config.mllm_lag >= 1 and not self.config.two_pass and self.mllm is not None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ants-mllm")
            due = self.state.batches_seen + self.config.mllm_lag - 1
            self._jobs.append((due, self._executor.submit(self._send, requests), apply))
        else:
            apply(self._count_failures(self._send(requests)))

    def _apply_due_answers(self, wait_all: bool = False) -> None:
        """Apply the background answers that are due (all of them with ``wait_all``), in order."""
        while self._jobs and (wait_all or self._jobs[0][0] <= self.state.batches_seen):
            _, future, apply = self._jobs.popleft()
            apply(self._count_failures(future.result()))

    def _discard_pending_answers(self) -> None:
        """Forget background work (``reset()``): wait for it to end, drop its answers."""
        while self._jobs:
            self._jobs.popleft()[1].result()

    def _account(self, n_requests: int) -> None:
        st, budget = self.state, self.config.max_mllm_calls
        st.mllm_requests += n_requests
        self.mllm_calls_total += n_requests
        if budget is not None and n_requests and st.mllm_requests >= budget and not st.budget_exhausted:
            st.budget_exhausted = True
            log.warning("ANTS: MLLM budget of %d requests reached; the negative banks are frozen", budget)

    def _send(self, requests: list[Any]) -> list[str | None]:
        """The MLLM I/O alone, in batches of ``mllm_batch_size``; never raises, touches no state
        (it may run in the background thread)."""
        if self.mllm is None:
            self._log_once("no-mllm", "ANTS has no MLLM; its banks stay as they are")
            return [None] * len(requests)
        answers: list[str | None] = []
        size = self.config.mllm_batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            try:
                got = list(self.mllm.generate(chunk))
                if len(got) != len(chunk):
                    raise ValueError(f"{len(got)} answers for {len(chunk)} requests")
            except Exception as err:  # noqa: BLE001 - a broken backend must not end the run
                log.warning("ANTS: MLLM generate failed (%s); continuing with the banks it has", err)
                got = [None] * len(chunk)
            answers.extend(got)
        return answers

    def _count_failures(self, answers: list[str | None]) -> list[str | None]:
        failed = sum(a is None for a in answers)
        if failed:
            self.state.failed_answers += failed
            log.warning("ANTS: %d of %d MLLM requests failed; the banks are built without them", failed, len(answers))
        return answers

    @staticmethod
    def _warn_rejected(rejected: int, answered: int, what: str) -> None:
        if rejected:
            log.warning(
                "ANTS: %d of %d MLLM %s were unusable (refusals, garbage, repeated words) and left out",
                rejected,
                answered,
                what,
            )

    def _reject(self, answer: str) -> None:
        self.state.rejected_answers += 1
        if self.mllm is not None and hasattr(self.mllm, "stats"):
            self.mllm.stats.rejected_answers += 1
        log.debug("ANTS: unusable MLLM answer %r", answer[:200])

    def _encode(self, texts: list[str], template: str) -> np.ndarray:
        if self.text_encoder is None:
            raise RuntimeError("ANTS needs a text encoder to grow its banks (pass text_encoder=...)")
        rows = self.text_encoder.encode_texts(texts, template=template, progress=False)
        return as_unit_rows(rows, "MLLM text features", self.state.dim)
