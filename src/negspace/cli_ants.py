"""The ANTS part of ``negspace eval``: MLLM and ANTS options, the builder, and what each stream
leaves behind (the learned negative space, explanations, MLLM accounting)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from negspace.cli_args import fraction, non_negative_int, positive_float, positive_int
from negspace.detectors.ants import ANTS
from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.explain import write_explanations_csv
from negspace.detectors.ants.rules import scaled_schedule
from negspace.errors import NegspaceError
from negspace.evaluate import EncodedSet

log = logging.getLogger(__name__)
_ANTS = ANTSConfig()  # the paper defaults, read by the options below


def add_mllm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multimodal LLM (ANTS)")
    group.add_argument("--mllm", help="openai:BASE_URL/MODEL (any OpenAI-compatible server) or hf:NAME_OR_PATH")
    group.add_argument("--mllm-text", help="a separate model for text-only prompts (VSNL); default: --mllm")
    group.add_argument("--mllm-concurrency", type=positive_int, default=8, help="requests in flight (default: %(default)s)")
    group.add_argument("--mllm-timeout", type=positive_float, default=60.0, help="seconds per request (default: %(default)s)")
    group.add_argument("--mllm-retries", type=non_negative_int, default=4, help="retries per request (default: %(default)s)")
    group.add_argument("--mllm-max-wait", type=positive_float, default=30.0,
                       help="longest wait between attempts, a server's Retry-After included, s (default: %(default)s)")
    group.add_argument("--mllm-image-size", type=positive_int, default=448, help="longest side sent, px (default: %(default)s)")
    group.add_argument("--mllm-api-key-env", default="OPENAI_API_KEY", help="env variable with the API key (default: %(default)s)")
    group.add_argument("--mllm-batch-size", type=positive_int, default=8, help="batch of a local hf: model (default: %(default)s)")
    group.add_argument("--no-mllm-cache", action="store_true", help="do not reuse or store MLLM answers")
    group.add_argument("--mllm-max-failures", type=fraction, default=0.1,
                       help="stop (exit 3) when more than this share of a stream's MLLM requests fail or give "
                            "unusable answers (default: %(default)s)")


def add_ants_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ANTS (adaptive negative textual space)")
    group.add_argument("--ants-preset", choices=("paper", "authors"), default="paper",
                       help="'paper' = SPEC defaults; 'authors' = every rule of the authors' code, to reproduce "
                            "their numbers (options below override the preset) (default: %(default)s)")
    group.add_argument("--ants-mode", choices=("online", "two-pass"), default="online",
                       help="online = the paper; two-pass = banks from the whole set, order-independent (default: %(default)s)")
    group.add_argument("--ants-score", choices=("ada", "ens", "vsnl", "neglabel"),
                       help="score (default: ada; with --negative-space: as saved)")
    group.add_argument("--ants-lam", type=fraction, help="fixed weight of ENS vs VSNL (ablation); default adaptive")
    group.add_argument("--ants-lam-rule", choices=("paper", "authors", "crossfit"),
                       help=f"adaptive lam: Eq. 15 with the current banks, the authors' running mean, or the "
                            f"experimental crossfit (default: {_ANTS.lam_rule}; authors preset: authors)")
    group.add_argument("--ants-threshold", choices=("paper", "histogram"),
                       help=f"negative-image threshold rule (default: {_ANTS.threshold})")
    group.add_argument("--ants-similar-classes", choices=("frequency", "history_top40"),
                       help=f"visually similar ID-class rule (default: {_ANTS.similar_classes})")
    group.add_argument("--ants-ens-score", choices=("grouped", "activation"),
                       help=f"ENS score: grouped, or the authors' activation-aware one (default: {_ANTS.ens_score})")
    group.add_argument("--ants-activation-negatives", type=positive_int,
                       help=f"activation-aware ENS: sentences kept (default: {_ANTS.activation_negatives})")
    group.add_argument("--ants-ens-stop-step", type=non_negative_int, help="at most this many ENS updates (default: no limit; authors: 20)")
    group.add_argument("--ants-no-strip-class-names", dest="ants_strip_class_names", action="store_const", const=False,
                       help="keep the predicted class name in descriptions (the authors' preset does)")
    group.add_argument("--ants-vsnl-start", type=positive_int, help=f"first VSNL update at this batch (default: {_ANTS.vsnl_start})")
    group.add_argument("--ants-schedule", choices=("default", "scaled"), default="default",
                       help="'scaled' fits the bank-update schedule to a stream smaller than ImageNet's (default: %(default)s)")
    group.add_argument("--ants-diversity", choices=("none", "kcenter"), default="none",
                       help="describe a k-center spread of the negatives instead of all (default: %(default)s)")
    group.add_argument("--ants-diversity-size", type=positive_int, default=_ANTS.diversity_size, help="negatives described per update with kcenter (default: %(default)s)")
    group.add_argument("--max-mllm-calls", type=non_negative_int, help=f"MLLM requests per stream (default: {_ANTS.max_mllm_calls}; authors: no limit)")
    group.add_argument("--ants-request-batch", type=positive_int, default=_ANTS.mllm_batch_size, help="MLLM requests sent together (default: %(default)s)")
    group.add_argument("--ants-mllm-lag", type=non_negative_int,
                       help=f"online: 0 = a batch is scored after its own bank updates (the authors' order); N >= 1 = "
                            f"the MLLM works in the background and its answers reach the banks before batch t+N "
                            f"(default: {_ANTS.mllm_lag})")
    group.add_argument("--negative-space", type=Path, help="score with a saved negative space (no MLLM needed)")
    group.add_argument("--explanations", type=non_negative_int, default=100, help="most OOD-looking images explained per set (default: %(default)s)")


def load_mllm_from_args(args: argparse.Namespace) -> Any:
    from negspace.mllm import load_mllm

    return load_mllm(
        args.mllm,
        text_spec=args.mllm_text,
        cache=not (args.no_mllm_cache or args.no_cache),
        cache_dir=args.cache_dir,
        image_size=args.mllm_image_size,
        max_concurrency=args.mllm_concurrency,
        timeout=args.mllm_timeout,
        retries=args.mllm_retries,
        max_wait=args.mllm_max_wait,
        api_key_env=args.mllm_api_key_env,
        device=args.device,
        batch_size=args.mllm_batch_size,
    )


# ANTSConfig fields set by an option only when the option is given (otherwise the preset's value).
_PRESET_OPTIONS = {
    "ants_threshold": "threshold", "ants_similar_classes": "similar_classes", "ants_lam_rule": "lam_rule",
    "ants_ens_score": "ens_score", "ants_activation_negatives": "activation_negatives",
    "ants_ens_stop_step": "ens_stop_step", "ants_strip_class_names": "strip_class_names",
    "max_mllm_calls": "max_mllm_calls", "ants_mllm_lag": "mllm_lag", "ants_vsnl_start": "vsnl_start",
}
# Other options that shape how a space is learned, with their defaults: a loaded space keeps its own.
_LEARNING_DEFAULTS = {
    "ants_mode": "online", "ants_preset": "paper", "ants_schedule": "default", "ants_diversity": "none",
    "tau": _ANTS.tau, "groups": _ANTS.groups,
}


def _load_space(args: argparse.Namespace, encoder: Any, class_names: Sequence[str], mllm: Any,
                scoring: dict[str, str]) -> ANTS:
    """A saved space: frozen, or learning further when ``--mllm`` is given.

    ``--ants-score`` and ``--ants-lam`` apply to it; options that shaped the learning are the
    saved ones (a warning names any that was given and is ignored).
    """
    try:
        detector = ANTS.load(args.negative_space, text_encoder=encoder, mllm=mllm, **scoring)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise NegspaceError(f"Cannot load the negative space {args.negative_space}: {err}.") from None
    if list(detector.class_names) != list(class_names):
        raise NegspaceError(f"The negative space {args.negative_space} was learned for other classes than --classes {args.classes}.")
    if detector.id_text_features.shape[1] != encoder.dim:
        raise NegspaceError(f"The negative space {args.negative_space} has dimension {detector.id_text_features.shape[1]}, the model {encoder.dim}.")
    ignored = [f"--{name.replace('_', '-')}" for name, default in _LEARNING_DEFAULTS.items() if getattr(args, name) != default]
    ignored += [f"--{name.replace('_', '-')}" for name in _PRESET_OPTIONS if getattr(args, name) is not None]
    if ignored:
        log.warning("%s ignored: the negative space %s keeps the settings it was learned with", ", ".join(ignored), args.negative_space)
    overrides = {"mode": args.ants_score} if args.ants_score is not None else {}
    if args.ants_lam is not None:
        overrides["lam"] = args.ants_lam
    if overrides:
        detector.config = replace(detector.config, **overrides)
    detector.encoder = encoder
    return detector


def build_ants(args: argparse.Namespace, encoder: Any, class_names: Sequence[str], mined: Any, n_stream: int,
               mllm: Any = None, scoring: dict[str, str] | None = None) -> ANTS:
    """ANTS from the command line: a saved space (frozen, or learning on with ``mllm``), or a
    fresh one that learns with ``mllm`` (loaded and checked by the caller from ``--mllm``).
    ``scoring`` holds the ``backend``/``device`` keywords (``--scoring-backend``)."""
    scoring = scoring or {}
    if args.negative_space is not None:
        return _load_space(args, encoder, class_names, mllm, scoring)
    score = args.ants_score or "ada"
    if args.mllm is None and score != "neglabel":
        raise NegspaceError("ANTS needs a multimodal LLM: pass --mllm SPEC (see 'Using an MLLM' in the README) or --negative-space DIR.")
    schedule = scaled_schedule(n_stream, args.batch_size) if args.ants_schedule == "scaled" else {}
    given = {field: getattr(args, option) for option, field in _PRESET_OPTIONS.items() if getattr(args, option) is not None}
    preset = ANTSConfig.authors if args.ants_preset == "authors" else ANTSConfig
    config = preset(
        tau=args.tau,
        groups=args.groups,
        seed=args.seed,
        two_pass=args.ants_mode == "two-pass",
        mode=score,
        lam=args.ants_lam,
        mllm_batch_size=args.ants_request_batch,
        diversity=None if args.ants_diversity == "none" else args.ants_diversity,
        diversity_size=args.ants_diversity_size,
        **{**schedule, **given},
    )
    return ANTS.from_encoder(encoder, class_names, mined, mllm, config=config, **scoring)


@dataclass
class StreamRecorder:
    """Keeps what ANTS learned from each OOD set's stream before the next reset.

    Saves each set's negative space under ``out_dir/negative_space/NAME`` (reusable with
    ``--negative-space``), collects the explanations of the most OOD-looking images and the run
    accounting (MLLM calls, bank sizes, lam) per set.
    """

    out_dir: Path
    n_explained: int = 100
    max_failures: float = 0.1  # stop when more than this share of a stream's MLLM requests is lost
    run_info: dict[str, Any] = field(default_factory=dict)
    explanation_rows: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # the stream whose MLLM failures stopped the run
    # the MLLM backend's counters already accounted for (shared by the recorders of one MLLM)
    stats_seen: dict[str, int] = field(default_factory=dict)

    def __call__(self, ood_name: str, detector: Any, stream: EncodedSet, scores: np.ndarray) -> bool:
        """Record one stream; ``True`` (stop the run) when too many of its MLLM requests were lost."""
        detector.save(self.out_dir / "negative_space" / ood_name)
        info = detector.run_info()
        stats = getattr(detector.mllm, "stats", None)
        if stats is not None:  # the backend's counters are cumulative: this stream's share
            now = stats.as_dict()
            info["mllm_stats"] = {key: value - self.stats_seen.get(key, 0) for key, value in now.items()}
            self.stats_seen.clear()
            self.stats_seen.update(now)
            if info["mllm_stats"].get("cache_hits"):  # a repeated or resumed run says what it reused
                log.info("ANTS stream %s: %d of %d MLLM answers from the cache", ood_name,
                         info["mllm_stats"]["cache_hits"], info["mllm_requests"])
        asked, lost = info["mllm_requests"], info["mllm_failed_answers"] + info["mllm_rejected_answers"]
        info["mllm_answers_used"] = asked - lost
        info["banks_incomplete"] = lost > 0
        self.run_info[ood_name] = info
        rows = detector.explanation_rows(stream.features, stream.sample_ids, scores=scores, n_images=self.n_explained)
        self.explanation_rows += [{"ood_set": ood_name, **row} for row in rows]
        if asked and lost / asked > self.max_failures:
            self.stopped = ood_name
        return self.stopped is not None

    def shortfalls(self) -> list[str]:
        """One line per stream whose banks were built from fewer MLLM answers than were asked for."""
        return [f"ANTS stream {name}: banks built from {info['mllm_answers_used']} of {info['mllm_requests']} MLLM "
                f"answers ({info['mllm_failed_answers']} requests failed, {info['mllm_rejected_answers']} answers "
                f"unusable)" for name, info in self.run_info.items() if info["banks_incomplete"]]

    def write(self, mllm: Any = None) -> dict[str, Any]:
        """Write ``explanations.csv``; return the accounting for ``metrics.json``.

        ``mllm_requests`` counts what ANTS asked for (every stream, cached answers included);
        ``mllm_calls`` what reached the model (cache hits excluded), from the backend's stats;
        ``mllm_stats`` the backend's counters over the run (per stream: ``ants.NAME.mllm_stats``).
        """
        if self.explanation_rows:
            write_explanations_csv(self.out_dir / "explanations.csv", self.explanation_rows)
        requests = sum(info.get("mllm_requests", 0) for info in self.run_info.values())
        stats = mllm.stats.as_dict() if mllm is not None and hasattr(mllm, "stats") else None
        return {
            "ants": self.run_info,
            "mllm_requests": requests,
            "mllm_calls": stats["calls"] if stats else 0,
            "mllm_stats": stats,
        }
