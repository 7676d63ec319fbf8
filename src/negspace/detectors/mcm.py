"""MCM: Maximum Concept Matching (Ming et al., "Delving into Out-of-Distribution Detection with
Vision-Language Representations", NeurIPS 2022).

    S_mcm(v) = max_i softmax_i(cos(v, t_i) / T)

over the ``K`` ID label features only, with ``T = 1`` on raw cosines (paper default) and the ID
prompt ``a photo of a {}.``. ``backend="torch"`` runs the kernels on torch tensors
(:mod:`negspace.backend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace.backend import resolve_backend, to_numpy
from negspace.detectors.base import Detector, resolve_config, row_argmax
from negspace.detectors.saved import SavedDetector
from negspace.reprs import with_config_repr
from negspace.scoring import as_unit_rows
from negspace.templates import MCM_TEMPLATE

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder


@with_config_repr
@dataclass(frozen=True)
class MCMConfig:
    """MCM's hyper-parameter, with the paper's default: the softmax temperature ``T = 1``."""

    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class MCM(Detector):
    """Maximum softmax probability over the ID labels at temperature ``config.temperature``.

    Takes ``config=MCMConfig(...)`` or its fields as keywords (``temperature=0.5``).
    """

    def __init__(
        self,
        id_text_features: np.ndarray,
        config: MCMConfig | None = None,
        *,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> None:
        self.config = resolve_config(MCMConfig, config, params)
        self.backend = resolve_backend(backend, device)
        self.id_text_features = as_unit_rows(id_text_features, "ID text features")
        self._id_text = self.backend.asarray(self.id_text_features)  # on the backend's device
        self.temperature = self.config.temperature

    @classmethod
    def from_features(
        cls,
        id_text_features: np.ndarray,
        config: MCMConfig | None = None,
        *,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> MCM:
        """Build from ``(K, D)`` ID text features (no encoder needed)."""
        return cls(id_text_features, config, backend=backend, device=device, **params)

    @classmethod
    def from_encoder(
        cls,
        encoder: ClipEncoder,
        class_names: Sequence[str],
        config: MCMConfig | None = None,
        *,
        template: str = MCM_TEMPLATE,
        backend: str = "numpy",
        device: str = "auto",
        **params: Any,
    ) -> MCM:
        """Encode ``class_names`` with ``template`` and keep the encoder for :meth:`score_images`."""
        detector = cls(
            encoder.encode_texts(list(class_names), template=template), config, backend=backend, device=device, **params
        )
        detector.encoder = encoder
        detector.class_names = list(class_names)
        return detector

    def score_features(self, image_features: np.ndarray) -> np.ndarray:
        return to_numpy(self.backend.ops.max_softmax(self._logits(image_features)))

    def score_with_nearest(self, image_features: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The scores and each image's nearest ID class from one product (MCM has no negatives)."""
        logits = self._logits(image_features)
        nearest_id = row_argmax(logits)[1]
        return to_numpy(self.backend.ops.max_softmax(logits)), nearest_id, [""] * len(nearest_id)

    def _logits(self, image_features: np.ndarray) -> Any:
        image = self.backend.unit_rows(image_features, "image features", self.id_text_features.shape[1])
        logits = image @ self._id_text.T
        if self.temperature != 1.0:
            logits /= self.temperature  # in place: no second (B, K) array
        return logits

    def to_saved(self) -> SavedDetector:
        return SavedDetector(
            "mcm", asdict(self.config), {"id_text_features": self.id_text_features}, {"class_names": self.class_names}
        )

    @classmethod
    def from_saved(cls, saved: SavedDetector, backend: str = "numpy", device: str = "auto") -> MCM:
        """The detector :meth:`save` wrote (see :func:`negspace.load_detector`)."""
        det = cls(saved.arrays["id_text_features"], backend=backend, device=device, **saved.params)
        det.class_names = saved.extra.get("class_names")
        return det

    def get_params(self) -> dict[str, Any]:
        return {"n_classes": len(self.id_text_features), **asdict(self.config), **self.backend.params()}
