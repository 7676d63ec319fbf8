"""Loading what the server serves, the way ``negspace score`` does: the saved detector (NumPy,
checked before the model loads), the model from the detector's provenance, the threshold (given,
chosen on ``threshold_id`` images, or saved with the detector), and for ``--adapt`` the live
detector with its scorer and snapshots.

    from negspace.serve import ServeConfig, build_app
    app = build_app(ServeConfig(detector=Path("det/")))      # an ASGI app; uvicorn runs it

:mod:`negspace.serve.server` builds the app from here and runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from negspace.collections_api import (
    check_detector_model,
    detector_identity,
    detector_provenance,
    model_of_detector,
    open_threshold_images,
    resolve_threshold,
)
from negspace.detectors.base import OnlineDetector
from negspace.errors import NegspaceError, arg
from negspace.runconfig import MLLMConfig, ModelConfig
from negspace.serve.adapt import AsyncScorer, StaticScorer, SyncScorer
from negspace.serve.config import ServeConfig
from negspace.serve.state import SnapshotStore, frozen_copy

log = logging.getLogger("negspace")


@dataclass
class Loaded:
    """What :func:`load_service` found: the detector to serve (live when adapting), the encoder,
    the threshold and where it came from, what ``/v1/detector`` says, and how to load again."""

    detector: Any
    encoder: Any
    threshold: float
    threshold_source: str
    info: dict[str, Any]
    reload: Callable[[Path, bool], Any]


def open_detector(
    folder: Path, encoder: Any = None, *, learn: bool = False, scoring_backend: str = "numpy", mllm: Any = None
) -> Any:
    """The detector saved in ``folder`` (a saved detector or a snapshot), frozen, or unfrozen to
    learn on (``learn``); a folder that cannot be loaded is one sentence."""
    from negspace.methods import backend_keywords, load_detector

    backend = backend_keywords(scoring_backend, encoder) if encoder is not None else {}
    try:
        detector = load_detector(
            folder, encoder=encoder, text_encoder=encoder, mllm=mllm if learn else None, frozen=not learn, **backend
        )
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise NegspaceError(f"{arg('detector')} {folder} cannot be loaded: {err}.") from None
    if encoder is not None:
        detector.encoder = encoder  # NegRefine encodes label pairs with it, InterNeg and TINS invert with it
    if learn:
        check_learns(detector, folder)
        try:
            detector.unfreeze()
        except ValueError as err:
            raise NegspaceError(f"{arg('adapt')}: {err}.") from None
    return detector


def check_learns(detector: Any, folder: Any, has_mllm: bool | None = None) -> None:
    """Refuse ``--adapt`` for a detector that cannot learn at test time, in one sentence."""
    from negspace.detectors.ants import ANTS

    method = type(detector).__name__
    if not isinstance(detector, OnlineDetector):
        raise NegspaceError(
            f"{arg('adapt')}: the {method} detector in {folder} does not learn at test time (the "
            "test-time methods are TANL, AdaNeg, ANTS, InterNeg and TINS); serve it without "
            f"{arg('adapt')}."
        )
    if isinstance(detector, ANTS):
        if detector.config.two_pass or detector.config.mode == "neglabel":
            kind = "two-pass" if detector.config.two_pass else "NegLabel mode"
            raise NegspaceError(f"{arg('adapt')}: this ANTS space ({kind}) does not learn online; serve it without it.")
        mllm = detector.mllm is not None if has_mllm is None else has_mllm
        if not mllm:
            raise NegspaceError(
                f"{arg('adapt')}: ANTS learns by asking a multimodal LLM; pass "
                f"{arg('mllm', '--mllm SPEC')} (see 'Using an MLLM' in the README)."
            )


def describe(detector: Any, encoder: Any = None) -> dict[str, Any]:
    """What ``/v1/detector`` says of a detector and its model: method, parameters, the digest
    of its saved form, the model and its weights' fingerprint (never a credential)."""
    from negspace import __version__
    from negspace.encoders.onnx_images import OnnxImageEncoder

    identity = detector_identity(detector)
    info = {
        **identity,
        "n_classes": len(detector.id_text_features),
        "dim": int(detector.id_text_features.shape[1]),
        "negspace_version": __version__,
    }
    if encoder is not None:
        info.update(
            {
                "model": encoder.spec,
                "weights_fingerprint": encoder.fingerprint,
                "device": str(encoder.device),
                "runtime": str(getattr(encoder, "runtime", "torch")),
                "images_without_torch": isinstance(encoder, OnnxImageEncoder),
            }
        )
    return info


def images_only(detector: Any, adapt: str | None) -> bool:
    """Whether serving ``detector`` encodes images alone (its text features are saved): not
    NegRefine, which encodes label pairs as it scores, nor, learning, ANTS (it encodes the MLLM's
    words), InterNeg and TINS (they invert through the text tower)."""
    from negspace.detectors.ants import ANTS
    from negspace.detectors.fewshot import FewShotDetector
    from negspace.detectors.negrefine import NegRefine

    if isinstance(detector, NegRefine):
        return False
    return adapt is None or not isinstance(detector, (ANTS, FewShotDetector))


def resolve_adapt(mode: str | None, detector: Any) -> str | None:
    """The adaptive mode: ``auto`` is async where an update asks an MLLM or runs an inversion
    (ANTS, InterNeg, TINS), sync otherwise."""
    if mode != "auto":
        return mode
    from negspace.detectors.ants import ANTS
    from negspace.detectors.fewshot import FewShotDetector

    return "async" if isinstance(detector, (ANTS, FewShotDetector)) else "sync"


def build_scorer(
    config: ServeConfig,
    detector: Any,
    encoder: Any,
    *,
    identity: dict[str, Any],
    reload: Callable[[Path, bool], Any] | None = None,
) -> Any:
    """How batches are scored: frozen, or learned from in ``config.adapt``'s mode, resuming from
    the newest snapshot in ``config.state_dir`` (see :mod:`negspace.serve.adapt`)."""
    from negspace.detectors.ants import ANTS

    mode = resolve_adapt(config.adapt, detector)
    if mode is None:
        learning = isinstance(detector, OnlineDetector) and not detector.frozen
        return StaticScorer(frozen_copy(detector) if learning else detector)
    check_learns(detector, config.detector or "the given detector")
    reload = reload or partial(
        _reload, encoder=encoder, scoring_backend=config.scoring_backend, mllm=getattr(detector, "mllm", None)
    )
    if config.detector is not None:
        folder = Path(config.detector)
        fresh: Callable[[], Any] = lambda: reload(folder, True)  # noqa: E731
    else:  # a detector built in Python: a reset returns to its state as given
        initial = frozen_copy(detector)
        fresh = lambda: _unfrozen(frozen_copy(initial))  # noqa: E731
    store, resumed, live = None, None, detector
    if config.state_dir is not None:
        store = SnapshotStore(
            Path(config.state_dir),
            {"digest": identity.get("digest"), "weights_fingerprint": identity.get("weights_fingerprint")},
        )
        latest = store.latest()
        if latest is not None:
            path, resumed = latest
            live = reload(path, True)
            log.info("resuming the adaptive state of %s (%d images learned)", path, resumed.get("images_learned", 0))
    if live.frozen:
        live.unfreeze()
    scorer = SyncScorer if mode == "sync" else AsyncScorer
    return scorer(
        live,
        needs_images=isinstance(live, ANTS),
        fresh=fresh,
        store=store,
        snapshot_every=config.snapshot_every,
        resumed=resumed,
    )


def _reload(folder: Path, learn: bool, *, encoder: Any, scoring_backend: str, mllm: Any) -> Any:
    return open_detector(folder, encoder, learn=learn, scoring_backend=scoring_backend, mllm=mllm)


def _unfrozen(detector: Any) -> Any:
    detector.unfreeze()
    return detector


def load_service(config: ServeConfig, model: ModelConfig | None = None, mllm: MLLMConfig | Any = None) -> Loaded:
    """Load the detector, model and threshold ``config`` names; everything that can be refused
    is refused before the model loads (the folder, the adaptive mode, ``threshold_id``'s images).

    ``model=None`` loads the model the detector was built with (its provenance).
    """
    from negspace.detectors.ants import ANTS

    config.check()
    folder = Path(str(config.detector))  # check() refused None
    provenance = detector_provenance(folder)
    saved = open_detector(folder)  # NumPy, no model: a damaged folder fails in a second
    wants_mllm = config.adapt is not None and isinstance(saved, ANTS)
    if config.adapt is not None:
        check_learns(saved, folder, has_mllm=mllm is not None if wants_mllm else None)
    id_images = open_threshold_images(config.threshold_id) if config.threshold is None else None
    model = model if model is not None else model_of_detector(folder, ModelConfig())
    if wants_mllm and isinstance(mllm, MLLMConfig):
        from negspace.runs import load_mllm

        mllm = load_mllm(mllm)  # a server that is down fails before the model loads
    from negspace.runs import load_model

    encoder = load_model(model, images_only=images_only(saved, config.adapt))
    check_detector_model(provenance, saved, encoder, f"{arg('detector')} {folder}")
    reload = partial(
        _reload, encoder=encoder, scoring_backend=config.scoring_backend, mllm=mllm if wants_mllm else None
    )
    frozen = reload(folder, False)
    threshold, source = resolve_threshold(
        config.threshold, config.threshold_id, frozen, encoder, provenance, id_images, config.max_batch, False
    )
    detector = reload(folder, True) if config.adapt is not None else frozen
    if config.threshold is not None and config.threshold_source:
        source = config.threshold_source  # worked out once for every replica (ray_serve.threshold_once)
    info = {**describe(saved, encoder), "preprocess": model.preprocess, "source": folder.name}
    return Loaded(detector, encoder, threshold, source, info, reload)
