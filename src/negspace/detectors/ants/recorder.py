"""What each ANTS stream leaves behind in a run: its negative space, explanations, MLLM accounting."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from negspace.detectors.ants.explain import FINAL_SPACE, write_explanations_csv

log = logging.getLogger("negspace")


@dataclass
class StreamRecorder:
    """Keeps what ANTS learned from each OOD set's stream before the next reset.

    Saves each set's negative space under ``out_dir/negative_space/NAME`` (reusable with
    ``--negative-space``), collects the explanations of the most OOD-looking images and the run
    accounting (MLLM calls, bank sizes, lam) per set.

    Each image is explained with the negative space that scored it: the detector keeps the
    explanations of its ``n_explained`` lowest-scored images as it scores them
    (:meth:`~negspace.detectors.ants.ANTS.keep_explanations`, set by the run's builder); the images
    explained with the final space instead are counted per set in ``final_space_explained`` and
    said in :meth:`shortfalls` (their rows in ``explanations.csv`` have ``space = final``).
    """

    out_dir: Path | None  # None: keep nothing on disk (the Python API without an output folder)
    n_explained: int = 100
    max_failures: float = 0.1  # stop when more than this share of a stream's MLLM requests is lost
    run_info: dict[str, Any] = field(default_factory=dict)
    explanation_rows: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # the stream whose MLLM failures stopped the run
    # the MLLM backend's counters already accounted for (shared by the recorders of one MLLM)
    stats_seen: dict[str, int] = field(default_factory=dict)
    # (images seen, lam) after each batch of each stream, for the reports
    lam: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # images per stream explained with the final space, not the one that scored them
    final_space_explained: dict[str, int] = field(default_factory=dict)

    def __call__(self, ood_name: str, detector: Any, stream: Any, scores: np.ndarray) -> bool:
        """Record one stream; ``True`` (stop the run) when too many of its MLLM requests were lost."""
        self.lam[ood_name] = list(getattr(detector, "lam_trace", []))
        if self.out_dir is not None:
            detector.save(self.out_dir / "negative_space" / ood_name)
        info = detector.run_info()
        stats = getattr(detector.mllm, "stats", None)
        if stats is not None:  # the backend's counters are cumulative: this stream's share
            now = stats.as_dict()
            info["mllm_stats"] = {key: value - self.stats_seen.get(key, 0) for key, value in now.items()}
            self.stats_seen.clear()
            self.stats_seen.update(now)
            if info["mllm_stats"].get("cache_hits"):  # a repeated or resumed run says what it reused
                log.info(
                    "ANTS stream %s: %d of %d MLLM answers from the cache",
                    ood_name,
                    info["mllm_stats"]["cache_hits"],
                    info["mllm_requests"],
                )
        asked, lost = info["mllm_requests"], info["mllm_failed_answers"] + info["mllm_rejected_answers"]
        info["mllm_answers_used"] = asked - lost
        info["banks_incomplete"] = lost > 0
        self.run_info[ood_name] = info
        rows = detector.explanation_rows(stream.features, stream.sample_ids, scores=scores, n_images=self.n_explained)
        detector.forget_explained()  # a sequential stream's next segment is explained on its own
        final = len({row["sample"] for row in rows if row["space"] == FINAL_SPACE})
        self.final_space_explained[ood_name] = final
        if final:
            log.warning(
                "ANTS stream %s: %d explained images are explained with the final negative space, not the "
                "one that scored them",
                ood_name,
                final,
            )
        self.explanation_rows += [{"ood_set": ood_name, **row} for row in rows]
        if asked and lost / asked > self.max_failures:
            self.stopped = ood_name
        return self.stopped is not None

    def incomplete(self, ood_names: list[str], scored: Any) -> dict[str, Any] | None:
        """What ``metrics.json`` says of a run the MLLM stopped (``None`` when it did not):
        why, and the OOD sets of ``ood_names`` not in ``scored``."""
        if self.stopped is None:
            return None
        return {
            "reason": f"more than {self.max_failures:.0%} of the MLLM requests of stream {self.stopped} "
            "failed or gave unusable answers",
            "ood_sets_not_scored": [name for name in ood_names if name not in scored],
        }

    def shortfalls(self) -> list[str]:
        """One line per stream whose banks were built from fewer MLLM answers than were asked for, and
        per stream whose explanations.csv explains images with the final space."""
        lines = [
            f"ANTS stream {name}: banks built from {info['mllm_answers_used']} of {info['mllm_requests']} MLLM "
            f"answers ({info['mllm_failed_answers']} requests failed, {info['mllm_rejected_answers']} answers "
            f"unusable)"
            for name, info in self.run_info.items()
            if info["banks_incomplete"]
        ]
        return lines + [
            f"ANTS stream {name}: {count} images of explanations.csv are explained with the final "
            "negative space, not the one that scored them (column space = final)"
            for name, count in self.final_space_explained.items()
            if count
        ]

    def write(self, mllm: Any = None) -> dict[str, Any]:
        """Write ``explanations.csv``; return the accounting for ``metrics.json``.

        ``mllm_requests`` counts what ANTS asked for (every stream, cached answers included);
        ``mllm_calls`` what reached the model (cache hits excluded), from the backend's stats;
        ``mllm_stats`` the backend's counters over the run (per stream: ``ants.NAME.mllm_stats``).
        """
        if self.explanation_rows and self.out_dir is not None:
            write_explanations_csv(self.out_dir / "explanations.csv", self.explanation_rows)
        requests = sum(info.get("mllm_requests", 0) for info in self.run_info.values())
        stats = mllm.stats.as_dict() if mllm is not None and hasattr(mllm, "stats") else None
        return {
            "ants": self.run_info,
            "mllm_requests": requests,
            "mllm_calls": stats["calls"] if stats else 0,
            "mllm_stats": stats,
        }
