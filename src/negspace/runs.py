"""The run API: what ``negspace eval`` does, from Python.

    import negspace
    from negspace import EvalConfig, ModelConfig, NegLabelConfig

    evaluation = negspace.evaluate(
        EvalConfig("neglabel", NegLabelConfig(groups=100)),
        classes="imagenet", id="data/imagenet/val", ood={"inat": "data/inaturalist"},
        model=ModelConfig("openclip:ViT-B-16/openai"), out=None)
    print(evaluation.results["inat"].auroc, evaluation.average())

Every set is opened and checked, and the MLLM server asked, before the model loads; the features
come from the caches where they are; files are written only when ``out`` is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negspace.classnames import ClassList, load_class_names
from negspace.data import ImageSet, default_set_name, parse_named_set
from negspace.detectors.ants import ANTS
from negspace.detectors.ants.recorder import StreamRecorder
from negspace.detectors.base import Detector, OnlineDetector
from negspace.errors import DatasetError, NegspaceError, arg
from negspace.evaluation import (
    EncodedSet,
    Evaluation,
    FeatureFile,
    encode_set,
    evaluate_detector,
    evaluate_stream,
    open_set,
)
from negspace.features_table import FeatureTable
from negspace.methods import (
    ANTS_NEEDS_MLLM,
    FEW_SHOT_METHODS,
    FEW_SHOT_NEEDS_SHOTS,
    LLM_METHODS,
    METHODS,
    BuildInputs,
    backend_keywords,
    build_detector,
    method,
    params_of,
)
from negspace.outdir import check_save_dir, clear_saved_detector, prepare_out_dir, remove_empty_out_dir
from negspace.runconfig import EvalConfig, MLLMConfig, ModelConfig

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger("negspace")

SetSource = str | Path | ImageSet | FeatureFile | FeatureTable


def load_model(config: ModelConfig, images_only: bool = False) -> ClipEncoder:
    """The CLIP encoder of ``config`` (with its feature cache), a feature table's rows put in it.

    ``images_only`` (for what encodes images alone, like ``negspace serve`` of a detector whose
    text features are saved): with ``runtime="onnxruntime"`` and local weights, the image tower
    runs without torch (:mod:`negspace.encoders.onnx_images`), far lighter; where its export is not
    cached yet, a child process makes it first. Should that fail, the model loads here as usual.
    """
    light = _image_encoder(config) if images_only else None
    if light is not None:
        return light  # type: ignore[no-any-return]
    from negspace.encoders import load_encoder

    encoder = load_encoder(
        config.spec,
        weights=config.weights,
        device=config.device,
        cache_dir=config.cache_dir,
        use_cache=config.use_cache,
        preprocess=config.preprocess,
        runtime=config.runtime,
    )
    encoder.show_progress = config.progress  # every bar, whoever asks for the encoding
    if config.workers is not None:
        encoder.workers = config.workers
    if config.features is not None:
        from negspace.features_table import import_into_cache, read_feature_table

        added = import_into_cache(read_feature_table(config.features), encoder)
        log.info("--features %s: %d image features ready in the cache", config.features, added)
    return encoder


def _image_encoder(config: ModelConfig) -> Any:
    """The torch-free image encoder of ``config``, where it can be had (see :func:`load_model`)."""
    if config.runtime != "onnxruntime" or not config.use_cache or config.features is not None:
        return None
    if str(config.device).strip().lower() not in ("auto", "cpu"):
        return None  # load_encoder refuses it in one sentence
    from negspace.encoders.onnx_images import open_image_encoder

    encoder = open_image_encoder(
        config.spec, config.weights, config.cache_dir, config.preprocess, load_full=partial(load_model, config)
    )
    if encoder is not None:
        encoder.show_progress = config.progress
    return encoder


def resolve_encoder(model: ModelConfig, encoder: ClipEncoder | None) -> tuple[ClipEncoder, str]:
    """The encoder (``encoder`` as given, else ``model`` loaded) and the model spec a run records."""
    if encoder is not None:
        return encoder, getattr(encoder, "spec", model.spec)
    return load_model(model), model.spec


def build_inputs(
    config: EvalConfig,
    encoder: ClipEncoder,
    classes: ClassList,
    model: ModelConfig,
    model_spec: str,
    stream_size: int = 0,
    mllm: Any = None,
) -> BuildInputs:
    """What a method's builder gets in a run of ``model`` (its progress bars, its mined-list cache)."""
    return BuildInputs(
        config,
        encoder,
        classes.names,
        stream_size,
        mllm,
        model=model_spec,
        classes=classes.source,
        progress=model.progress,
        cache_dir=mining_cache_dir(model),
    )


def mining_cache_dir(config: ModelConfig) -> Path | None:
    """Where mined label lists are cached: beside the features (``None`` without a cache)."""
    if not config.use_cache:
        return None
    from negspace.cache import default_cache_dir

    return config.cache_dir or default_cache_dir()


def load_mllm(config: MLLMConfig) -> Any:
    """The MLLM of ``config``, checked (a server that is down fails in a second)."""
    from negspace.mllm import load_mllm as load

    return load(
        config.spec,
        text_spec=config.text_spec,
        cache=config.use_cache,
        cache_dir=config.cache_dir,
        image_size=config.image_size,
        max_concurrency=config.concurrency,
        timeout=config.timeout,
        retries=config.retries,
        max_wait=config.max_wait,
        api_key_env=config.api_key_env,
        device=config.device,
        batch_size=config.batch_size,
    )


def class_list(classes: str | Path | Sequence[str] | ClassList) -> ClassList:
    """A built-in list name, a file of names, or the names themselves."""
    if isinstance(classes, ClassList):
        return classes
    if isinstance(classes, (str, Path)):
        return load_class_names(classes)
    names = tuple(str(name) for name in classes)
    return ClassList(names=names, source=f"{len(names)} names given in Python")


OodSets = (
    Mapping[str, SetSource]
    | Sequence[str | Path | tuple[str, SetSource] | ImageSet | FeatureFile | FeatureTable]
    | str
    | Path
)
OOD_FORMS = (
    "a mapping of names to sets, a sequence of named sets (NAME=PATH strings, paths, (name, set) "
    "pairs or opened sets) or one path"
)


def named_ood_sets(ood: OodSets) -> list[tuple[str, SetSource]]:
    """``ood`` in any of its accepted forms as ``(name, source)`` pairs; a path alone is named
    by its folder (or list) name.

    Raises:
        TypeError: ``ood`` is none of :data:`OOD_FORMS`.
    """
    if isinstance(ood, Mapping):
        return [(str(name), source) for name, source in ood.items()]
    if isinstance(ood, (str, Path)):  # one set, not a sequence of characters
        return [parse_named_set(str(ood)) if isinstance(ood, str) else (default_set_name(ood), ood)]
    if not isinstance(ood, Sequence):
        raise TypeError(f"ood must be {OOD_FORMS}; got {type(ood).__name__}.")
    named: list[tuple[str, SetSource]] = []
    for item in ood:
        if isinstance(item, str):
            named.append(parse_named_set(item))
        elif isinstance(item, Path):
            named.append((default_set_name(item), item))
        elif isinstance(item, (ImageSet, FeatureFile, FeatureTable)):
            named.append((item.name, item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            named.append(item)
        else:
            raise TypeError(f"ood must be {OOD_FORMS}; one item is a {type(item).__name__}.")
    return named


def open_sets(id: SetSource, ood: OodSets) -> tuple[Any, list[Any]]:
    """Open and check every set before the model loads: a wrong path fails in a second.

    ``ood`` maps names to sets, or is a sequence of named sets (``NAME=PATH`` strings, the
    command line's form; paths; ``(name, set)`` pairs; opened sets), or one path.
    """
    named = named_ood_sets(ood)
    id_source = _opened(id, "id", arg("id"))
    names = [name for name, _ in named]
    reserved = {"average", "whole stream", id_source.name}
    if not named:
        raise NegspaceError(f"Give at least one OOD set ({arg('ood', '--ood NAME=PATH')}).")
    if len(set(names)) != len(names) or reserved & set(names):
        raise NegspaceError(f"The {arg('ood')} names must be unique and none of {sorted(reserved)}: got {names}.")
    ood_sources = [_opened(path, name, arg(f"ood[{name!r}]", f"--ood {name}")) for name, path in named]
    for name, path in named:
        if isinstance(path, (str, Path)) and isinstance(id, (str, Path)) and Path(path).resolve() == Path(id).resolve():
            log.warning("--ood %s is the same set as --id: its AUROC will be about 50", name)
    return id_source, ood_sources


def _opened(source: SetSource, name: str, where: str) -> Any:
    """``source`` opened as the set ``name``; a set that cannot be opened names the argument
    (``where``) it came from."""
    if not isinstance(source, (str, Path)):
        return source
    try:
        return open_set(source, name=name)
    except DatasetError as err:
        message = err.message
        raise DatasetError(f"{where}: {message[:1].lower()}{message[1:]}") from None


def check_method_options(config: EvalConfig, classes: ClassList, has_mllm: bool = True) -> None:
    """Option combinations that cannot work, refused before the model loads and mining runs."""
    spec = method(config.method)
    params = params_of(config)
    labels_file = config.negatives.labels_file
    if config.method == "mcm" and len(classes) < 2:
        raise NegspaceError(
            f"MCM needs at least two ID classes, {arg('classes')} {classes.source} has {len(classes)}: "
            "its max softmax over one class is 1.0 for every image."
        )
    if config.method == "ants" and config.ants.negative_space is None and not has_mllm and params.mode != "neglabel":
        raise NegspaceError(ANTS_NEEDS_MLLM)
    if config.method in FEW_SHOT_METHODS and config.id_shots is None:
        raise NegspaceError(FEW_SHOT_NEEDS_SHOTS)
    if labels_file is not None and spec.bank_groups is None:
        users = sorted(name for name, m in METHODS.items() if m.bank_groups is not None)
        raise NegspaceError(
            f"{arg('negatives.labels_file', '--negatives')} is not used by {arg('method')} "
            f"{config.method}; drop it "
            f"(methods with a negative-label bank: {', '.join(users)})."
        )
    if spec.bank_groups is not None and not (config.method == "ants" and config.ants.negative_space is not None):
        from negspace.corpus.labelfile import read_label_file

        groups = getattr(params, spec.bank_groups)
        if labels_file is not None:
            nouns, adjectives = read_label_file(labels_file)
            available, where = (
                len(nouns) + len(adjectives),
                f"{arg('negatives.labels_file', '--negatives')} {labels_file}",
            )
        else:
            available, where = (
                config.negatives.mining.num_negatives,
                arg("negatives.mining.num_negatives", "--num-negatives"),
            )
        option = arg(
            f"{type(params).__name__}.{spec.bank_groups}",
            "--groups" if config.method != "adaneg" else "--adaneg-groups",
        )
        if groups > available:
            raise NegspaceError(f"{option} {groups} is larger than the {available} negative labels of {where}.")


def score_sets(
    detector: Detector,
    id_set: EncodedSet,
    ood_sets: list[EncodedSet],
    config: EvalConfig,
    has_pixels: bool,
    after_stream: Any = None,
) -> Evaluation:
    """Static detectors score each set once; test-time ones follow the stream protocol."""
    if not isinstance(detector, OnlineDetector):
        if config.stream != "per-set":
            log.warning(
                "--stream %s ignored: %s scores every image on its own, with no stream", config.stream, config.method
            )
        return evaluate_detector(detector.score_features, id_set, ood_sets, config.batch_size)
    needs_images = isinstance(detector, ANTS) and not detector.frozen
    if needs_images and not has_pixels:
        log.warning(
            "ANTS describes images with the MLLM: with .npy features there are none to send, "
            "so only the VSNL bank (text prompts) can grow"
        )
        needs_images = False
    return evaluate_stream(
        detector,
        id_set,
        ood_sets,
        config.batch_size,
        config.seed,
        pass_images=needs_images,
        after_stream=after_stream,
        mode=config.stream,
    )


def save_detector(
    detector: Detector,
    folder: Path,
    *,
    method_name: str,
    model: ModelConfig,
    encoder: ClipEncoder,
    classes: str,
    id_set: EncodedSet,
    id_source: str,
    batch_size: int,
    scoring_backend: str,
) -> None:
    """The detector's files, and beside them its model and the threshold that keeps 95% of the ID
    set when it scores frozen (what `negspace score` flags with)."""
    from negspace import __version__
    from negspace.detectors.saved import write_provenance
    from negspace.evaluation import score_in_batches
    from negspace.methods import load_detector
    from negspace.metrics import threshold_at_id_recall

    clear_saved_detector(folder)
    detector.save(folder)
    frozen = load_detector(folder, encoder=encoder, **backend_keywords(scoring_backend, encoder))
    id_scores = score_in_batches(frozen.score_features, id_set.features, batch_size)
    write_provenance(
        folder,
        {
            "method": method_name,
            "model": model.spec,
            "weights": str(model.weights) if model.weights else None,
            "weights_fingerprint": encoder.fingerprint,
            "classes": classes,
            "id_set": id_source,
            "threshold_95_id_recall": threshold_at_id_recall(id_scores),
            "negspace_version": __version__,
        },
    )


def evaluate(
    config: EvalConfig,
    *,
    classes: str | Path | Sequence[str] | ClassList,
    id: SetSource,
    ood: OodSets,
    model: ModelConfig | None = None,
    encoder: ClipEncoder | None = None,
    mllm: MLLMConfig | Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    save_detector_to: str | Path | None = None,
    command: Sequence[str] | None = None,
) -> Evaluation:
    """Build the detector, encode the sets (with the caches), score them under the stream
    protocol and return the :class:`~negspace.evaluation.Evaluation` (metrics per set, scores,
    ``info`` as ``metrics.json`` records it, ANTS's traces); write the files of ``negspace
    eval`` into ``out`` when it is given.

    Args:
        config: the method, its config and the protocol.
        classes: ``"imagenet"`` (or another built-in list), a file of names, or the names.
        id: the ID set: a folder, a path list, ``LIST:ROOT``, ``.npy`` features or a feature
            table (or an already opened set).
        ood: the named OOD sets, each in any form ``id`` takes: a mapping of names to sets, a
            sequence of ``"NAME=PATH"`` strings, paths or ``(name, set)`` pairs, or one path.
        model: the CLIP model to load (default :class:`ModelConfig`).
        encoder: an already loaded model, used instead of ``model``.
        mllm: ANTS's MLLM (or NegRefine's LLM for its label filter), an :class:`MLLMConfig` to
            load or a loaded client.
        out: the results folder (new or empty unless ``overwrite``); ``None`` writes nothing.
        save_detector_to: also save the detector there (with the 95%-ID threshold it flags with):
            a new or empty folder, or with ``overwrite`` a saved detector to replace.
        command: the command line to record in ``metrics.json``.

    Raises:
        NegspaceError: bad input, in one sentence, before the model loads where it can be seen.
    """
    model = model or ModelConfig()
    classes = class_list(classes)
    check_method_options(config, classes, has_mllm=mllm is not None)
    save_dir = Path(save_detector_to) if save_detector_to is not None else None
    check_save_dir(save_dir, overwrite)
    id_source, ood_sources = open_sets(id, ood)
    out_dir = Path(out) if out is not None else None
    created_top = prepare_out_dir(out_dir, overwrite) if out_dir is not None else None
    try:
        return _evaluate(
            config,
            classes,
            id_source,
            ood_sources,
            model,
            encoder,
            mllm,
            out_dir,
            save_dir,
            str(id) if isinstance(id, (str, Path)) else id_source.name,
            command,
        )
    except BaseException:
        if out_dir is not None:  # a failed run leaves no empty folder behind
            remove_empty_out_dir(out_dir, created_top)
        raise


def _evaluate(
    config: EvalConfig,
    classes: ClassList,
    id_source: Any,
    ood_sources: list[Any],
    model: ModelConfig,
    encoder: ClipEncoder | None,
    mllm: Any,
    out_dir: Path | None,
    save_dir: Path | None,
    id_name: str,
    command: Sequence[str] | None,
) -> Evaluation:
    from negspace import __version__
    from negspace.report import write_report

    if config.method in LLM_METHODS and isinstance(mllm, MLLMConfig):
        mllm = load_mllm(mllm)  # checked before the model loads and the corpus is mined
    elif config.method not in LLM_METHODS:
        mllm = None
    started = time.perf_counter()
    encoder, model_spec = resolve_encoder(model, encoder)
    inputs = build_inputs(
        config, encoder, classes, model, model_spec, len(id_source) + max(len(s) for s in ood_sources), mllm
    )
    detector = build_detector(inputs)
    id_set = encode_set(id_source, encoder, config.batch_size, model.progress)
    ood_sets = [encode_set(s, encoder, config.batch_size, model.progress) for s in ood_sources]
    recorder = (
        StreamRecorder(out_dir, config.ants.explanations, config.ants.max_failures)
        if isinstance(detector, ANTS)
        else None
    )
    has_pixels = not any(isinstance(s, (FeatureFile, FeatureTable)) for s in [id_source, *ood_sources])
    evaluation = score_sets(detector, id_set, ood_sets, config, has_pixels, recorder)
    evaluation.info = {
        "method": config.method,
        "negspace_version": __version__,
        "command": list(command) if command is not None else None,
        "torch_version": _torch_version(),
        "device": str(encoder.device),
        **inputs.notes,
        "params": detector.get_params(),
        "model": model_spec,
        "weights_fingerprint": encoder.fingerprint,
        "preprocess": model.preprocess,
        **({"runtime": model.runtime} if model.runtime != "torch" else {}),  # torch's records stay as they were
        "classes": classes.source,
        "n_classes": len(classes),
        "class_list_problems": list(classes.problems),
        "seed": config.seed,
        "batch_size": config.batch_size,
        **evaluation.info,
        **(recorder.write(getattr(detector, "mllm", None)) if recorder is not None else {}),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if recorder is not None:
        evaluation.messages += recorder.shortfalls()
        evaluation.traces["lam"] = recorder.lam  # per stream
    incomplete = recorder.incomplete([s.name for s in ood_sources], evaluation.ood_scores) if recorder else None
    if recorder is not None and incomplete is not None:
        evaluation.stopped = recorder.stopped
        evaluation.info["incomplete"] = incomplete
    if save_dir is not None:
        save_detector(
            detector,
            save_dir,
            method_name=config.method,
            model=model,
            encoder=encoder,
            classes=classes.source,
            id_set=id_set,
            id_source=id_name,
            batch_size=config.batch_size,
            scoring_backend=config.scoring_backend,
        )
        evaluation.info["saved_detector"] = str(save_dir)
    if out_dir is not None:
        write_report(evaluation, out_dir)
    evaluation.detector = detector
    return evaluation


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
