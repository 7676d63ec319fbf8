"""Tiny image sets on disk for the command-line tests: three coloured-square ID classes, noise as
OOD, the class file and, when asked, a folder of labelled ID shots per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("red square", "green square", "blue square")
COLOURS = ((200, 0, 0), (0, 200, 0), (0, 0, 200))


def write_sets(root: Path, seed: int = 0, id_per_class: int = 2, shots_per_class: int = 0) -> dict[str, Path]:
    """``{"id", "ood", "classes"[, "shots"]}`` under ``root``: noisy squares of each class colour
    (ID, and ``shots/<class>/`` when ``shots_per_class``), six noise images (OOD)."""
    rng = np.random.default_rng(seed)
    sets = {"id": root / "id", "ood": root / "ood", "classes": root / "classes.txt"}
    folders = [(sets["id"], id_per_class)]
    if shots_per_class:
        sets["shots"] = root / "shots"
    for name, colour in zip(CLASSES, COLOURS, strict=False):
        for folder, count in folders + (
            [(sets["shots"] / name.replace(" ", "_"), shots_per_class)] if shots_per_class else []
        ):
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name.split()[0]}_{k}.png")
    sets["ood"].mkdir(parents=True, exist_ok=True)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(sets["ood"] / f"noise_{k}.png")
    sets["classes"].write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return sets
