"""A tiny demonstration set made only of what is installed: real photos as ID, patterns as OOD.

The photos ship with matplotlib (Grace Hopper, public domain) and scikit-learn (a temple in China
and a flower, CC BY); each is also used flipped and cropped. The OOD images are synthetic
textures (noise, stripes, checkerboards, gradients), a stand-in for far-OOD sets like Textures.
With a real CLIP the photos look like ImageNet classes and the patterns do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def _installed_photos() -> list[tuple[str, Image.Image]]:
    import matplotlib
    import sklearn.datasets

    sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photos = [("grace_hopper", Image.open(sample).convert("RGB"))]
    images_dir = Path(sklearn.datasets.__file__).parent / "images"
    photos += [(p.stem, Image.open(p).convert("RGB")) for p in sorted(images_dir.glob("*.jpg"))]
    return photos


def _variants(image: Image.Image) -> list[Image.Image]:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    inner = square.crop((side // 8, side // 8, side - side // 8, side - side // 8))
    return [image, ImageOps.mirror(image), square, inner]


def _patterns(size: int = 224, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    arrays = [
        rng.integers(0, 256, (size, size, 3)),
        rng.normal(128, 40, (size, size, 3)),
        np.repeat(((np.sin(2 * np.pi * 8 * x) > 0) * 255)[..., None], 3, axis=2),
        np.repeat(((np.sin(2 * np.pi * 5 * (x + y)) > 0) * 200)[..., None], 3, axis=2),
        np.repeat((((x * 8).astype(int) + (y * 8).astype(int)) % 2 * 255)[..., None], 3, axis=2),
        np.stack([x * 255, y * 255, (1 - x) * 255], axis=2),
        np.stack([np.full_like(x, 30), y * 255, np.full_like(x, 200)], axis=2),
        np.repeat((np.hypot(x - 0.5, y - 0.5) * 512 % 255)[..., None], 3, axis=2),
        rng.integers(0, 2, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1) * 255,
        rng.uniform(0, 255, (size, size, 1)).repeat(3, axis=2),
        np.stack([np.sin(20 * x) * 127 + 128, np.cos(20 * y) * 127 + 128, x * y * 255], axis=2),
        np.repeat((((x * 16).astype(int)) % 3 * 120)[..., None], 3, axis=2),
    ]
    return [Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)) for a in arrays]


PHOTO_STEMS = ("grace_hopper", "china", "flower")  # the file stems of the installed photos


def _foreign_files(folder: Path) -> list[Path]:
    """Files in ``folder`` that a previous ``write_demo_data`` did not write."""
    if not folder.is_dir():
        return []
    ours = {folder / "id", folder / "ood"}
    foreign = [p for p in folder.iterdir() if p not in ours]
    for sub in ours & set(folder.iterdir()):
        foreign += [p for p in sub.iterdir() if not p.name.startswith(("pattern_", *PHOTO_STEMS))]
    return foreign


def write_demo_data(folder: Path) -> tuple[Path, Path]:
    """Write ``folder/id`` (3 photos, 4 variants each: as is, mirrored, square crop, inner crop)
    and ``folder/ood`` (12 patterns) as JPEG/PNG.

    A folder holding anything else is refused (``ValueError``): the demo never mixes its files with
    others. A previous demo set is simply written again.
    """
    foreign = _foreign_files(folder)
    if foreign:
        raise ValueError(f"{folder} already holds other files (e.g. {foreign[0].name}); give a new or empty folder")
    id_dir, ood_dir = folder / "id", folder / "ood"
    id_dir.mkdir(parents=True, exist_ok=True)
    ood_dir.mkdir(parents=True, exist_ok=True)
    for name, photo in _installed_photos():
        for k, variant in enumerate(_variants(photo)):
            variant.save(id_dir / f"{name}_{k}.jpg", quality=92)
    for k, pattern in enumerate(_patterns()):
        pattern.save(ood_dir / f"pattern_{k:02d}.png")
    return id_dir, ood_dir
