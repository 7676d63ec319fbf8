"""Tests of negspace.data: decoding images of every mode to RGB, and opening image sets."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negspace.data import (
    IMAGE_EXTENSIONS,
    ImageSet,
    is_feature_file,
    load_rgb,
    open_image_folder,
    open_image_set,
    open_openood_list,
    open_path_list,
    parse_named_set,
)
from negspace.errors import DatasetError, UnreadableImageError

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def _rgb_noise(size: tuple[int, int] = (48, 32), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _assert_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == size
    return np.asarray(img)


# --- load_rgb: modes --------------------------------------------------------------------------


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    src = _rgb_noise()
    src.save(tmp_path / "a.png")
    out = _assert_rgb(load_rgb(tmp_path / "a.png"), src.size)
    np.testing.assert_array_equal(out, np.asarray(src))


def test_result_is_detached_from_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _rgb_noise().save(path)
    img = load_rgb(str(path))  # str accepted too
    path.unlink()
    assert np.asarray(img).shape == (32, 48, 3)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, WHITE),
        ("CMYK", (0, 255, 255, 0), RED),
    ],
)
def test_plain_modes(tmp_path: Path, mode: str, value: object, expected: tuple) -> None:
    path = tmp_path / f"img_{mode}.tif"
    Image.new(mode, (10, 6), value).save(path)
    out = _assert_rgb(load_rgb(path), (10, 6))
    assert tuple(out[0, 0]) == expected


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(path, quality=95)
    out = _assert_rgb(load_rgb(path), (16, 16))
    assert out.min() > 240  # no ink -> white (and not inverted by the Adobe marker)


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("RGB", (8, 8), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert img.mode == "P"
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "p.gif")
    for name in ("p.png", "p.gif"):
        out = _assert_rgb(load_rgb(tmp_path / name), (8, 8))
        assert tuple(out[3, 3]) == (10, 200, 30)


def test_palette_with_transparency_goes_to_white(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.paste(1, (0, 0, 4, 8))  # left half red, right half index 0 (black, transparent)
    img.save(tmp_path / "pt.png", transparency=0)
    with Image.open(tmp_path / "pt.png") as check:
        assert check.mode == "P"
        assert "transparency" in check.info
    out = _assert_rgb(load_rgb(tmp_path / "pt.png"), (8, 8))
    assert tuple(out[0, 0]) == RED
    assert tuple(out[0, 7]) == WHITE  # not black


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((4, 3, 4), dtype=np.uint8)
    arr[:, 0] = (255, 0, 0, 255)  # opaque red
    arr[:, 1] = (0, 0, 0, 0)  # transparent black
    arr[:, 2] = (255, 0, 0, 128)  # half-transparent red
    Image.fromarray(arr, "RGBA").save(tmp_path / "rgba.png")
    out = _assert_rgb(load_rgb(tmp_path / "rgba.png"), (3, 4))
    assert tuple(out[0, 0]) == RED
    assert tuple(out[0, 1]) == WHITE
    r, g, b = (int(v) for v in out[0, 2])
    assert r == 255
    assert 120 <= g <= 135
    assert g == b


def test_la_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 2), dtype=np.uint8)
    arr[0, 0] = (40, 255)
    arr[0, 1] = (0, 0)
    Image.fromarray(arr, "LA").save(tmp_path / "la.png")
    out = _assert_rgb(load_rgb(tmp_path / "la.png"), (2, 2))
    assert tuple(out[0, 0]) == (40, 40, 40)
    assert tuple(out[0, 1]) == WHITE


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as check:
        assert check.mode.startswith("I")
    out = _assert_rgb(load_rgb(tmp_path / "g16.png"), (16, 16))
    np.testing.assert_array_equal(out[..., 0], np.arange(256).reshape(16, 16))
    assert (out[..., 0] == out[..., 2]).all()


def test_mode_i_from_16bit_pgm(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(tmp_path / "g.pgm")
    out = _assert_rgb(load_rgb(tmp_path / "g.pgm"), (3, 1))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_mode_i_outside_16bit_range_is_stretched(tmp_path: Path) -> None:
    arr = np.array([[-1000, 0, 1000]], dtype=np.int32)
    Image.fromarray(arr, "I").save(tmp_path / "i32.tif")
    out = _assert_rgb(load_rgb(tmp_path / "i32.tif"), (3, 1))
    assert out[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # fractions
        ([0.0, 100.0, 200.0], [0, 100, 200]),  # 8-bit levels
        ([-2.0, 0.0, 2.0], [0, 128, 255]),  # anything else: min..max
        ([float("nan"), 0.25, 1.0], [0, 64, 255]),  # NaN -> 0
    ],
)
def test_float_mode(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    Image.fromarray(np.array([values], dtype=np.float32), "F").save(tmp_path / "f.tif")
    out = _assert_rgb(load_rgb(tmp_path / "f.tif"), (3, 1))
    assert out[0, :, 0].tolist() == expected


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), WHITE)
    img.paste(RED, (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = _assert_rgb(load_rgb(tmp_path / "rot.jpg"), (20, 40))
    r, g, b = (int(v) for v in out[2, 17])  # the block now sits at the top-right
    assert r > 200
    assert g < 60
    assert b < 60


# --- load_rgb: failures -----------------------------------------------------------------------


def _expect_unreadable(path: Path, *fragments: str) -> UnreadableImageError:
    with pytest.raises(UnreadableImageError) as info:
        load_rgb(path)
    err = info.value
    assert err.path == path
    assert err.reason
    assert len(err.reason) <= 200
    for fragment in fragments:
        assert fragment in err.reason.lower()
    assert str(path) in str(err)
    return err


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    buf = io.BytesIO()
    _rgb_noise((64, 64)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    _expect_unreadable(path, "truncated")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    _expect_unreadable(path, "not an image")


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    _expect_unreadable(path, "empty", "0 bytes")


def test_missing_file(tmp_path: Path) -> None:
    _expect_unreadable(tmp_path / "nope.png", "does not exist")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    _expect_unreadable(tmp_path / "d.png", "directory")


def test_corrupt_png_body(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _rgb_noise().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:120] = bytes(60)  # overwrite compressed pixel data (and its CRC)
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    _expect_unreadable(path)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    _rgb_noise((64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 * limit -> error
    _expect_unreadable(path, "decompression bomb")


# --- folders ----------------------------------------------------------------------------------


def _touch_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_folder_recursive_sorted_filtered(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for rel in ["b.png", "a/z.JPG", "a/b/c.jpeg", "A.Png", "a-b.webp", "x/y/z/deep.tiff"]:
        _touch_png(root / rel)
    (root / "readme.txt").write_text("x")
    (root / "a" / "labels.json").write_text("{}")
    (root / "noext").write_text("x")
    _touch_png(root / ".hidden.png")
    _touch_png(root / ".cache" / "thumb.png")
    _touch_png(root / "a" / ".git" / "obj.png")

    s = open_image_folder(root)
    rel = [p.relative_to(root).as_posix() for p in s.paths]
    assert rel == sorted(["A.Png", "a-b.webp", "a/b/c.jpeg", "a/z.JPG", "b.png", "x/y/z/deep.tiff"])
    assert s.name == "set"
    assert s.labels is None
    assert len(s) == 6
    assert all(p.parent == root or root in p.parents for p in s.paths)
    assert open_image_folder(root).paths == s.paths  # deterministic


def test_folder_accepts_every_listed_extension(tmp_path: Path) -> None:
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        (tmp_path / f"f{i}{ext.upper() if i % 2 else ext}").write_bytes(b"x")
    assert len(open_image_folder(tmp_path).paths) == len(IMAGE_EXTENSIONS)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_folder_symlinks_followed_without_cycles(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _touch_png(root / "sub" / "in.png")
    _touch_png(outside / "out.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # cycle
    (root / "dangling.png").symlink_to(tmp_path / "gone.png")

    rel = [p.relative_to(root).as_posix() for p in open_image_folder(root).paths]
    # The cycle is entered at most once; the dangling link is kept (reported unreadable later).
    assert rel == ["dangling.png", "linked/out.png", "sub/in.png"]


def test_folder_empty_or_missing(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"No image files found in .*empty.*\.jpg"):
        open_image_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_folder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a folder"):
        open_image_folder(tmp_path / "empty" / "notes.txt")


# --- path lists -------------------------------------------------------------------------------


def test_path_list_relative_absolute_comments(tmp_path: Path, caplog) -> None:
    lists = tmp_path / "lists"
    a = _touch_png(lists / "imgs" / "a.png")
    b = _touch_png(tmp_path / "elsewhere" / "b b.png")
    c = _touch_png(lists / "c#1.png")
    text = f"\ufeff# my set\n\nimgs/a.png\r\n   {b}   \n  # indented comment\n{c.name}\nimgs/gone.png\n"
    (lists / "my list.txt").write_text(text, encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="negspace.data"):
        s = open_path_list(lists / "my list.txt")
    assert s.paths == [a, b, c, lists / "imgs" / "gone.png"]
    assert s.name == "my_list"
    assert s.labels is None
    assert "1 of 4 files" in caplog.text
    assert "gone.png" in caplog.text


def test_path_list_errors(tmp_path: Path) -> None:
    (tmp_path / "comments.txt").write_text("# nothing\n\n   \n")
    with pytest.raises(DatasetError, match="names no images"):
        open_path_list(tmp_path / "comments.txt")
    (tmp_path / "gone.txt").write_text("a.png\nb.png\n")
    with pytest.raises(DatasetError, match="None of the 2 files"):
        open_path_list(tmp_path / "gone.txt")
    with pytest.raises(DatasetError, match="does not exist"):
        open_path_list(tmp_path / "nolist.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9.png\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        open_path_list(tmp_path / "latin1.txt")


def test_openood_list_given_as_plain_list_gets_a_hint(tmp_path: Path) -> None:
    _touch_png(tmp_path / "images" / "a.png")
    (tmp_path / "ood.txt").write_text("a.png 3\n")
    with pytest.raises(DatasetError, match=r"LIST\.txt:ROOT"):
        open_image_set(tmp_path / "ood.txt")


# --- OpenOOD lists ----------------------------------------------------------------------------


def test_openood_list(tmp_path: Path, caplog) -> None:
    root = tmp_path / "images_largescale"
    a = _touch_png(root / "imagenet_1k" / "val" / "a.JPEG")
    b = _touch_png(root / "inat" / "b.jpg")
    c = _touch_png(root / "with space" / "c 2.png")
    d = _touch_png(root / "no label here.png")
    lst = tmp_path / "benchmark_imglist" / "test_inat.txt"
    lst.parent.mkdir()
    lst.write_text(
        "# OpenOOD list\n"
        "imagenet_1k/val/a.JPEG 65\n"
        "inat/b.jpg\t-1\n"
        "\n"
        "with space/c 2.png 7\n"
        "inat/b.jpg\n"
        "no label here.png\n"
        "inat/missing.jpg 3\n"
    )
    with caplog.at_level(logging.WARNING, logger="negspace.data"):
        s = open_openood_list(lst, root)
    assert s.paths == [a, b, c, b, d, root / "inat" / "missing.jpg"]
    assert s.labels == [65, -1, 7, -1, -1, 3]
    assert s.name == "test_inat"
    assert "1 of 6 files" in caplog.text

    same = open_image_set(f"{lst}:{root}", name="inat")
    assert same.paths == s.paths
    assert same.labels == s.labels
    assert same.name == "inat"


def test_openood_list_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch_png(root / "a.png")
    lst = tmp_path / "l.txt"
    lst.write_text("a.png cat\n")
    with pytest.raises(DatasetError, match=r"Line 1 .* 'cat'.*not an integer"):
        open_openood_list(lst, root)
    lst.write_text("a.png 1\n")
    with pytest.raises(DatasetError, match=r"image root .* does not exist"):
        open_openood_list(lst, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="does not exist"):
        open_openood_list(tmp_path / "nolist.txt", root)
    with pytest.raises(DatasetError, match="root after ':'"):
        open_image_set(f"{lst}:")


# --- open_image_set ---------------------------------------------------------------------------


def test_open_image_set_dispatch(tmp_path: Path) -> None:
    folder = tmp_path / "weird:name"  # a colon in an existing folder name is not a LIST:ROOT
    img = _touch_png(folder / "a.png")
    s = open_image_set(str(folder))
    assert s.paths == [img]
    assert s.name == "weird_name"

    (tmp_path / "paths.txt").write_text(f"{img}\n")
    s = open_image_set(tmp_path / "paths.txt", name="custom")
    assert s.paths == [img]
    assert s.name == "custom"

    with pytest.raises(DatasetError, match="does not exist"):
        open_image_set(tmp_path / "absent")
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_set(f"{tmp_path / 'absent.txt'}:{folder}")
    np.save(tmp_path / "feats.npy", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(DatasetError, match="feature file"):
        open_image_set(tmp_path / "feats.npy")
    with pytest.raises(DatasetError, match="neither a folder"):
        open_image_set(img)
    with pytest.raises(DatasetError, match="empty"):
        open_image_set("  ")


def test_is_feature_file() -> None:
    assert is_feature_file("x/feats.npy")
    assert is_feature_file(Path("F.NPY"))
    assert not is_feature_file("x/feats.txt")
    assert not is_feature_file("imgs")


def test_image_set_label_length_checked() -> None:
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        ImageSet("x", [Path("a"), Path("b")], [0])


# --- parse_named_set --------------------------------------------------------------------------


def test_parse_named_set_forms(tmp_path: Path) -> None:
    assert parse_named_set("inat=/data/inaturalist") == ("inat", "/data/inaturalist")
    assert parse_named_set("ssb_hard.v2-x=rel/path=1") == ("ssb_hard.v2-x", "rel/path=1")
    assert parse_named_set("/data/textures/") == ("textures", "/data/textures/")
    assert parse_named_set("/data/run=3/images") == ("images", "/data/run=3/images")
    assert parse_named_set("lists/test_inat.txt") == ("test_inat", "lists/test_inat.txt")
    assert parse_named_set("cache/ood feats.npy") == ("ood_feats", "cache/ood feats.npy")
    lst = tmp_path / "test_ssb.txt"
    lst.write_text("a.png 1\n")
    assert parse_named_set(f"{lst}:{tmp_path}") == ("test_ssb", f"{lst}:{tmp_path}")


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("", "empty"),
        ("=/data/x", "name before '=' .* empty"),
        ("inat=", "path after '=' .* empty"),
        ("bad name=/data/x", "letters, digits"),
        ("caf\u00e9!=/data/x", "letters, digits"),
        ("/", "Cannot derive a set name"),
    ],
)
def test_parse_named_set_errors(arg: str, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        parse_named_set(arg)


def test_a_huge_jpeg_is_named_and_decoded_reduced(tmp_path, caplog):
    import logging
    import warnings

    from PIL import Image

    from negspace.data.images import MAX_DECODE_SIDE, load_rgb

    path = tmp_path / "huge.jpg"
    Image.new("L", (9600, 9600), 128).save(path, quality=50)  # 92 MP: over PIL's warning size
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw PIL warning escapes
        with caplog.at_level(logging.WARNING, logger="negspace.data.images"):
            image = load_rgb(path)
    assert image.mode == "RGB" and MAX_DECODE_SIDE <= min(image.size) < 9600
    assert any("huge.jpg is very large (9600 x 9600 pixels)" in r.getMessage() for r in caplog.records)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (1200, 900), (10, 20, 30)).save(small)
    assert load_rgb(small).size == (1200, 900)  # ordinary photos are decoded whole
