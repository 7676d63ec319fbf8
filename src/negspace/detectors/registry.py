"""The detectors by method name (the CLI's and the saved files' names), and loading a saved one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from negspace.detectors.adaneg import AdaNeg
from negspace.detectors.ants import ANTS
from negspace.detectors.base import Detector
from negspace.detectors.mcm import MCM
from negspace.detectors.neglabel import NegLabel
from negspace.detectors.saved import FILE, read_saved
from negspace.detectors.tanl import TANL

DETECTORS: dict[str, type[Detector]] = {"mcm": MCM, "neglabel": NegLabel, "tanl": TANL, "adaneg": AdaNeg, "ants": ANTS}


def load_detector(directory: str | Path, backend: str = "numpy", device: str = "auto", **options: Any) -> Any:
    """The detector saved in ``directory`` (by ``det.save(directory)``), ready to score.

    Test-time detectors come back frozen (they score with the state they were saved with and
    learn no further; ``unfreeze()`` lets them learn on). ANTS negative spaces are loaded with
    :meth:`negspace.detectors.ants.ANTS.load` (``options`` go there, e.g. ``mllm=``).

    Raises:
        ValueError: nothing saved there, or an unknown method.
    """
    folder = Path(directory)
    if not (folder / FILE).is_file() and (folder / "config.json").is_file():
        return DETECTORS["ants"].load(folder, backend=backend, device=device, **options)
    saved = read_saved(folder)
    if saved.method not in DETECTORS or saved.method == "ants":
        raise ValueError(f"{folder} holds a detector of unknown method {saved.method!r}")
    return DETECTORS[saved.method].from_saved(saved, backend=backend, device=device)
