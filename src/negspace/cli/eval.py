"""``negspace eval``: score ID and OOD sets with one method and report AUROC / FPR95 / AUPR.

Options become an :class:`~negspace.runconfig.EvalConfig` right after parsing; the run is
:func:`negspace.runs.evaluate`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from negspace.cli import options
from negspace.cli.options import positive_int, seed
from negspace.corpus.mining import MiningConfig
from negspace.detectors.adaneg import AdaNegConfig
from negspace.detectors.csp import CSPConfig
from negspace.detectors.interneg import InterNegConfig
from negspace.detectors.mcm import MCMConfig
from negspace.detectors.neglabel import NegLabelConfig
from negspace.detectors.negrefine import NegRefineConfig
from negspace.detectors.tanl import DEFAULT_CORPUS, TANLConfig
from negspace.detectors.tins import TINSConfig
from negspace.errors import NegspaceError
from negspace.evaluation import STREAM_MODES
from negspace.methods import METHODS
from negspace.runconfig import EvalConfig, NegativesConfig

log = logging.getLogger("negspace")

# The paper defaults the options show, read from the configs: the command line restates none.
_MCM, _NEGLABEL, _TANL, _ADANEG = MCMConfig(), NegLabelConfig(), TANLConfig(), AdaNegConfig()
_MINING = MiningConfig()
_INTERNEG = InterNegConfig()
CLASSES_HELP = (
    "ID class names: a built-in list (imagenet, imagenet-a, imagenet-r, imagenet-10, imagenet-20, "
    "oxford-pet) or a text file with one class name per line"
)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    ev = commands.add_parser("eval", parents=[common], help="score ID and OOD sets and report AUROC / FPR95 / AUPR")
    ev.add_argument(
        "--method",
        choices=sorted(METHODS),
        required=True,
        help="mcm, neglabel, csp, negrefine (static; negrefine filters its labels with --llm or "
        "--mllm); ants (needs --mllm), tanl, adaneg, interneg and tins (need --id-shots) (test-time: see "
        "--stream)",
    )
    ev.add_argument("--classes", required=True, help=CLASSES_HELP)
    ev.add_argument(
        "--id", dest="id_set", required=True, help="ID images: folder, path list, LIST:ROOT, or .npy features"
    )
    ev.add_argument("--ood", action="append", required=True, metavar="NAME=PATH", help="an OOD set (repeatable)")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: %(default)s)")
    ev.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of the grouping and of the test stream's shuffle (default: %(default)s)",
    )
    ev.add_argument("--out", type=Path, help="results folder, new or empty (default: runs/METHOD-TIMESTAMP)")
    ev.add_argument(
        "--overwrite", action="store_true", help="reuse a non-empty --out: its previous results are removed first"
    )
    ev.add_argument(
        "--save-detector",
        type=Path,
        metavar="DIR",
        help="save the detector after the run as plain files (test-time methods: the state the last "
        "stream left), for `negspace.load_detector` and `negspace score`; a new or empty folder, "
        "or with --overwrite a saved detector to replace",
    )
    ev.add_argument(
        "--stream",
        choices=STREAM_MODES,
        default="per-set",
        help="test-time methods: per-set = one ID+OOD stream per OOD set, reset between them (the papers); "
        "sequential = the same streams one after another, no reset (temporal shift); "
        "mixed = ID and every OOD set in one stream (default: %(default)s)",
    )
    options.add_model_options(ev)
    method = ev.add_argument_group("method parameters")
    method.add_argument(
        "--temperature",
        type=options.positive_float,
        default=_MCM.temperature,
        help="MCM softmax temperature (default: %(default)s)",
    )
    method.add_argument(
        "--tau",
        type=options.positive_float,
        default=_NEGLABEL.tau,
        help="NegLabel (and CSP) temperature (default: %(default)s)",
    )
    method.add_argument(
        "--groups",
        type=positive_int,
        default=_NEGLABEL.groups,
        help="NegLabel (and CSP) groups G (default: %(default)s)",
    )
    method.add_argument("--negatives", type=Path, help="negative-label file from 'negspace mine' (skips mining)")
    tanl = ev.add_argument_group("TANL (test-time activated negative labels)")
    tanl.add_argument(
        "--tanl-corpus",
        type=options.corpus,
        default=DEFAULT_CORPUS,
        help="label pool: a WordNet selection (neglabel, all) or a corpus file, as --corpus (default: %(default)s)",
    )
    tanl.add_argument(
        "--tanl-alpha",
        type=options.fraction,
        default=_TANL.alpha,
        help="history vs batch activation, 1 = distribution-adaptive (default: %(default)s)",
    )
    tanl.add_argument(
        "--tanl-beta", type=positive_int, default=_TANL.beta, help="activated labels kept (default: %(default)s)"
    )
    tanl.add_argument(
        "--tanl-step",
        type=positive_int,
        default=_TANL.step,
        help="activation-aware score step s (default: %(default)s)",
    )
    tanl.add_argument(
        "--tanl-queue-length",
        type=positive_int,
        default=_TANL.queue_length,
        help="confident ID/OOD queue length (default: %(default)s)",
    )
    tanl.add_argument(
        "--tanl-g",
        type=options.fraction,
        default=_TANL.g,
        help="confidence margin around the Otsu threshold (default: %(default)s)",
    )
    tanl.add_argument(
        "--tanl-otsu-window",
        type=positive_int,
        default=_TANL.otsu_window,
        help="scores kept for Otsu (default: %(default)s)",
    )
    adaneg = ev.add_argument_group("AdaNeg (adaptive negative proxies)")
    adaneg.add_argument(
        "--adaneg-proxy", choices=("task", "sample"), default=_ADANEG.proxy, help="proxy kind (default: %(default)s)"
    )
    adaneg.add_argument(
        "--adaneg-memory-length",
        type=positive_int,
        default=_ADANEG.memory_length,
        help="slots per label, slot 0 = text (default: %(default)s)",
    )
    adaneg.add_argument(
        "--adaneg-gamma", type=options.fraction, default=_ADANEG.gamma, help="caching threshold (default: %(default)s)"
    )
    adaneg.add_argument(
        "--adaneg-g", type=options.fraction, default=_ADANEG.g, help="caching margin (default: %(default)s)"
    )
    adaneg.add_argument(
        "--adaneg-groups",
        type=positive_int,
        default=_ADANEG.groups,
        help="groups of the AdaNeg score (default: %(default)s)",
    )
    adaneg.add_argument(
        "--adaneg-sample-scale",
        type=options.non_negative_float,
        default=_ADANEG.sample_weight_scale,
        help="sample-adaptive weight scale (default: %(default)s)",
    )
    adaneg.add_argument(
        "--adaneg-nl-weight",
        type=options.non_negative_float,
        default=_ADANEG.nl_weight,
        help="weight of the NegLabel term (default: %(default)s)",
    )
    interneg = ev.add_argument_group("InterNeg and TINS (few-shot ID prototypes, test-time inversion)")
    interneg.add_argument(
        "--id-shots",
        type=Path,
        metavar="PATH",
        help="labelled ID images: a folder of class folders, or a path<TAB>class list",
    )
    interneg.add_argument(
        "--shots",
        type=positive_int,
        default=16,
        help="ID images per class drawn from --id-shots with --seed (default: %(default)s)",
    )
    interneg.add_argument(
        "--interneg-groups",
        type=positive_int,
        default=_INTERNEG.groups,
        help="groups of its score: 5 four-OOD/far-OOD, 1 near-OOD (default: %(default)s)",
    )
    interneg.add_argument(
        "--interneg-beta",
        type=options.fraction,
        default=_INTERNEG.beta,
        help="images scoring below this are inverted (default: %(default)s)",
    )
    interneg.add_argument(
        "--tins-beta",
        type=options.fraction,
        default=TINSConfig().beta,
        help="TINS: images scoring below this are inverted (default: %(default)s)",
    )
    interneg.add_argument(
        "--max-inverted",
        type=options.non_negative_int,
        default=_INTERNEG.max_inverted,
        help="at most this many images inverted per batch, the lowest scores first; 0 = all "
        "(the authors) (default: %(default)s)",
    )
    options.add_ants_options(ev)
    options.add_mllm_options(ev)
    options.add_mining_options(ev)
    ev.set_defaults(run=run)


def method_params(args: argparse.Namespace, method: str) -> tuple[Any, frozenset[str]]:
    """The method's config from the options, and (ANTS) the fields the options set explicitly."""
    try:
        if method == "mcm":
            return MCMConfig(temperature=args.temperature), frozenset()
        if method == "neglabel":
            return NegLabelConfig(tau=args.tau, groups=args.groups, seed=args.seed), frozenset()
        if method == "csp":
            return CSPConfig(tau=args.tau, groups=args.groups, seed=args.seed, pool=csp_pool(args.corpus)), frozenset()
        if method == "interneg":
            return InterNegConfig(
                tau=args.tau,
                groups=args.interneg_groups,
                seed=args.seed,
                beta=args.interneg_beta,
                max_inverted=args.max_inverted,
            ), frozenset()
        if method == "tins":
            return TINSConfig(
                tau=args.tau, seed=args.seed, beta=args.tins_beta, max_inverted=args.max_inverted
            ), frozenset()
        if method == "negrefine":
            return NegRefineConfig(
                tau=args.tau, groups=args.groups, seed=args.seed, pool=csp_pool(args.corpus, "NegRefine")
            ), frozenset()
        if method == "tanl":
            return TANLConfig(
                tau=args.tau,
                queue_length=args.tanl_queue_length,
                alpha=args.tanl_alpha,
                beta=args.tanl_beta,
                step=args.tanl_step,
                g=args.tanl_g,
                otsu_window=args.tanl_otsu_window,
                seed=args.seed,
            ), frozenset()
        if method == "adaneg":
            return AdaNegConfig(
                tau=args.tau,
                memory_length=args.adaneg_memory_length,
                gamma=args.adaneg_gamma,
                g=args.adaneg_g,
                groups=args.adaneg_groups,
                proxy=args.adaneg_proxy,
                sample_weight_scale=args.adaneg_sample_scale,
                nl_weight=args.adaneg_nl_weight,
                seed=args.seed,
            ), frozenset()
        return options.ants_config(args, tau=args.tau, groups=args.groups)
    except ValueError as err:  # combinations only the config can judge
        raise NegspaceError(f"Invalid {method} setting: {err}.") from None


def csp_pool(corpus: str, method: str = "CSP") -> str:
    """``--corpus`` for CSP and NegRefine: CSP's WordNet pool by default, or the user's corpus file."""
    from negspace.corpus.csp import WORDNET_POOL
    from negspace.corpus.wordnet import SELECTIONS

    if corpus == _MINING.corpus:
        return WORDNET_POOL
    if corpus in SELECTIONS:
        raise NegspaceError(
            f"--corpus {corpus}: {method} builds its pool from CSP's WordNet selection; give a corpus "
            "file, or leave --corpus out."
        )
    return corpus


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """``negspace eval``'s options as the run's config."""
    params, keep = method_params(args, args.method)
    return EvalConfig(
        args.method,
        params,
        stream=args.stream,
        batch_size=args.batch_size,
        seed=args.seed,
        id_shots=args.id_shots,
        shots=args.shots,
        negatives=NegativesConfig(options.mining_config(args), args.negatives),
        tanl_corpus=args.tanl_corpus,
        scoring_backend=args.scoring_backend,
        ants=options.ants_run_config(args, keep),
    )


# Options that shape how a space is learned, with their defaults: a loaded space keeps its own.
_LEARNING_DEFAULTS = {
    "ants_mode": "online",
    "ants_preset": "paper",
    "ants_schedule": "default",
    "ants_diversity": "none",
    "tau": _NEGLABEL.tau,
    "groups": _NEGLABEL.groups,
}


def _warn_ignored_for_space(args: argparse.Namespace) -> None:
    ignored = [
        f"--{name.replace('_', '-')}" for name, default in _LEARNING_DEFAULTS.items() if getattr(args, name) != default
    ]
    ignored += [
        f"--{name.replace('_', '-')}" for name in options.ANTS_PRESET_OPTIONS if getattr(args, name) is not None
    ]
    if ignored:
        log.warning(
            "%s ignored: the negative space %s keeps the settings it was learned with",
            ", ".join(ignored),
            args.negative_space,
        )


def run(args: argparse.Namespace) -> int:
    """`negspace eval`."""
    from negspace.report import format_table
    from negspace.runs import evaluate

    config = eval_config(args)
    if args.method == "ants" and args.negative_space is not None:
        _warn_ignored_for_space(args)
    out_dir = args.out or Path("runs") / f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    evaluation = evaluate(
        config,
        classes=args.classes,
        id=args.id_set,
        ood=args.ood,
        model=options.model_config(args),
        mllm=options.mllm_config(args, prefer_llm=args.method == "negrefine"),
        out=out_dir,
        overwrite=args.overwrite,
        save_detector_to=args.save_detector,
        command=args.command_line,
    )
    print(format_table(evaluation))
    for line in evaluation.messages:
        print(line)
    skipped = sum(len(s.skipped) for s in [evaluation.id_set, *evaluation.ood_sets])
    if skipped:
        print(f"\n{skipped} unreadable file(s) skipped; listed in {out_dir / 'metrics.json'}")
    print(f"\nResults written to {out_dir}")
    if args.save_detector is not None:
        print(f"Detector saved to {args.save_detector} (negspace.load_detector, negspace score --detector)")
    if evaluation.stopped is not None:
        print(
            f"negspace: error: the MLLM failed on stream {evaluation.stopped} "
            f"({evaluation.info['incomplete']['reason']}); "
            f"the results in {out_dir} are marked incomplete: check the server (--mllm) and run again.",
            file=sys.stderr,
        )
        return 3
    return 0
