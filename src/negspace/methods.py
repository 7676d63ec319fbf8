"""The methods by name: one registry for the Python run API, the command line and saved detectors.

Each :class:`Method` names its detector class, its config class (the paper defaults) and the
builder that turns an :class:`~negspace.runconfig.EvalConfig` and a model into a ready detector
(mining or reading the negatives it needs). Adding a method is one detector file with its config,
and one entry in :data:`METHODS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from negspace.corpus.csp import bank_of, select_from_pool
from negspace.corpus.labelfile import clean_labels, read_label_file, read_label_file_settings
from negspace.corpus.mining import MinedNegatives, mine_negative_labels
from negspace.corpus.negrefine import refine_bank
from negspace.detectors.adaneg import AdaNeg, AdaNegConfig
from negspace.detectors.ants import ANTS, ANTSConfig
from negspace.detectors.ants.rules import scaled_schedule
from negspace.detectors.base import Detector
from negspace.detectors.csp import CSP, CSPConfig
from negspace.detectors.interneg import InterNeg, InterNegConfig
from negspace.detectors.mcm import MCM, MCMConfig
from negspace.detectors.neglabel import NegLabel, NegLabelConfig
from negspace.detectors.negrefine import NegRefine, NegRefineConfig
from negspace.detectors.saved import FILE, read_saved
from negspace.detectors.tanl import TANL, TANLConfig
from negspace.detectors.tins import TINS, TINSConfig
from negspace.errors import NegspaceError, arg
from negspace.runconfig import EvalConfig
from negspace.templates import ADJECTIVE_TEMPLATE, ID_TEMPLATE, NOUN_TEMPLATE

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger("negspace")

#: Methods that need a few labelled ID images per class (``EvalConfig.id_shots``).
FEW_SHOT_METHODS = ("interneg", "tins")
FEW_SHOT_NEEDS_SHOTS = (
    f"InterNeg and TINS need a few labelled ID images per class: pass {arg('id_shots')} (a "
    "folder of class folders, or a path<TAB>class list)."
)

#: Methods that ask a (multimodal) LLM: ANTS needs one, NegRefine's label filter uses one when given.
LLM_METHODS = ("ants", "negrefine")

ANTS_NEEDS_MLLM = (
    f"ANTS needs a multimodal LLM: pass {arg('mllm', '--mllm SPEC')} (see 'Using an MLLM' in the "
    f"README) or {arg('ants.negative_space', '--negative-space DIR')}."
)


def params_of(config: EvalConfig) -> Any:
    """The method's config of a run, the paper's defaults where none was given."""
    return config.params if config.params is not None else METHODS[config.method].config()


class BackendKeywords(TypedDict, total=False):
    """A detector's ``backend``/``device`` keywords (none: NumPy, the detectors' default)."""

    backend: str
    device: str


def backend_keywords(scoring_backend: str, encoder: Any) -> BackendKeywords:
    """The detectors' ``backend``/``device`` keywords: torch scores on the encoder's device."""
    if scoring_backend == "numpy":
        return {}
    return {"backend": scoring_backend, "device": str(encoder.device)}


@dataclass
class BuildInputs:
    """What a builder may use: the run's config, the model, the classes and the stream's length.

    ``model`` and ``classes`` name them for messages (a label file mined for another model);
    ``notes`` collects what building found, for ``metrics.json``.
    """

    config: EvalConfig
    encoder: ClipEncoder
    class_names: Sequence[str]
    stream_size: int = 0
    mllm: Any = None
    model: str = ""
    classes: str = ""
    progress: bool = True
    cache_dir: Path | None = None  # where mined label lists are cached (None: not cached)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> Any:
        """The method's config, the paper's defaults where none was given."""
        return params_of(self.config)

    def backend(self) -> BackendKeywords:
        return backend_keywords(self.config.scoring_backend, self.encoder)


@dataclass(frozen=True)
class Method:
    """A method: its detector, its config and how a run builds it."""

    name: str
    detector: type[Detector]
    config: type
    build: Callable[[BuildInputs], Detector]
    bank_groups: str | None = None  # the config field that cannot exceed the negative bank's size


# ------------------------------------------------------------------------------ negatives


def negatives(inputs: BuildInputs) -> MinedNegatives:
    """Mined labels, or the label file cleaned (what was removed goes to ``inputs.notes``)."""
    source, encoder = inputs.config.negatives, inputs.encoder
    if source.labels_file is None:
        return mine_negative_labels(encoder, inputs.class_names, source.mining, inputs.cache_dir, inputs.progress)
    nouns, adjectives, inputs.notes["negatives_file"] = read_negatives_file(
        source.labels_file, inputs.class_names, model=inputs.model, classes=inputs.classes
    )
    features = [encoder.encode_texts(nouns, template=NOUN_TEMPLATE, progress=inputs.progress)]
    if adjectives:
        features.append(encoder.encode_texts(adjectives, template=ADJECTIVE_TEMPLATE, progress=inputs.progress))
    return MinedNegatives(nouns + adjectives, np.concatenate(features), len(nouns), len(adjectives))


def read_negatives_file(
    path: Path, class_names: Sequence[str], model: str = "", classes: str = ""
) -> tuple[list[str], list[str], dict[str, Any]]:
    """A label file's labels without ID names and repeats, what was removed, and a warning when
    the file was mined for another model or class list."""
    nouns, adjectives = read_label_file(path)
    cleaned = clean_labels(nouns, adjectives, class_names)
    settings = read_label_file_settings(path) or {}
    ours = {"model": model, "classes": classes}
    mismatched = {
        key: settings[key]
        for key in ("model", "classes")
        if key in settings and ours[key] and str(settings[key]) != str(ours[key])
    }
    if mismatched:
        log.warning(
            "--negatives %s was mined with %s, not this run's %s: its labels may not suit it",
            path,
            ", ".join(f"{k}={v}" for k, v in mismatched.items()),
            ", ".join(f"{k}={ours[k]}" for k in mismatched),
        )
    for what, removed in (
        ("ID class names", cleaned.id_names_removed),
        ("repeated labels", cleaned.duplicates_removed),
    ):
        if removed:
            log.warning("--negatives %s: %d %s removed (e.g. %r)", path, len(removed), what, removed[0])
    report = {
        "path": str(path),
        "labels": len(cleaned.nouns) + len(cleaned.adjectives),
        "id_names_removed": len(cleaned.id_names_removed),
        "duplicates_removed": len(cleaned.duplicates_removed),
        "settings_mismatch": mismatched,
    }
    return cleaned.nouns, cleaned.adjectives, report


def _checked_negatives(inputs: BuildInputs) -> MinedNegatives:
    return _checked_groups(inputs, negatives(inputs))


def _checked_groups(inputs: BuildInputs, bank: MinedNegatives) -> MinedNegatives:
    """``bank``, when the method's groups fit in it (else one sentence)."""
    groups = inputs.params.groups
    if groups > len(bank.labels):
        raise NegspaceError(
            f"{arg(type(inputs.params).__name__ + '.groups', '--groups')} {groups} is larger than "
            f"the {len(bank.labels)} negative labels."
        )
    return bank


def _conjugated_bank(inputs: BuildInputs, select: Callable[[], MinedNegatives]) -> MinedNegatives:
    """CSP's and NegRefine's bank: a label file (nouns, then conjugated phrases as its
    adjectives) when ``--negatives`` names one, else what ``select`` picks from the pool."""
    if inputs.config.negatives.labels_file is None:
        return _checked_groups(inputs, select())
    nouns, phrases, inputs.notes["negatives_file"] = read_negatives_file(
        inputs.config.negatives.labels_file, inputs.class_names, model=inputs.model, classes=inputs.classes
    )
    return _checked_groups(inputs, bank_of(inputs.encoder, nouns, phrases, inputs.progress))


# ------------------------------------------------------------------------------ builders


def build_mcm(inputs: BuildInputs) -> Detector:
    return MCM.from_encoder(inputs.encoder, inputs.class_names, inputs.params, **inputs.backend())


def build_neglabel(inputs: BuildInputs) -> Detector:
    return NegLabel.from_mined(
        inputs.encoder, inputs.class_names, _checked_negatives(inputs), inputs.params, **inputs.backend()
    )


def build_csp(inputs: BuildInputs) -> Detector:
    """CSP's bank selected from its conjugated pool, or read from a label file (nouns, then the
    conjugated phrases as its adjectives)."""
    config: CSPConfig = inputs.params
    id_features = CSP.encode_id_names(inputs.encoder, inputs.class_names)
    bank = _conjugated_bank(
        inputs,
        lambda: select_from_pool(
            inputs.encoder, inputs.class_names, id_features, config.selection(), inputs.cache_dir, inputs.progress
        ),
    )
    detector = CSP(id_features, bank.features, config, neg_labels=bank.labels, **inputs.backend())
    detector.encoder, detector.class_names = inputs.encoder, list(inputs.class_names)
    return detector


def build_negrefine(inputs: BuildInputs) -> Detector:
    """NegRefine's bank (the initial selection, cleaned, filtered by the LLM in ``inputs.mllm``
    when there is one), or a label file it wrote (``--negatives``), with its multi-matching score."""
    config: NegRefineConfig = inputs.params
    id_features = NegRefine.encode_id_names(inputs.encoder, inputs.class_names)

    def refined() -> MinedNegatives:
        result = refine_bank(
            inputs.encoder,
            inputs.class_names,
            id_features,
            inputs.mllm,
            config.selection(),
            config.nearest,
            inputs.cache_dir,
            inputs.progress,
        )
        inputs.notes["negrefine"] = result.notes
        return result.bank

    bank = _conjugated_bank(inputs, refined)
    detector = NegRefine(
        id_features, bank.features, config, class_names=inputs.class_names, neg_labels=bank.labels, **inputs.backend()
    )
    detector.encoder = inputs.encoder
    return detector


def build_interneg(inputs: BuildInputs) -> Detector:
    """InterNeg: the class prototypes from the ID shots, the inter-modal bank, and the inversion
    through the encoder's text tower (``unfreeze`` builds it)."""
    config: InterNegConfig = inputs.params
    id_features, prototypes = _shots_and_prototypes(inputs)
    bank = _interneg_bank(inputs, id_features, prototypes, config.negatives)
    detector = InterNeg(id_features, bank.features, prototypes, config, neg_labels=bank.labels, **inputs.backend())
    detector.encoder, detector.class_names = inputs.encoder, list(inputs.class_names)
    detector.unfreeze()
    return detector


def build_tins(inputs: BuildInputs) -> Detector:
    """TINS: InterNeg's prototypes and bank (at least one label per part), its scaled score, and
    the word-initialised inversion through the encoder's text tower (``unfreeze`` builds it)."""
    config: TINSConfig = inputs.params
    id_features, prototypes = _shots_and_prototypes(inputs)
    bank = _interneg_bank(inputs, id_features, prototypes, config.negatives, at_least_one=True)
    detector = TINS(id_features, bank.features, prototypes, config, neg_labels=bank.labels)
    detector.encoder, detector.class_names = inputs.encoder, list(inputs.class_names)
    detector.unfreeze()
    return detector


def _shots_and_prototypes(inputs: BuildInputs) -> tuple[np.ndarray, np.ndarray]:
    """The ID text features and the class prototypes of the run's ID shots (few-shot methods)."""
    from negspace.data.shots import encode_prototypes, read_shots

    run = inputs.config
    if run.id_shots is None:
        raise NegspaceError(FEW_SHOT_NEEDS_SHOTS)
    shots = read_shots(run.id_shots, inputs.class_names, run.shots, run.seed)
    inputs.notes["id_shots"] = {"source": str(run.id_shots), **shots.summary()}
    prototypes = encode_prototypes(inputs.encoder, shots, run.batch_size)
    return inputs.encoder.encode_texts(list(inputs.class_names), template=ID_TEMPLATE), prototypes


def _interneg_bank(
    inputs: BuildInputs, id_features: np.ndarray, prototypes: np.ndarray, count: int, at_least_one: bool = False
) -> Any:
    from negspace.corpus.interneg import select_interneg_bank

    return select_interneg_bank(
        inputs.encoder,
        inputs.class_names,
        id_features,
        prototypes,
        count,
        inputs.cache_dir,
        inputs.progress,
        at_least_one,
        method=METHODS[inputs.config.method].detector.__name__,
    )


def build_tanl(inputs: BuildInputs) -> Detector:
    params = inputs.params
    return TANL.from_encoder(
        inputs.encoder,
        inputs.class_names,
        corpus=inputs.config.tanl_corpus,
        noise_seed=params.seed,
        progress=inputs.progress,
        config=params,
        **inputs.backend(),
    )


def build_adaneg(inputs: BuildInputs) -> Detector:
    return AdaNeg.from_encoder(
        inputs.encoder,
        inputs.class_names,
        mined=negatives(inputs),
        progress=inputs.progress,
        config=inputs.params,
        **inputs.backend(),
    )


def build_ants(inputs: BuildInputs) -> Detector:
    """A saved negative space (frozen, or learning on with the MLLM), or a fresh one that learns
    with the MLLM."""
    run = inputs.config.ants
    if run.negative_space is not None:
        detector = _load_space(inputs, run.negative_space)
    else:
        config: ANTSConfig = inputs.params
        if inputs.mllm is None and config.mode != "neglabel":
            raise NegspaceError(ANTS_NEEDS_MLLM)
        if run.schedule == "scaled":
            schedule = scaled_schedule(inputs.stream_size, inputs.config.batch_size)
            scaled: dict[str, Any] = {k: v for k, v in schedule.items() if k not in run.keep}
            config = replace(config, **scaled)
        detector = ANTS.from_encoder(
            inputs.encoder,
            inputs.class_names,
            _checked_negatives(inputs),
            inputs.mllm,
            config=config,
            **inputs.backend(),
        )
    detector.keep_explanations(run.explanations)  # the images the run explains, with the space that scored them
    return detector


def _load_space(inputs: BuildInputs, space: Path) -> ANTS:
    """The space saved in ``space``; ``mode`` and ``lam`` of the run apply to it, the rest is as it
    was learned."""
    run = inputs.config.ants
    try:
        detector = ANTS.load(space, text_encoder=inputs.encoder, mllm=inputs.mllm, **inputs.backend())
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise NegspaceError(f"Cannot load the negative space {run.negative_space}: {err}.") from None
    if list(detector.class_names) != list(inputs.class_names):
        raise NegspaceError(
            f"The negative space {run.negative_space} was learned for other classes than "
            f"{arg('classes')} {inputs.classes}."
        )
    if detector.id_text_features.shape[1] != inputs.encoder.dim:
        raise NegspaceError(
            f"The negative space {run.negative_space} has dimension "
            f"{detector.id_text_features.shape[1]}, the model {inputs.encoder.dim}."
        )
    overrides: dict[str, Any] = {"mode": run.mode} if run.mode is not None else {}
    if run.lam is not None:
        overrides["lam"] = run.lam
    if overrides:
        detector.config = replace(detector.config, **overrides)
    detector.encoder = inputs.encoder
    return detector


METHODS: dict[str, Method] = {
    "mcm": Method("mcm", MCM, MCMConfig, build_mcm),
    "neglabel": Method("neglabel", NegLabel, NegLabelConfig, build_neglabel, bank_groups="groups"),
    "csp": Method("csp", CSP, CSPConfig, build_csp, bank_groups="groups"),
    "negrefine": Method("negrefine", NegRefine, NegRefineConfig, build_negrefine, bank_groups="groups"),
    "interneg": Method("interneg", InterNeg, InterNegConfig, build_interneg),
    "tins": Method("tins", TINS, TINSConfig, build_tins),
    "tanl": Method("tanl", TANL, TANLConfig, build_tanl),
    "adaneg": Method("adaneg", AdaNeg, AdaNegConfig, build_adaneg, bank_groups="groups"),
    "ants": Method("ants", ANTS, ANTSConfig, build_ants, bank_groups="groups"),
}


def method(name: str) -> Method:
    """The method called ``name``, or a ``ValueError`` listing the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_detector(inputs: BuildInputs) -> Detector:
    """The detector of ``inputs.config.method``, built; a setting only the detector can judge is
    one :class:`NegspaceError` sentence."""
    try:
        return method(inputs.config.method).build(inputs)
    except ValueError as err:
        raise NegspaceError(f"Invalid {inputs.config.method} setting: {err}.") from None


def load_detector(
    directory: str | Path, backend: str = "numpy", device: str = "auto", encoder: Any = None, **options: Any
) -> Any:
    """The detector saved in ``directory`` (by ``det.save(directory)``), ready to score.

    Test-time detectors come back frozen (they score with the state they were saved with and
    learn no further; ``unfreeze()`` lets them learn on). ANTS negative spaces are loaded with
    :meth:`negspace.detectors.ants.ANTS.load` (``options`` go there, e.g. ``mllm=``). ``encoder``
    (a :class:`~negspace.encoders.ClipEncoder`) is what NegRefine encodes its label pairs with.

    Raises:
        ValueError: nothing saved there, or an unknown method.
    """
    folder = Path(directory)
    if not (folder / FILE).is_file() and (folder / "config.json").is_file():
        return ANTS.load(folder, backend=backend, device=device, **options)
    saved = read_saved(folder)
    if saved.method not in METHODS or saved.method == "ants":
        raise ValueError(f"{folder} holds a detector of unknown method {saved.method!r}")
    try:
        detector = METHODS[saved.method].detector.from_saved(saved, backend=backend, device=device)
        if encoder is not None:
            detector.encoder = encoder
        return detector
    except TypeError as err:  # a parameter this version does not know
        raise ValueError(
            f"{folder} was saved with settings this negspace does not know ({err}); a newer "
            "negspace may have written it"
        ) from None
    except KeyError as err:
        raise ValueError(f"{folder} is damaged: {err} is missing") from None
