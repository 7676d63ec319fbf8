"""The command line's shared options: argument types (bad input fails at parse time with one
sentence naming the option), the option groups several commands share, and the functions that
turn parsed options into the run's configs (nothing below the command line sees the options)."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from negspace.backend import BACKENDS
from negspace.corpus.mining import SPLITS, MiningConfig
from negspace.detectors.ants.config import ANTSConfig
from negspace.encoders import PREPROCESS_CHOICES, RUNTIMES
from negspace.errors import NegspaceError
from negspace.runconfig import DEFAULT_MODEL, ANTSRunConfig, MLLMConfig, ModelConfig

MAX_SEED = 2**32 - 1  # numpy and torch both accept every seed up to here


Number = TypeVar("Number", int, float)


def _number(
    kind: type[Number], minimum: float, strict: bool, what: str, maximum: float = math.inf
) -> Callable[[str], Number]:
    """A parser of finite numbers of ``kind`` above ``minimum`` (``strict``: not equal to it) and
    at most ``maximum``; argparse names the option and ``what`` in its message."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum) or value > maximum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a number >= 0")


fraction = _number(float, 0.0, False, "a number between 0 and 1", maximum=1.0)
positive_fraction = _number(float, 0.0, True, "a number in (0, 1]", maximum=1.0)
percent = _number(float, 0.0, False, "a percentage between 0 and 100", maximum=100.0)


def finite_float(text: str) -> float:
    """Any finite number (a score threshold): NaN and infinities would flag nothing or everything."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def seed(text: str) -> int:
    """A seed every method accepts: an integer in ``[0, 2**32 - 1]``."""
    value = non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer between 0 and {MAX_SEED}, got {text}")
    return value


def check_output_file(path: Path, option: str) -> None:
    """Fail now, not after the work, when ``path`` cannot be written as a file."""
    if path.is_dir():
        raise NegspaceError(f"{option} {path} is a folder; give a file name.")
    parent = path.parent if str(path.parent) else Path()
    if not parent.is_dir():
        raise NegspaceError(f"{option} {path}: the folder {parent} does not exist.")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".negspace-write-test-"):
            pass
    except OSError as err:
        raise NegspaceError(f"{option} {path}: cannot write in {parent} ({err.strerror}).") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise NegspaceError(f"{option} {path} exists and cannot be overwritten.")


def corpus(text: str) -> str:
    """``--corpus``/``--tanl-corpus``: a WordNet selection, or a corpus file of one's own."""
    from negspace.corpus.custom import is_corpus_spec
    from negspace.corpus.wordnet import SELECTIONS

    if not is_corpus_spec(text):
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(SELECTIONS)} or a corpus file (one word per line, or word<TAB>noun|adj), "
            f"got {text!r}, which is neither"
        )
    return text


# ------------------------------------------------------------------------------ option groups

_MINING = MiningConfig()  # the paper defaults the options show
_ANTS = ANTSConfig()
_MLLM = MLLMConfig(spec="")
CACHE_DIR_HELP = (
    "cache folder of features, mined labels and MLLM answers (default: $NEGSPACE_CACHE_DIR or the XDG cache)"
)


def add_runtime_option(group: argparse._ArgumentGroup) -> None:
    """``--runtime``, the library that runs the model (every command that loads one)."""
    group.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="what runs the model: torch, or onnxruntime (the towers exported to ONNX once, cached, "
        "run by ONNX Runtime on the CPU; pip install 'negspace[onnx]') (default: %(default)s)",
    )


def add_model_options(parser: argparse.ArgumentParser, images: bool = True) -> None:
    """The model's options; ``images=False`` leaves out those only image encoding uses."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=DEFAULT_MODEL, help="openclip:ARCH/PRETRAINED or hf:NAME_OR_PATH (default: %(default)s)"
    )
    group.add_argument("--weights", type=Path, help="local weights file or folder, used instead of downloading")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add_runtime_option(group)
    if not images:
        group.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
        group.add_argument("--no-cache", action="store_true", help="encode everything afresh, write no cache")
        return
    group.add_argument(
        "--scoring-backend",
        choices=BACKENDS,
        default="numpy",
        help="where the detectors score: numpy on the CPU, or torch on --device, which keeps "
        "features and text banks on a GPU (default: %(default)s)",
    )
    group.add_argument(
        "--preprocess", choices=PREPROCESS_CHOICES, default="model", help="image transform (default: %(default)s)"
    )
    group.add_argument("--cache-dir", type=Path, help=CACHE_DIR_HELP)
    group.add_argument("--no-cache", action="store_true", help="encode everything afresh, write no cache")
    group.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="processes decoding images while the model encodes (0: none; default: the usable cores, at most 8)",
    )
    group.add_argument(
        "--features",
        type=Path,
        metavar="TABLE",
        help="features from `negspace embed` (a Parquet folder or file): image files with the same "
        "contents are not encoded again",
    )


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        spec=args.model,
        weights=args.weights,
        device=args.device,
        preprocess=getattr(args, "preprocess", "model"),
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        workers=getattr(args, "workers", None),
        features=getattr(args, "features", None),
        progress=not args.quiet,
        runtime=getattr(args, "runtime", "torch"),
    )


def add_mining_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("negative-label mining (NegLabel)")
    group.add_argument(
        "--corpus",
        type=corpus,
        default=_MINING.corpus,
        help="where negatives are mined from: a WordNet selection (neglabel, all) or a file of your "
        "own vocabulary, one word per line or word<TAB>noun|adj (default: %(default)s)",
    )
    group.add_argument(
        "--num-negatives",
        type=positive_int,
        default=_MINING.num_negatives,
        help="M, labels kept (default: %(default)s)",
    )
    group.add_argument(
        "--percentile",
        type=percent,
        default=_MINING.percentile,
        help="percentile of ID similarity (default: %(default)s)",
    )
    group.add_argument(
        "--split",
        choices=SPLITS,
        default=_MINING.split,
        help="how M is split between nouns and adjectives (default: %(default)s)",
    )
    group.add_argument(
        "--per-part-fraction",
        type=positive_fraction,
        default=_MINING.per_part_fraction,
        help="fraction per part with --split per_part (default: %(default)s)",
    )


def mining_config(args: argparse.Namespace) -> MiningConfig:
    try:
        return MiningConfig(args.num_negatives, args.percentile, args.split, args.per_part_fraction, args.corpus)
    except ValueError as err:
        raise NegspaceError(f"Invalid mining option: {err}.") from None


def add_collection_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands over a large collection (`score`, `embed`), with the model's."""
    parser.add_argument(
        "--chunk-size", type=positive_int, default=4096, help="images per Parquet part (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: %(default)s)")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: a Ray Data pipeline, decoding in tasks and encoding in an "
        "actor pool (pip install 'negspace[ray]') (default: %(default)s)",
    )
    parser.add_argument("--ray-address", help="with --engine ray: an existing cluster (default: start a local Ray)")
    parser.add_argument(
        "--ray-actors",
        type=positive_int,
        help="with --engine ray: model actors (default: one per GPU of the cluster, else 1)",
    )
    parser.add_argument(
        "--ray-timeout",
        type=positive_float,
        default=30.0,
        help="with --ray-address: seconds to wait for the cluster before giving up (default: %(default)s)",
    )
    add_model_options(parser)


def add_mllm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multimodal LLM (ANTS) and LLM (NegRefine's label filter)")
    group.add_argument("--mllm", help="openai:BASE_URL/MODEL (any OpenAI-compatible server) or hf:NAME_OR_PATH")
    group.add_argument(
        "--llm",
        help="NegRefine: the text-only chat model that filters its labels, as --mllm "
        "(default: --mllm's model; without either the filter is skipped)",
    )
    group.add_argument("--mllm-text", help="a separate model for text-only prompts (VSNL); default: --mllm")
    group.add_argument(
        "--mllm-concurrency",
        type=positive_int,
        default=_MLLM.concurrency,
        help="requests in flight (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-timeout", type=positive_float, default=_MLLM.timeout, help="seconds per request (default: %(default)s)"
    )
    group.add_argument(
        "--mllm-retries",
        type=non_negative_int,
        default=_MLLM.retries,
        help="retries per request (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-max-wait",
        type=positive_float,
        default=_MLLM.max_wait,
        help="longest wait between attempts, a server's Retry-After included, s (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-image-size",
        type=positive_int,
        default=_MLLM.image_size,
        help="longest side sent, px (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-api-key-env", default=_MLLM.api_key_env, help="env variable with the API key (default: %(default)s)"
    )
    group.add_argument(
        "--mllm-batch-size",
        type=positive_int,
        default=_MLLM.batch_size,
        help="batch of a local hf: model (default: %(default)s)",
    )
    group.add_argument("--no-mllm-cache", action="store_true", help="do not reuse or store MLLM answers")
    group.add_argument(
        "--mllm-max-failures",
        type=fraction,
        default=ANTSRunConfig().max_failures,
        help="stop (exit 3) when more than this share of a stream's MLLM requests fail or give "
        "unusable answers (default: %(default)s)",
    )


def mllm_config(args: argparse.Namespace, prefer_llm: bool = False) -> MLLMConfig | None:
    """The MLLM of ``--mllm`` (``None`` without one); with ``prefer_llm`` (NegRefine), the model of
    ``--llm`` when it is given."""
    spec = args.llm if prefer_llm and getattr(args, "llm", None) else args.mllm
    if spec is None:
        return None
    return MLLMConfig(
        spec=spec,
        text_spec=args.mllm_text,
        use_cache=not (args.no_mllm_cache or args.no_cache),
        cache_dir=args.cache_dir,
        image_size=args.mllm_image_size,
        concurrency=args.mllm_concurrency,
        timeout=args.mllm_timeout,
        retries=args.mllm_retries,
        max_wait=args.mllm_max_wait,
        api_key_env=args.mllm_api_key_env,
        device=args.device,
        batch_size=args.mllm_batch_size,
    )


def add_ants_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ANTS (adaptive negative textual space)")
    group.add_argument(
        "--ants-preset",
        choices=("paper", "authors"),
        default="paper",
        help="'paper' = the paper's defaults; 'authors' = every rule of the authors' code, to reproduce "
        "their numbers (options below override the preset) (default: %(default)s)",
    )
    group.add_argument(
        "--ants-mode",
        choices=("online", "two-pass"),
        default="online",
        help="online = the paper; two-pass = banks from the whole set, order-independent (default: %(default)s)",
    )
    group.add_argument(
        "--ants-score",
        choices=("ada", "ens", "vsnl", "neglabel"),
        help="score (default: ada; with --negative-space: as saved)",
    )
    group.add_argument("--ants-lam", type=fraction, help="fixed weight of ENS vs VSNL (ablation); default adaptive")
    group.add_argument(
        "--ants-lam-rule",
        choices=("paper", "authors", "crossfit"),
        help=f"adaptive lam: Eq. 15 with the current banks, the authors' running mean, or the "
        f"experimental crossfit (default: {_ANTS.lam_rule}; authors preset: authors)",
    )
    group.add_argument(
        "--ants-threshold",
        choices=("paper", "histogram"),
        help=f"negative-image threshold rule (default: {_ANTS.threshold})",
    )
    group.add_argument(
        "--ants-similar-classes",
        choices=("frequency", "history_top40"),
        help=f"visually similar ID-class rule (default: {_ANTS.similar_classes})",
    )
    group.add_argument(
        "--ants-ens-score",
        choices=("grouped", "activation"),
        help=f"ENS score: grouped, or the authors' activation-aware one (default: {_ANTS.ens_score})",
    )
    group.add_argument(
        "--ants-activation-negatives",
        type=positive_int,
        help=f"activation-aware ENS: sentences kept (default: {_ANTS.activation_negatives})",
    )
    group.add_argument(
        "--ants-ens-stop-step",
        type=non_negative_int,
        help="at most this many ENS updates (default: no limit; authors: 20)",
    )
    group.add_argument(
        "--ants-no-strip-class-names",
        dest="ants_strip_class_names",
        action="store_const",
        const=False,
        help="keep the predicted class name in descriptions (the authors' preset does)",
    )
    group.add_argument(
        "--ants-vsnl-start", type=positive_int, help=f"first VSNL update at this batch (default: {_ANTS.vsnl_start})"
    )
    group.add_argument(
        "--ants-schedule",
        choices=("default", "scaled"),
        default="default",
        help="'scaled' fits the bank-update schedule to a stream smaller than ImageNet's (default: %(default)s)",
    )
    group.add_argument(
        "--ants-diversity",
        choices=("none", "kcenter"),
        default="none",
        help="describe a k-center spread of the negatives instead of all (default: %(default)s)",
    )
    group.add_argument(
        "--ants-diversity-size",
        type=positive_int,
        default=_ANTS.diversity_size,
        help="negatives described per update with kcenter (default: %(default)s)",
    )
    group.add_argument(
        "--max-mllm-calls",
        type=non_negative_int,
        help=f"MLLM requests per stream (default: {_ANTS.max_mllm_calls}; authors: no limit)",
    )
    group.add_argument(
        "--ants-request-batch",
        type=positive_int,
        default=_ANTS.mllm_batch_size,
        help="MLLM requests sent together (default: %(default)s)",
    )
    group.add_argument(
        "--ants-mllm-lag",
        type=non_negative_int,
        help=f"online: 0 = a batch is scored after its own bank updates (the authors' order); N >= 1 = "
        f"the MLLM works in the background and its answers reach the banks before batch t+N "
        f"(default: {_ANTS.mllm_lag})",
    )
    group.add_argument("--negative-space", type=Path, help="score with a saved negative space (no MLLM needed)")
    group.add_argument(
        "--explanations",
        type=non_negative_int,
        default=ANTSRunConfig().explanations,
        help="most OOD-looking images explained per set (default: %(default)s)",
    )


# ANTSConfig fields set by an option only when the option is given (otherwise the preset's value).
ANTS_PRESET_OPTIONS = {
    "ants_threshold": "threshold",
    "ants_similar_classes": "similar_classes",
    "ants_lam_rule": "lam_rule",
    "ants_ens_score": "ens_score",
    "ants_activation_negatives": "activation_negatives",
    "ants_ens_stop_step": "ens_stop_step",
    "ants_strip_class_names": "strip_class_names",
    "max_mllm_calls": "max_mllm_calls",
    "ants_mllm_lag": "mllm_lag",
    "ants_vsnl_start": "vsnl_start",
}


def ants_config(args: argparse.Namespace, tau: float, groups: int) -> tuple[ANTSConfig, frozenset[str]]:
    """ANTS's config from its options (the preset, then every option given), and the fields the
    options set explicitly (a scaled schedule leaves them)."""
    given = {
        name: getattr(args, option) for option, name in ANTS_PRESET_OPTIONS.items() if getattr(args, option) is not None
    }
    preset = ANTSConfig.authors if args.ants_preset == "authors" else ANTSConfig
    config = preset(
        tau=tau,
        groups=groups,
        seed=args.seed,
        two_pass=args.ants_mode == "two-pass",
        mode=args.ants_score or "ada",
        lam=args.ants_lam,
        mllm_batch_size=args.ants_request_batch,
        diversity=None if args.ants_diversity == "none" else args.ants_diversity,
        diversity_size=args.ants_diversity_size,
        **given,
    )
    return config, frozenset(given)


def ants_run_config(args: argparse.Namespace, keep: frozenset[str]) -> ANTSRunConfig:
    return ANTSRunConfig(
        schedule=args.ants_schedule,
        keep=keep,
        negative_space=args.negative_space,
        mode=args.ants_score,
        lam=args.ants_lam,
        explanations=args.explanations,
        max_failures=args.mllm_max_failures,
    )
