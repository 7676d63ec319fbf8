"""The detectors by method name (the CLI's and the saved files' names)."""

from __future__ import annotations

from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.ants import ANTS
from negspace.detectors.base import Detector
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.tanl import TANL

DETECTORS: dict[str, type[Detector]] = {"mcm": MCM, "neglabel": NegLabel, "tanl": TANL, "adaneg": AdaNeg, "ants": ANTS}
