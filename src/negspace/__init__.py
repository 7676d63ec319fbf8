"""negspace: zero-shot out-of-distribution detection with vision-language models.

Scores are **higher for in-distribution** samples. The feature-level API needs no model::

    from negspace import NegLabel, testing
    world = testing.make_world()
    labels, negatives = world.negatives(1000)
    det = NegLabel.from_features(world.id_text_features, negatives, groups=10)
    scores = det.score_features(world.far_ood_features)

With a CLIP model (``load_encoder``), detectors are built from class names and score images.
"""

from negspace.classnames import load_class_names
from negspace.corpus.mining import MiningConfig, mine_negative_labels
from negspace.corpus.wordnet import load_wordnet_corpus
from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.ants import ANTS
from negspace.detectors.ants_config import ANTSConfig
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.saved import load_detector
from negspace.detectors.tanl import TANL
from negspace.errors import NegspaceError
from negspace.metrics import (
    StreamingOODMetrics,
    aupr_in,
    aupr_out,
    auroc,
    compute_all,
    fpr95,
    fpr95_ood,
)
from negspace.scoring import grouped_id_mass, id_mass

__version__ = "0.1.0"

# The encoders pull in open_clip and torchvision (seconds of import time); feature-level users
# never need them, so they are imported on first use.
_LAZY = {
    "ClipEncoder": "negspace.encoders",
    "load_encoder": "negspace.encoders",
    "load_mllm": "negspace.mllm",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'negspace' has no attribute {name!r}")


__all__ = [
    "ANTS",
    "MCM",
    "TANL",
    "ANTSConfig",
    "AdaNeg",
    "ClipEncoder",
    "MiningConfig",
    "NegLabel",
    "NegspaceError",
    "StreamingOODMetrics",
    "aupr_in",
    "aupr_out",
    "auroc",
    "compute_all",
    "fpr95",
    "fpr95_ood",
    "grouped_id_mass",
    "id_mass",
    "load_class_names",
    "load_detector",
    "load_encoder",
    "load_mllm",
    "load_wordnet_corpus",
    "mine_negative_labels",
]
