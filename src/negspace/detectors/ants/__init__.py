"""ANTS: an adaptive negative textual space shaped at test time by a multimodal LLM.

The public face is :class:`ANTS` (the detector), :class:`ANTSConfig` (its hyper-parameters and
``ANTSConfig.authors()``, the authors' code's rules) and :class:`ANTSState` (the bounded state).
The parts: ``config`` (hyper-parameters), ``rules`` (pure rules), ``state`` (bounded state),
``banks`` (MLLM updates), ``scoring`` (the stacked ENS and VSNL banks), ``io`` (saved spaces),
``explain`` (explanations), ``detector`` (the detector itself).
"""

from negspace.detectors.ants.config import ANTSConfig
from negspace.detectors.ants.detector import ANTS
from negspace.detectors.ants.state import ANTSState

__all__ = ["ANTS", "ANTSConfig", "ANTSState"]
