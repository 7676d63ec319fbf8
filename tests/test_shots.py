"""Few-shot ID images: both sources, the seeded draw of k per class, short and missing classes,
and the prototypes (negspace.data.shots)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from negspace.data.shots import class_prototypes, read_shots
from negspace.errors import DatasetError
from numerics import assert_features_close

CLASSES = ["red square", "green square", "blue square"]


def _folder(root, counts, names=None):
    for i, count in enumerate(counts):
        folder = root / (names[i] if names else CLASSES[i].replace(" ", "_"))
        folder.mkdir(parents=True)
        for j in range(count):
            Image.new("RGB", (8, 8), (i * 80, j, 0)).save(folder / f"img_{j:02d}.png")
    return root


def test_class_folders_by_name_draw_k_per_class_with_the_seed(tmp_path):
    root = _folder(tmp_path / "shots", [20, 16, 5])
    shots = read_shots(root, CLASSES, k=16, seed=0)
    assert shots.counts().tolist() == [16, 16, 5] and shots.fewer == {"blue square": 5}
    assert all(p.parent.name == CLASSES[c].replace(" ", "_") for p, c in zip(shots.paths, shots.labels, strict=False))
    assert read_shots(root, CLASSES, k=16, seed=0).paths == shots.paths  # reproducible
    assert read_shots(root, CLASSES, k=16, seed=1).paths != shots.paths  # the draw follows the seed
    assert shots.summary()["classes_with_fewer"] == 1


def test_unnamed_folders_one_per_class_are_the_classes_in_sorted_order(tmp_path):
    root = _folder(tmp_path / "train", [3, 3, 3], names=["n02", "n01", "n03"])
    shots = read_shots(root, CLASSES, k=2)
    assert [p.parent.name for p in shots.paths] == ["n01", "n01", "n02", "n02", "n03", "n03"]


def test_a_list_file_by_name_or_index(tmp_path):
    _folder(tmp_path / "imgs", [2, 2, 2])
    listing = tmp_path / "shots.txt"
    listing.write_text(
        "imgs/red_square/img_00.png\tred square\nimgs/green_square/img_00.png\t1\n"
        "# a comment\nimgs/blue_square/img_01.png\tBlue Square\n",
        encoding="utf-8",
    )
    shots = read_shots(listing, CLASSES, k=16)
    assert shots.counts().tolist() == [1, 1, 1] and len(shots.fewer) == 3
    listing.write_text("imgs/red_square/img_00.png\tpurple\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 1: 'purple' is no class"):
        read_shots(listing, CLASSES)


def test_a_class_without_images_or_a_missing_source_is_one_sentence(tmp_path):
    root = _folder(tmp_path / "shots", [2, 2, 0])
    with pytest.raises(DatasetError, match=r"1 class\(es\) have no image, e.g. 'blue square'"):
        read_shots(root, CLASSES)
    with pytest.raises(DatasetError, match="does not exist"):
        read_shots(tmp_path / "nowhere", CLASSES)


def test_prototypes_are_normalised_means_of_normalised_features():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((7, 5)) * rng.uniform(0.5, 3, (7, 1))  # unnormalised on purpose
    labels = np.array([0, 0, 1, 1, 1, 2, 0])
    prototypes = class_prototypes(features, labels, 3)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for c in range(3):
        mean = unit[labels == c].mean(axis=0)
        np.testing.assert_allclose(prototypes[c], mean / np.linalg.norm(mean), atol=1e-6)
    with pytest.raises(ValueError, match="class 3 has no shot"):
        class_prototypes(features, labels, 4)


@pytest.mark.numerics
def test_prototypes_are_encoded_through_the_feature_cache(tmp_path, tiny_openclip):
    from negspace.data.shots import encode_prototypes
    from negspace.encoders import load_encoder

    shots = read_shots(_folder(tmp_path / "shots", [3, 2, 2]), CLASSES, k=2)
    encoder = load_encoder(
        tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", cache_dir=tmp_path / "cache"
    )
    encoder.show_progress = False
    prototypes = encode_prototypes(encoder, shots)
    features = encoder.encode_image_files(shots.paths).features
    assert_features_close(prototypes, class_prototypes(features, shots.labels, 3))
    assert prototypes.shape == (3, encoder.dim)


def test_a_class_name_listed_twice_gets_its_folder_for_both(tmp_path):
    classes = ["missile", "red square", "missile"]  # as ImageNet's list has "missile" twice
    root = _folder(tmp_path / "shots", [2, 2], names=["missile", "red_square"])
    shots = read_shots(root, classes, k=2)
    assert shots.counts().tolist() == [2, 2, 2]


def test_classes_short_of_shots_are_counted_one_by_one_and_duplicate_names_reported(tmp_path, caplog):
    # ImageNet lists "crane" and "maillot" twice: with one shot per class, every class is short,
    # and the two names listed twice are reported as such, not collapsed into one class each
    classes = ["crane", "red square", "crane", "maillot", "blue square", "maillot"]
    root = _folder(tmp_path / "shots", [1, 1, 1, 1], names=["crane", "red_square", "maillot", "blue_square"])
    with caplog.at_level("WARNING", logger="negspace"):
        shots = read_shots(root, classes, k=16)
    summary = shots.summary()
    assert summary["classes_with_fewer"] == 6 and len(shots.fewer) == 6
    assert shots.fewer["crane (class 0)"] == shots.fewer["crane (class 2)"] == 1
    assert summary["duplicate_names"] == {"crane": [0, 2], "maillot": [3, 5]}
    assert "6 class(es) have fewer than 16 images" in caplog.text
    assert "2 class name(s) are listed more than once (e.g. 'crane': classes 0, 2)" in caplog.text
