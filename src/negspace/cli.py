"""The ``negspace`` command line: ``eval``, ``mine`` and ``demo-data``.

Errors a user can fix (a bad path, missing weights, a malformed class list) are printed as one
sentence on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace import __version__, cli_ants, cli_args
from negspace.classnames import ClassList, load_class_names
from negspace.cli_args import check_output_file, positive_int, seed
from negspace.corpus.labelfile import clean_labels, read_label_file, read_label_file_settings, write_label_file
from negspace.corpus.mining import (
    ADJECTIVE_TEMPLATE,
    NOUN_TEMPLATE,
    SPLITS,
    MinedNegatives,
    MiningConfig,
    mine_negative_labels,
)
from negspace.data import ImageSet, parse_named_set
from negspace.detectors.adaneg import AdaNeg, AdaNegConfig
from negspace.detectors.ants import ANTS
from negspace.detectors.base import Detector, OnlineDetector
from negspace.detectors.mcm import MCM, MCMConfig
from negspace.detectors.neglabel import DEFAULT_GROUPS, NegLabel
from negspace.backend import BACKENDS
from negspace.features_table import FeatureTable
from negspace.bench.suites import suite_names
from negspace.detectors.tanl import DEFAULT_CORPUS as TANL_DEFAULT_CORPUS
from negspace.detectors.tanl import TANL, TANLConfig
from negspace.encoders import PREPROCESS_CHOICES, load_encoder
from negspace.errors import NegspaceError
from negspace.redact import redact_credentials
from negspace.evaluate import (
    STREAM_MODES,
    EncodedSet,
    Evaluation,
    FeatureFile,
    encode_set,
    evaluate_detector,
    evaluate_stream,
    open_set,
)
from negspace.report import format_table, write_report
from negspace.scoring import DEFAULT_TAU

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger("negspace")

DEFAULT_MODEL = "openclip:ViT-B-16/openai"
# The paper defaults the options show, read from the configs: the CLI never restates one.
_MINING = MiningConfig()
_MCM, _TANL, _ADANEG = MCMConfig(), TANLConfig(), AdaNegConfig()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL, help="openclip:ARCH/PRETRAINED or hf:NAME_OR_PATH (default: %(default)s)")
    group.add_argument("--weights", type=Path, help="local weights file or folder, used instead of downloading")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    group.add_argument("--scoring-backend", choices=BACKENDS, default="numpy",
                       help="where the detectors score: numpy on the CPU, or torch on --device, which keeps "
                            "features and text banks on a GPU (default: %(default)s)")
    group.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default="model", help="image transform (default: %(default)s)")
    group.add_argument("--cache-dir", type=Path, help="cache folder of features, mined labels and MLLM answers (default: $NEGSPACE_CACHE_DIR or the XDG cache)")
    group.add_argument("--no-cache", action="store_true", help="encode everything afresh, write no cache")
    group.add_argument("--workers", type=cli_args.non_negative_int, default=None,
                       help="processes decoding images while the model encodes (0: none; default: the usable "
                            "cores, at most 8)")
    group.add_argument("--features", type=Path, metavar="TABLE",
                       help="features from `negspace embed` (a Parquet folder or file): image files with the same "
                            "contents are not encoded again")


def _add_mining_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("negative-label mining (NegLabel)")
    group.add_argument("--corpus", type=cli_args.corpus, default=_MINING.corpus,
                       help="where negatives are mined from: a WordNet selection (neglabel, all) or a file of your "
                            "own vocabulary, one word per line or word<TAB>noun|adj (default: %(default)s)")
    group.add_argument("--num-negatives", type=positive_int, default=_MINING.num_negatives, help="M, labels kept (default: %(default)s)")
    group.add_argument("--percentile", type=cli_args.percent, default=_MINING.percentile, help="percentile of ID similarity (default: %(default)s)")
    group.add_argument("--split", choices=SPLITS, default=_MINING.split, help="how M is split between nouns and adjectives (default: %(default)s)")
    group.add_argument("--per-part-fraction", type=cli_args.positive_fraction, default=0.15, help="fraction per part with --split per_part (default: %(default)s)")


def _add_collection_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands over a large collection (`score`, `embed`), with the model's."""
    parser.add_argument("--chunk-size", type=positive_int, default=4096, help="images per Parquet part (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: %(default)s)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process; ray: a Ray Data pipeline, decoding in tasks and encoding in an "
                             "actor pool (pip install 'negspace[ray]') (default: %(default)s)")
    parser.add_argument("--ray-address", help="with --engine ray: an existing cluster (default: start a local Ray)")
    parser.add_argument("--ray-actors", type=positive_int,
                        help="with --engine ray: model actors (default: one per GPU of the cluster, else 1)")
    _add_model_options(parser)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # -v / -q work before the command and after it (SUPPRESS: a sub-command never resets them).
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only, no progress bars")
    parser = argparse.ArgumentParser(prog="negspace", description="Zero-shot OOD detection with vision-language models.")
    parser.add_argument("--version", action="version", version=f"negspace {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("eval", parents=[common], help="score ID and OOD sets and report AUROC / FPR95 / AUPR")
    ev.add_argument("--method", choices=sorted(METHODS), required=True,
                    help="mcm, neglabel (static); ants (needs --mllm), tanl, adaneg (test-time: see --stream)")
    ev.add_argument("--classes", required=True, help="'imagenet' or a text file with one class name per line")
    ev.add_argument("--id", dest="id_set", required=True, help="ID images: folder, path list, LIST:ROOT, or .npy features")
    ev.add_argument("--ood", action="append", required=True, metavar="NAME=PATH", help="an OOD set (repeatable)")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: %(default)s)")
    ev.add_argument("--seed", type=seed, default=0, help="seed of the grouping and of the test stream's shuffle (default: %(default)s)")
    ev.add_argument("--out", type=Path, help="results folder, new or empty (default: runs/METHOD-TIMESTAMP)")
    ev.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out: its previous results are removed first")
    ev.add_argument("--save-detector", type=Path, metavar="DIR",
                    help="save the detector after the run as plain files (test-time methods: the state the last "
                         "stream left), for `negspace.load_detector` and `negspace score`")
    ev.add_argument("--stream", choices=STREAM_MODES, default="per-set",
                    help="test-time methods: per-set = one ID+OOD stream per OOD set, reset between them (the papers); "
                         "sequential = the same streams one after another, no reset (temporal shift); "
                         "mixed = ID and every OOD set in one stream (default: %(default)s)")
    _add_model_options(ev)
    method = ev.add_argument_group("method parameters")
    method.add_argument("--temperature", type=cli_args.positive_float, default=_MCM.temperature, help="MCM softmax temperature (default: %(default)s)")
    method.add_argument("--tau", type=cli_args.positive_float, default=DEFAULT_TAU, help="NegLabel temperature (default: %(default)s)")
    method.add_argument("--groups", type=positive_int, default=DEFAULT_GROUPS, help="NegLabel groups G (default: %(default)s)")
    method.add_argument("--negatives", type=Path, help="negative-label file from 'negspace mine' (skips mining)")
    tanl = ev.add_argument_group("TANL (test-time activated negative labels)")
    tanl.add_argument("--tanl-corpus", type=cli_args.corpus, default=TANL_DEFAULT_CORPUS,
                      help="label pool: a WordNet selection (neglabel, all) or a corpus file, as --corpus (default: %(default)s)")
    tanl.add_argument("--tanl-alpha", type=cli_args.fraction, default=_TANL.alpha, help="history vs batch activation, 1 = distribution-adaptive (default: %(default)s)")
    tanl.add_argument("--tanl-beta", type=positive_int, default=_TANL.beta, help="activated labels kept (default: %(default)s)")
    tanl.add_argument("--tanl-step", type=positive_int, default=_TANL.step, help="activation-aware score step s (default: %(default)s)")
    tanl.add_argument("--tanl-queue-length", type=positive_int, default=_TANL.queue_length, help="confident ID/OOD queue length (default: %(default)s)")
    tanl.add_argument("--tanl-g", type=cli_args.fraction, default=_TANL.g, help="confidence margin around the Otsu threshold (default: %(default)s)")
    tanl.add_argument("--tanl-otsu-window", type=positive_int, default=_TANL.otsu_window, help="scores kept for Otsu (default: %(default)s)")
    adaneg = ev.add_argument_group("AdaNeg (adaptive negative proxies)")
    adaneg.add_argument("--adaneg-proxy", choices=("task", "sample"), default=_ADANEG.proxy, help="proxy kind (default: %(default)s)")
    adaneg.add_argument("--adaneg-memory-length", type=positive_int, default=_ADANEG.memory_length, help="slots per label, slot 0 = text (default: %(default)s)")
    adaneg.add_argument("--adaneg-gamma", type=cli_args.fraction, default=_ADANEG.gamma, help="caching threshold (default: %(default)s)")
    adaneg.add_argument("--adaneg-g", type=cli_args.fraction, default=_ADANEG.g, help="caching margin (default: %(default)s)")
    adaneg.add_argument("--adaneg-groups", type=positive_int, default=_ADANEG.groups, help="groups of the AdaNeg score (default: %(default)s)")
    adaneg.add_argument("--adaneg-sample-scale", type=cli_args.non_negative_float, default=_ADANEG.sample_weight_scale, help="sample-adaptive weight scale (default: %(default)s)")
    adaneg.add_argument("--adaneg-nl-weight", type=cli_args.non_negative_float, default=_ADANEG.nl_weight, help="weight of the NegLabel term (default: %(default)s)")
    cli_ants.add_ants_options(ev)
    cli_ants.add_mllm_options(ev)
    _add_mining_options(ev)
    ev.set_defaults(run=run_eval)

    mine = commands.add_parser("mine", parents=[common], help="mine NegLabel negative labels and write them to a file")
    mine.add_argument("--classes", required=True, help="'imagenet' or a text file with one class name per line")
    mine.add_argument("-o", "--output", type=Path, required=True, help="label file to write")
    _add_model_options(mine)
    _add_mining_options(mine)
    mine.set_defaults(run=run_mine)

    cache = commands.add_parser("cache", parents=[common], help="inspect or clear the feature and MLLM caches")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    stats = cache_commands.add_parser("stats", parents=[common], help="entries and size of each cache")
    stats.add_argument("--cache-dir", type=Path, help="cache folder of features, mined labels and MLLM answers (default: $NEGSPACE_CACHE_DIR or the XDG cache)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=run_cache_stats)
    clear = cache_commands.add_parser("clear", parents=[common], help="delete cached features and/or MLLM answers")
    clear.add_argument("--cache-dir", type=Path, help="cache folder of features, mined labels and MLLM answers (default: $NEGSPACE_CACHE_DIR or the XDG cache)")
    clear.add_argument("--what", choices=("all", "features", "mllm"), default="all", help="which cache (default: %(default)s)")
    clear.add_argument("--yes", action="store_true", help="delete cached MLLM answers without asking")
    clear.set_defaults(run=run_cache_clear)

    bench = commands.add_parser("bench", parents=[common],
                                help="a paper benchmark in one command: every method, ours beside the published numbers")
    bench.add_argument("--list", action="store_true", help="list the suites, their folder layouts, counts and sources")
    bench.add_argument("--suite", help="the benchmark: " + ", ".join(suite_names()))
    bench.add_argument("--data-root", type=Path, help="the folder holding the suite's data sets (see --list)")
    bench.add_argument("--method", default="all", help="'all' or a comma-separated list of "
                       "mcm,neglabel,tanl,adaneg,ants; ANTS runs only with --mllm (default: %(default)s)")
    bench.add_argument("--limit", type=positive_int, help="a quick run: at most N images per set, sampled with --seed")
    bench.add_argument("--no-count-check", action="store_true", help="run on sets whose file count is not the expected one")
    bench.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: %(default)s)")
    bench.add_argument("--seed", type=seed, default=0, help="seed of the groupings, the streams and --limit (default: %(default)s)")
    bench.add_argument("--out", type=Path, help="results folder, new or empty (default: runs/bench-SUITE-TIMESTAMP)")
    bench.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    _add_model_options(bench)
    cli_ants.add_mllm_options(bench)
    cli_ants.add_ants_options(bench)
    bench.set_defaults(run=run_bench)

    sc = commands.add_parser("score", parents=[common],
                             help="score a large image collection: one Parquet row per image, resumable")
    sc.add_argument("sources", nargs="+", metavar="SOURCE",
                    help="image folders, .txt path lists, or .parquet/.csv tables of paths (FILE:COLUMN; column 'path' by default)")
    sc.add_argument("--out", type=Path, required=True, help="folder of Parquet parts to write (a re-run skips what is in it)")
    sc.add_argument("--detector", type=Path, help="a detector saved by `negspace eval --save-detector` or det.save()")
    sc.add_argument("--method", choices=sorted(METHODS), help="or a static method (mcm, neglabel), built from --classes")
    sc.add_argument("--classes", help="with --method: 'imagenet', a built-in list or a file, one name per line")
    sc.add_argument("--threshold", type=cli_args.finite_float, help="flag images scoring below this as OOD")
    sc.add_argument("--threshold-id", metavar="ID_IMAGES",
                    help="or choose the threshold that keeps 95%% of these ID images (folder or list)")
    _add_collection_options(sc)
    sc.set_defaults(run=run_score)

    em = commands.add_parser("embed", parents=[common],
                             help="image features as Parquet (path, sha256, feature), for eval, bench and score")
    em.add_argument("sources", nargs="+", metavar="SOURCE", help="image folders, .txt path lists, or .parquet/.csv tables of paths")
    em.add_argument("--out", type=Path, required=True, help="folder of Parquet parts to write (a re-run skips what is in it)")
    _add_collection_options(em)
    em.set_defaults(run=run_embed)

    demo = commands.add_parser("demo-data", parents=[common], help="write a tiny ID/OOD image set (real photos vs. patterns)")
    demo.add_argument("folder", type=Path, help="where to write id/ and ood/")
    demo.set_defaults(run=run_demo_data)
    return parser


def _encoder(args: argparse.Namespace) -> ClipEncoder:
    encoder = load_encoder(
        args.model,
        weights=args.weights,
        device=args.device,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        preprocess=args.preprocess,
    )
    encoder.show_progress = not args.quiet  # every bar, whoever asks for the encoding
    if getattr(args, "workers", None) is not None:
        encoder.workers = args.workers
    if getattr(args, "features", None) is not None:
        from negspace.features_table import import_into_cache, read_feature_table

        added = import_into_cache(read_feature_table(args.features), encoder)
        log.info("--features %s: %d image features ready in the cache", args.features, added)
    return encoder


def _mining_config(args: argparse.Namespace) -> MiningConfig:
    try:
        return MiningConfig(args.num_negatives, args.percentile, args.split, args.per_part_fraction, args.corpus)
    except ValueError as err:
        raise NegspaceError(f"Invalid mining option: {err}.") from None


def _mining_cache_dir(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    from negspace.cache import default_cache_dir

    return args.cache_dir or default_cache_dir()


def _negatives(args: argparse.Namespace, encoder: ClipEncoder, class_names: Sequence[str],
               notes: dict[str, Any]) -> MinedNegatives:
    """Mined labels, or ``--negatives`` cleaned (what was removed goes to ``notes``, for metrics.json)."""
    progress = not args.quiet
    if args.negatives is None:
        return mine_negative_labels(encoder, class_names, _mining_config(args), _mining_cache_dir(args), progress)
    nouns, adjectives, notes["negatives_file"] = _read_negatives_file(args, class_names)
    features = [encoder.encode_texts(nouns, template=NOUN_TEMPLATE, progress=progress)]
    if adjectives:
        features.append(encoder.encode_texts(adjectives, template=ADJECTIVE_TEMPLATE, progress=progress))
    return MinedNegatives(nouns + adjectives, np.concatenate(features), len(nouns), len(adjectives))


def _read_negatives_file(args: argparse.Namespace,
                         class_names: Sequence[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    """``--negatives``: its labels without ID names and repeats, what was removed, and a warning
    when the file was mined for another model or class list."""
    nouns, adjectives = read_label_file(args.negatives)
    cleaned = clean_labels(nouns, adjectives, class_names)
    settings = read_label_file_settings(args.negatives) or {}
    mismatched = {key: settings[key] for key, ours in (("model", args.model), ("classes", args.classes))
                  if key in settings and str(settings[key]) != str(ours)}
    if mismatched:
        log.warning("--negatives %s was mined with %s, not this run's %s: its labels may not suit it",
                    args.negatives, ", ".join(f"{k}={v}" for k, v in mismatched.items()),
                    ", ".join(f"{k}={getattr(args, k)}" for k in mismatched))
    for what, removed in (("ID class names", cleaned.id_names_removed), ("repeated labels", cleaned.duplicates_removed)):
        if removed:
            log.warning("--negatives %s: %d %s removed (e.g. %r)", args.negatives, len(removed), what, removed[0])
    report = {"path": str(args.negatives), "labels": len(cleaned.nouns) + len(cleaned.adjectives),
              "id_names_removed": len(cleaned.id_names_removed), "duplicates_removed": len(cleaned.duplicates_removed),
              "settings_mismatch": mismatched}
    return cleaned.nouns, cleaned.adjectives, report


@dataclass(frozen=True)
class BuildContext:
    """What a method builder may use: the options, the model, the classes, the stream length."""

    args: argparse.Namespace
    encoder: ClipEncoder
    class_names: Sequence[str]
    stream_size: int
    mllm: Any = None
    notes: dict[str, Any] = field(default_factory=dict)  # what building found, for metrics.json


def _checked_negatives(ctx: BuildContext) -> MinedNegatives:
    mined = _negatives(ctx.args, ctx.encoder, ctx.class_names, ctx.notes)
    if ctx.args.groups > len(mined.labels):
        raise NegspaceError(f"--groups {ctx.args.groups} is larger than the {len(mined.labels)} negative labels.")
    return mined


def backend_options(args: argparse.Namespace, encoder: ClipEncoder) -> dict[str, str]:
    """The detectors' ``backend``/``device`` keywords: torch scores on the encoder's device."""
    if args.scoring_backend == "numpy":
        return {}
    return {"backend": args.scoring_backend, "device": str(encoder.device)}


def scoring_backend(ctx: BuildContext) -> dict[str, str]:
    return backend_options(ctx.args, ctx.encoder)


def build_mcm(ctx: BuildContext) -> Detector:
    return MCM.from_encoder(ctx.encoder, ctx.class_names, temperature=ctx.args.temperature, **scoring_backend(ctx))


def build_neglabel(ctx: BuildContext) -> Detector:
    args = ctx.args
    mined = _checked_negatives(ctx)
    return NegLabel.from_mined(ctx.encoder, ctx.class_names, mined, tau=args.tau, groups=args.groups, seed=args.seed,
                               **scoring_backend(ctx))


def build_ants(ctx: BuildContext) -> Detector:
    mined = _checked_negatives(ctx) if ctx.args.negative_space is None else None
    return cli_ants.build_ants(ctx.args, ctx.encoder, ctx.class_names, mined, ctx.stream_size, ctx.mllm,
                               scoring_backend(ctx))


def build_tanl(ctx: BuildContext) -> Detector:
    args, encoder, class_names = ctx.args, ctx.encoder, ctx.class_names
    return TANL.from_encoder(
        encoder,
        class_names,
        corpus=args.tanl_corpus,
        noise_seed=args.seed,
        progress=not args.quiet,
        tau=args.tau,
        queue_length=args.tanl_queue_length,
        alpha=args.tanl_alpha,
        beta=args.tanl_beta,
        step=args.tanl_step,
        g=args.tanl_g,
        otsu_window=args.tanl_otsu_window,
        seed=args.seed,
        **scoring_backend(ctx),
    )


def build_adaneg(ctx: BuildContext) -> Detector:
    args = ctx.args
    return AdaNeg.from_encoder(
        ctx.encoder,
        ctx.class_names,
        mined=_negatives(args, ctx.encoder, ctx.class_names, ctx.notes),
        progress=not args.quiet,
        tau=args.tau,
        memory_length=args.adaneg_memory_length,
        gamma=args.adaneg_gamma,
        g=args.adaneg_g,
        groups=args.adaneg_groups,
        proxy=args.adaneg_proxy,
        sample_weight_scale=args.adaneg_sample_scale,
        nl_weight=args.adaneg_nl_weight,
        seed=args.seed,
        **scoring_backend(ctx),
    )


# The CLI's method names; each builder returns a ready detector.
METHODS: dict[str, Callable[[BuildContext], Detector]] = {
    "mcm": build_mcm,
    "neglabel": build_neglabel,
    "ants": build_ants,
    "tanl": build_tanl,
    "adaneg": build_adaneg,
}


def _open_sets(args: argparse.Namespace) -> tuple[ImageSet | FeatureFile, list[ImageSet | FeatureFile]]:
    """Open and check every set before the model loads: a wrong path fails in a second."""
    id_source = open_set(args.id_set, name="id")
    named = [parse_named_set(item) for item in args.ood]
    names = [name for name, _ in named]
    reserved = {"average", "whole stream", id_source.name}
    if len(set(names)) != len(names) or reserved & set(names):
        raise NegspaceError(f"--ood names must be unique and none of {sorted(reserved)}: got {names}.")
    ood_sources = [open_set(path, name=name) for name, path in named]
    for name, path in named:
        if Path(path).resolve() == Path(args.id_set).resolve():
            log.warning("--ood %s is the same set as --id: its AUROC will be about 50", name)
    return id_source, ood_sources


def _score(
    detector: Detector,
    id_set: EncodedSet,
    ood_sets: list[EncodedSet],
    args: argparse.Namespace,
    has_pixels: bool,
    recorder: cli_ants.StreamRecorder | None,
) -> Evaluation:
    """Static detectors score each set once; test-time ones follow the stream protocol."""
    if not isinstance(detector, OnlineDetector):
        if args.stream != "per-set":
            log.warning("--stream %s ignored: %s scores every image on its own, with no stream", args.stream, args.method)
        return evaluate_detector(detector.score_features, id_set, ood_sets, args.batch_size)
    needs_images = isinstance(detector, ANTS) and not detector.frozen
    if needs_images and not has_pixels:
        log.warning("ANTS describes images with the MLLM: with .npy features there are none to send, "
                    "so only the VSNL bank (text prompts) can grow")
        needs_images = False
    return evaluate_stream(
        detector, id_set, ood_sets, args.batch_size, args.seed, pass_images=needs_images, after_stream=recorder,
        mode=args.stream,
    )


# Methods that score with a negative-label bank (--negatives, --groups and mining apply to them).
_USES_NEGATIVES = {"neglabel": "groups", "ants": "groups", "adaneg": "adaneg_groups"}


def _check_method_options(args: argparse.Namespace, n_classes: int) -> None:
    """Option combinations that cannot work, refused before the model loads and mining runs."""
    if args.method == "mcm" and n_classes < 2:
        raise NegspaceError(f"MCM needs at least two ID classes, --classes {args.classes} has {n_classes}: "
                            "its max softmax over one class is 1.0 for every image.")
    if args.negatives is not None and args.method not in _USES_NEGATIVES:
        raise NegspaceError(f"--negatives is not used by --method {args.method}; drop it "
                            f"(methods with a negative-label bank: {', '.join(sorted(_USES_NEGATIVES))}).")
    if args.method in _USES_NEGATIVES:
        option = _USES_NEGATIVES[args.method]
        available = len(_label_file_labels(args.negatives)) if args.negatives is not None else args.num_negatives
        if getattr(args, option) > available:
            where = f"--negatives {args.negatives}" if args.negatives is not None else "--num-negatives"
            raise NegspaceError(f"--{option.replace('_', '-')} {getattr(args, option)} is larger than the "
                                f"{available} negative labels of {where}.")


def _label_file_labels(path: Path) -> list[str]:
    nouns, adjectives = read_label_file(path)
    return nouns + adjectives


# What `negspace eval` writes into --out (what --overwrite may remove).
_OUTPUT_GLOBS = ("metrics.json", "results.md", "results.csv", "scores.csv", "hist_*.png", "roc.png",
                 "explanations.csv", "negative_space")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path | None:
    """Create ``out_dir`` (or, with ``overwrite``, empty it of negspace's outputs); returns the
    topmost folder this created (``None`` if none), for :func:`_remove_empty_out_dir`.

    Done before any work: a folder that cannot be written, or one that would mix two runs'
    files, must not cost a run.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NegspaceError(f"--out {out_dir} is a file; give a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise NegspaceError(f"--out {out_dir} is not empty; pass --overwrite to replace the results in it, "
                                "or choose another folder.")
        for pattern in _OUTPUT_GLOBS:
            for old in out_dir.glob(pattern):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        return None
    missing = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NegspaceError(f"Cannot create the results folder {out_dir} ({err.strerror}).") from None
    return missing[-1] if missing else None


def _remove_empty_out_dir(out_dir: Path, created_top: Path) -> None:
    """Remove ``out_dir`` and the parents up to ``created_top`` that this run created, if empty."""
    for folder in (out_dir, *out_dir.parents):
        if not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()
        if folder == created_top:
            return


def _check_save_dir(path: Path | None) -> None:
    """``--save-detector`` must be a new or empty folder, or a saved detector to replace."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise NegspaceError(f"--save-detector {path} is a file; give a folder.")
    saved = (path / "detector.json").is_file() or (path / "config.json").is_file()
    if path.is_dir() and any(path.iterdir()) and not saved:
        raise NegspaceError(f"--save-detector {path} is a folder with other files in it; give a new or empty one.")


def _save_detector(args: argparse.Namespace, detector: Detector, encoder: ClipEncoder, id_set: EncodedSet) -> None:
    """``--save-detector``: the detector's files, and beside them its model and the threshold that
    keeps 95% of the ID set when it scores frozen (what `negspace score` flags with)."""
    from negspace.cli_score import write_provenance
    from negspace.detectors.registry import load_detector
    from negspace.evaluate import score_in_batches
    from negspace.metrics import threshold_at_id_recall

    detector.save(args.save_detector)
    frozen = load_detector(args.save_detector, **backend_options(args, encoder))
    id_scores = score_in_batches(frozen.score_features, id_set.features, args.batch_size)
    write_provenance(args.save_detector, {
        "method": args.method, "model": args.model, "weights": str(args.weights) if args.weights else None,
        "weights_fingerprint": encoder.fingerprint, "classes": args.classes, "id_set": args.id_set,
        "threshold_95_id_recall": threshold_at_id_recall(id_scores), "negspace_version": __version__})


def run_eval(args: argparse.Namespace) -> int:
    classes = load_class_names(args.classes)
    _check_method_options(args, len(classes))
    _check_save_dir(args.save_detector)
    id_source, ood_sources = _open_sets(args)
    out_dir = args.out or Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    created_top = _prepare_out_dir(out_dir, args.overwrite)
    try:
        return _evaluate(args, classes, id_source, ood_sources, out_dir)
    except BaseException:
        if created_top is not None:  # a failed run leaves no empty folder behind
            _remove_empty_out_dir(out_dir, created_top)
        raise


def _evaluate(args: argparse.Namespace, classes: ClassList, id_source: ImageSet | FeatureFile,
              ood_sources: list[ImageSet | FeatureFile], out_dir: Path) -> int:
    # The MLLM is checked before the model loads and the corpus is mined: a server that is down
    # fails in a second.
    mllm = cli_ants.load_mllm_from_args(args) if args.method == "ants" and args.mllm else None

    started = time.perf_counter()
    encoder = _encoder(args)
    stream_size = len(id_source) + max(len(s) for s in ood_sources)
    try:
        context = BuildContext(args, encoder, classes.names, stream_size, mllm)
        detector = METHODS[args.method](context)
    except ValueError as err:  # parameter combinations only the detector can judge
        raise NegspaceError(f"Invalid {args.method} setting: {err}.") from None
    progress = not args.quiet
    id_set = encode_set(id_source, encoder, args.batch_size, progress)
    ood_sets = [encode_set(s, encoder, args.batch_size, progress) for s in ood_sources]
    recorder = (cli_ants.StreamRecorder(out_dir, args.explanations, args.mllm_max_failures)
                if isinstance(detector, ANTS) else None)
    has_pixels = not any(isinstance(s, (FeatureFile, FeatureTable)) for s in [id_source, *ood_sources])
    evaluation = _score(detector, id_set, ood_sets, args, has_pixels, recorder)
    evaluation.info = {
        "method": args.method,
        "negspace_version": __version__,
        "command": args.command_line,
        "torch_version": _torch_version(),
        "device": str(encoder.device),
        **context.notes,
        "params": detector.get_params(),
        "model": args.model,
        "weights_fingerprint": encoder.fingerprint,
        "preprocess": args.preprocess,
        "classes": classes.source,
        "n_classes": len(classes),
        "class_list_problems": list(classes.problems),
        "seed": args.seed,
        "batch_size": args.batch_size,
        **evaluation.info,
        **(recorder.write(getattr(detector, "mllm", None)) if recorder is not None else {}),
        "seconds": round(time.perf_counter() - started, 3),
    }
    stopped = recorder.stopped if recorder is not None else None
    if stopped is not None:
        evaluation.info["incomplete"] = {
            "reason": f"more than {args.mllm_max_failures:.0%} of the MLLM requests of stream {stopped} failed or "
                      "gave unusable answers",
            "ood_sets_not_scored": [name for name, _ in map(parse_named_set, args.ood)
                                    if name not in evaluation.ood_scores],
        }
    if args.save_detector is not None:
        _save_detector(args, detector, encoder, id_set)
        evaluation.info["saved_detector"] = str(args.save_detector)
    write_report(evaluation, out_dir)
    print(format_table(evaluation))
    for line in recorder.shortfalls() if recorder is not None else []:
        print(line)
    skipped = sum(len(s.skipped) for s in [id_set, *ood_sets])
    if skipped:
        print(f"\n{skipped} unreadable file(s) skipped; listed in {out_dir / 'metrics.json'}")
    print(f"\nResults written to {out_dir}")
    if args.save_detector is not None:
        print(f"Detector saved to {args.save_detector} (negspace.load_detector, negspace score --detector)")
    if stopped is not None:
        print(f"negspace: error: the MLLM failed on stream {stopped} ({evaluation.info['incomplete']['reason']}); "
              f"the results in {out_dir} are marked incomplete: check the server (--mllm) and run again.",
              file=sys.stderr)
        return 3
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from negspace import cli_bench  # imports this module: loaded when the command runs

    return cli_bench.run(args)


def run_score(args: argparse.Namespace) -> int:
    from negspace import cli_score

    args.model_was_default = not any(a == "--model" or a.startswith("--model=") for a in args.command_line)
    return cli_score.run(args)


def run_embed(args: argparse.Namespace) -> int:
    from negspace import cli_score

    return cli_score.run_embed(args)


def run_mine(args: argparse.Namespace) -> int:
    check_output_file(args.output, "-o/--output")
    classes = load_class_names(args.classes)
    config = _mining_config(args)
    encoder = _encoder(args)
    mined = mine_negative_labels(encoder, classes.names, config, _mining_cache_dir(args), not args.quiet)
    settings = json.dumps({"model": args.model, "classes": classes.source, **config.__dict__})
    write_label_file(args.output, mined.nouns, mined.adjectives, comment=settings)
    print(f"{len(mined.nouns)} nouns and {len(mined.adjectives)} adjectives written to {args.output}")
    return 0


def run_cache_stats(args: argparse.Namespace) -> int:
    from negspace.mllm.response_cache import cache_stats, format_cache_stats

    stats = cache_stats(args.cache_dir)
    print(json.dumps(stats, indent=2) if args.json else format_cache_stats(stats))
    return 0


def run_cache_clear(args: argparse.Namespace) -> int:
    from negspace.mllm.response_cache import cache_stats, clear_cache

    if args.what in ("all", "mllm") and not args.yes:
        paid = cache_stats(args.cache_dir)["mllm"]["entries"]
        if paid:
            question = f"Delete {paid} cached MLLM answers (asking again costs MLLM calls)? [y/N] "
            if not sys.stdin.isatty():
                raise NegspaceError(f"cache clear would delete {paid} cached MLLM answers; pass --yes to confirm "
                                    "(or --what features to keep them).")
            if input(question).strip().lower() not in ("y", "yes"):
                print("nothing cleared")
                return 0
    removed = clear_cache(args.cache_dir, args.what)
    print(", ".join(f"{name}: {count} entries removed" for name, count in removed.items()) or "nothing to clear")
    return 0


def run_demo_data(args: argparse.Namespace) -> int:
    from negspace.demo import write_demo_data

    if args.folder.exists() and not args.folder.is_dir():
        raise NegspaceError(f"{args.folder} is a file; demo-data writes a folder (give a new or empty folder).")

    try:
        id_dir, ood_dir = write_demo_data(args.folder)
    except ValueError as err:
        raise NegspaceError(f"{err}.") from None
    print(f"ID images (3 photos, 4 variants each) in {id_dir}, OOD images (12 patterns) in {ood_dir}")
    return 0


class _TqdmHandler(logging.StreamHandler):
    """Log lines written through tqdm, so they never share a line with a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("negspace: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # recorded in metrics.json: never a password or key written into an URL option
    args.command_line = ["negspace", *(redact_credentials(a) for a in (sys.argv[1:] if argv is None else argv))]
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.run(args)
    except NegspaceError as err:
        print(f"negspace: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negspace: interrupted; finished work is cached and will be reused", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `negspace cache stats | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
