"""``negspace serve``: a saved detector behind an HTTP API (docs/serving.md).

The options become a frozen :class:`~negspace.serve.config.ServeConfig` (checked before any model
loads), a model config and, for ANTS learning from the traffic, an MLLM config; then
:func:`negspace.serve.server.serve` runs the app under uvicorn.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from negspace.backend import BACKENDS
from negspace.cli import options
from negspace.encoders import PREPROCESS_CHOICES
from negspace.runconfig import DEFAULT_MODEL, MLLMConfig
from negspace.serve.config import ADAPT_MODES, ENGINES, ServeConfig

_DEFAULTS = ServeConfig()


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    sv = commands.add_parser(
        "serve",
        parents=[common],
        help="serve a saved detector over HTTP: dynamic batching, metrics, and a test-time "
        "state that learns from the traffic and survives restarts",
    )
    sv.add_argument(
        "--detector",
        type=Path,
        required=True,
        metavar="DIR",
        help="a detector saved by `negspace eval --save-detector` or det.save()",
    )
    sv.add_argument(
        "--threshold",
        type=options.finite_float,
        metavar="T",
        help="flag images scoring below this as OOD (default: the one saved with the detector)",
    )
    sv.add_argument(
        "--threshold-id",
        metavar="ID_IMAGES",
        help="or choose the threshold that keeps 95%% of these ID images (folder or list)",
    )
    net = sv.add_argument_group("network and safety")
    net.add_argument(
        "--host",
        default=_DEFAULTS.host,
        help="address to bind (default: %(default)s, this machine only; any other needs --token-file or --no-auth)",
    )
    net.add_argument("--port", type=options.non_negative_int, default=_DEFAULTS.port, help="(default: %(default)s)")
    net.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the bearer token clients must send ('Authorization: Bearer TOKEN')",
    )
    net.add_argument("--no-auth", action="store_true", help="bind another address without a token (a trusted network)")
    net.add_argument(
        "--max-images",
        type=options.positive_int,
        default=_DEFAULTS.max_images,
        help="images (or feature rows) per request (default: %(default)s)",
    )
    net.add_argument(
        "--max-body-mb",
        type=options.positive_float,
        default=_DEFAULTS.max_body_mb,
        help="largest request body, MiB (default: %(default)s)",
    )
    net.add_argument(
        "--max-pixels",
        type=options.positive_int,
        default=_DEFAULTS.max_pixels,
        help="largest image, width x height, checked before decoding (default: %(default)s)",
    )
    batching = sv.add_argument_group("batching")
    batching.add_argument(
        "--max-batch",
        type=options.positive_int,
        default=_DEFAULTS.max_batch,
        help="images per model batch (default: %(default)s)",
    )
    batching.add_argument(
        "--max-wait-ms",
        type=options.non_negative_float,
        default=_DEFAULTS.max_wait_ms,
        help="longest wait for a batch to fill after its first image (default: %(default)s)",
    )
    batching.add_argument(
        "--max-queue",
        type=options.positive_int,
        default=_DEFAULTS.max_queue,
        help="images waiting for the model; beyond, 503 with Retry-After (default: %(default)s)",
    )
    batching.add_argument(
        "--decode-workers",
        type=options.positive_int,
        default=_DEFAULTS.decode_workers,
        help="threads decoding images beside the model (default: %(default)s)",
    )
    adapt = sv.add_argument_group("adaptive serving (TANL, AdaNeg, ANTS, InterNeg, TINS)")
    adapt.add_argument(
        "--adapt",
        nargs="?",
        const="auto",
        choices=ADAPT_MODES,
        help="learn from the traffic, one writer, batches in arrival order: sync (each request waits "
        "for its batch's update, as eval's stream), async (scored with the state in effect, the "
        "update beside the traffic); alone: async for ANTS, InterNeg, TINS, sync otherwise",
    )
    adapt.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="snapshot the adaptive state here (atomically) and resume from it at the next start",
    )
    adapt.add_argument(
        "--snapshot-every",
        type=options.positive_int,
        default=_DEFAULTS.snapshot_every,
        help="images learned between snapshots (also one at shutdown) (default: %(default)s)",
    )
    replicas = sv.add_argument_group("replicas on Ray Serve (static and frozen detectors)")
    replicas.add_argument(
        "--engine",
        choices=ENGINES,
        default=_DEFAULTS.engine,
        help="local: one process under uvicorn; ray: --replicas copies on Ray Serve, each with its own "
        "model, behind one address (pip install 'negspace[ray]') (default: %(default)s)",
    )
    replicas.add_argument(
        "--replicas",
        type=options.positive_int,
        default=_DEFAULTS.replicas,
        help="with --engine ray: replicas of the app (not with --adapt: one state, one writer) (default: %(default)s)",
    )
    replicas.add_argument("--ray-address", help="with --engine ray: an existing cluster (default: start a local Ray)")
    replicas.add_argument(
        "--ray-timeout",
        type=options.positive_float,
        default=_DEFAULTS.ray_timeout,
        help="with --ray-address: seconds to wait for the cluster before giving up (default: %(default)s)",
    )
    replicas.add_argument(
        "--replica-cpus",
        type=options.non_negative_float,
        default=_DEFAULTS.replica_cpus,
        help="with --engine ray: CPUs Ray reserves for each replica, fractions allowed (default: %(default)s)",
    )
    replicas.add_argument(
        "--replica-gpus",
        type=options.non_negative_float,
        default=_DEFAULTS.replica_gpus,
        help="with --engine ray: GPUs Ray reserves for each replica (give 1 with --device cuda) (default: %(default)s)",
    )
    model = sv.add_argument_group("model")
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="openclip:ARCH/PRETRAINED or hf:NAME_OR_PATH (default: the detector's own model)",
    )
    model.add_argument("--weights", type=Path, help="local weights file or folder, used instead of downloading")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    options.add_runtime_option(model)
    model.add_argument(
        "--scoring-backend",
        choices=BACKENDS,
        default="numpy",
        help="where the detector scores: numpy on the CPU, or torch on --device (default: %(default)s)",
    )
    model.add_argument(
        "--preprocess", choices=PREPROCESS_CHOICES, default="model", help="image transform (default: %(default)s)"
    )
    model.add_argument("--cache-dir", type=Path, help=options.CACHE_DIR_HELP)
    model.add_argument("--no-cache", action="store_true", help="encode texts afresh, write no cache")
    _add_mllm_options(sv)
    sv.set_defaults(run=run_serve)


def _add_mllm_options(parser: argparse.ArgumentParser) -> None:
    """The MLLM that an adaptive ANTS asks (those of `eval` that apply to a server)."""
    mllm = MLLMConfig(spec="")
    group = parser.add_argument_group("multimodal LLM (ANTS with --adapt)")
    group.add_argument("--mllm", help="openai:BASE_URL/MODEL (any OpenAI-compatible server) or hf:NAME_OR_PATH")
    group.add_argument("--mllm-text", help="a separate model for text-only prompts (VSNL); default: --mllm")
    group.add_argument(
        "--mllm-concurrency",
        type=options.positive_int,
        default=mllm.concurrency,
        help="requests in flight (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-timeout",
        type=options.positive_float,
        default=mllm.timeout,
        help="seconds per request (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-retries",
        type=options.non_negative_int,
        default=mllm.retries,
        help="retries per request (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-max-wait",
        type=options.positive_float,
        default=mllm.max_wait,
        help="longest wait between attempts, a server's Retry-After included, s (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-image-size",
        type=options.positive_int,
        default=mllm.image_size,
        help="longest side sent, px (default: %(default)s)",
    )
    group.add_argument(
        "--mllm-api-key-env", default=mllm.api_key_env, help="env variable with the API key (default: %(default)s)"
    )
    group.add_argument(
        "--mllm-batch-size",
        type=options.positive_int,
        default=mllm.batch_size,
        help="batch of a local hf: model (default: %(default)s)",
    )
    group.add_argument("--no-mllm-cache", action="store_true", help="do not reuse or store MLLM answers")


def serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        detector=args.detector,
        threshold=args.threshold,
        threshold_id=args.threshold_id,
        host=args.host,
        port=args.port,
        token_file=args.token_file,
        no_auth=args.no_auth,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_images=args.max_images,
        max_body_mb=args.max_body_mb,
        max_pixels=args.max_pixels,
        decode_workers=args.decode_workers,
        adapt=args.adapt,
        state_dir=args.state_dir,
        snapshot_every=args.snapshot_every,
        engine=args.engine,
        replicas=args.replicas,
        ray_address=args.ray_address,
        ray_timeout=args.ray_timeout,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        scoring_backend=args.scoring_backend,
    )


def run_serve(args: argparse.Namespace) -> int:
    """`negspace serve`."""
    from negspace.collections_api import model_of_detector

    config = serve_config(args)
    config.check()
    model = options.model_config(args)
    if not any(a == "--model" or a.startswith("--model=") for a in args.command_line):
        model = model_of_detector(args.detector, model)  # the detector's own model
    if config.engine == "ray":
        from negspace.serve.ray_serve import serve_replicas

        serve_replicas(config, model, options.mllm_config(args))
        return 0
    from negspace.serve.server import serve

    serve(config, model, options.mllm_config(args), log_level="info" if args.verbose else "warning")
    return 0
