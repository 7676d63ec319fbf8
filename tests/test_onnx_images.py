"""The torch-free image path of ``--runtime onnxruntime``: the transform as a recipe (PIL and
NumPy), the image tower's export found from the weights' hash, and a `negspace serve` process
that never loads torch, giving the scores `negspace score` gives with torch."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from fixtures_models import TINY_DIM
from negspace.cli import main
from negspace.encoders import load_encoder
from negspace.encoders.image_recipe import ImageRecipe, recipe_of
from negspace.encoders.onnx_images import OnnxImageEncoder, load_image_encoder
from negspace.encoders.onnx_index import image_index_path
from negspace.encoders.preprocess import openood_transform
from negspace.runconfig import ModelConfig
from negspace.runs import load_model
from numerics import assert_features_close, assert_scores_close
from serve_support import free_port, save_detector, start_process, write_images

pytest.importorskip("onnxruntime")

SIZES = [(375, 500), (500, 375), (32, 32), (33, 31), (1, 1), (7, 300), (300, 7), (64, 64)]
MCM_TEMPERATURE = 1.0


def _images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _config(saved, cache: Path, **kw) -> ModelConfig:
    return ModelConfig(
        spec=saved.spec, weights=saved.weights, device="cpu", cache_dir=cache, runtime="onnxruntime", **kw
    )


def _torch(saved):
    return load_encoder(saved.spec, weights=saved.weights, device="cpu", use_cache=False)


# ------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("preprocess", ["model", "openood"])
def test_the_recipe_gives_the_torch_transform_s_pixels_exactly(tiny_openclip, preprocess):
    """Bigger, smaller (padded), wider, taller, square, one-pixel images: the same float32 array."""
    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", preprocess=preprocess)
    transform = encoder.backend.pixel_transform()
    recipe = recipe_of(transform)
    assert recipe is not None and recipe.crop == (32, 32)
    assert recipe.resize == ((32,) if preprocess == "model" else (37,))  # round(32 * 256 / 224)
    for image in [*_images(), _images()[0].convert("L").convert("RGB")]:
        want = transform(image).numpy()
        got = recipe(image)
        assert got.dtype == np.float32 and got.shape == want.shape == (3, 32, 32)
        np.testing.assert_array_equal(got, want)
    assert ImageRecipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe


def test_transforms_without_an_exact_recipe_are_not_read(tiny_hf_clip):
    from torchvision import transforms

    hf = load_encoder(tiny_hf_clip.spec, weights=tiny_hf_clip.weights, device="cpu", use_cache=False)
    assert recipe_of(hf.backend.pixel_transform()) is None  # a Hugging Face image processor
    base, _ = openood_transform(32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert recipe_of(base) is not None
    flipped = transforms.Compose([transforms.RandomHorizontalFlip(), *base.transforms])
    capped = transforms.Compose([transforms.Resize(32, max_size=40), *base.transforms[1:]])
    assert recipe_of(flipped) is None and recipe_of(capped) is None
    with pytest.raises(ValueError, match="not an image recipe"):
        ImageRecipe.from_json({"resize": [32], "interpolation": "lanczos", "crop": [32, 32], "mean": [0] * 3})


# ------------------------------------------------------------------------------ the encoder


def test_the_image_encoder_gives_torch_s_features_and_texts_through_the_full_encoder(tiny_openclip, tmp_path):
    config = _config(tiny_openclip, tmp_path / "cache")
    assert load_image_encoder(config.spec, config.weights, config.cache_dir, "model", lambda: None) is None
    encoder = load_model(config, images_only=True)  # no entry yet: a child process exports and writes it
    assert isinstance(encoder, OnnxImageEncoder) and encoder.dim == TINY_DIM
    entry = image_index_path(tmp_path / "cache", tiny_openclip.spec, encoder.fingerprint, "model")
    assert entry.is_file()
    reference = _torch(tiny_openclip)
    assert encoder.fingerprint == reference.fingerprint and encoder.preprocess_id == reference.preprocess_id
    images = _images()
    assert_features_close(encoder.encode_images(images, batch_size=3), reference.encode_images(images))

    write_images(tmp_path / "files", 3, seed=5)
    (tmp_path / "files" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    files = sorted((tmp_path / "files").iterdir())
    encoding = encoder.encode_image_files(files, batch_size=2, progress=False)
    assert [s.path.name for s in encoding.skipped] == ["broken.jpg"] and len(encoding.paths) == 3
    want = reference.encode_image_files(files, progress=False)
    assert encoding.paths == want.paths
    assert_features_close(encoding.features, want.features)

    assert encoder._full is None  # texts load the full encoder, once
    assert_features_close(
        encoder.encode_texts(["a cat", "a dog"], progress=False), reference.encode_texts(["a cat", "a dog"])
    )
    assert encoder._full is not None and encoder._full.runtime == "onnxruntime"


def test_the_image_encoder_loads_without_importing_torch(tiny_openclip, tmp_path):
    """In a fresh process, after an earlier load wrote the index: torch is never imported."""
    config = _config(tiny_openclip, tmp_path / "cache")
    expected = load_model(config, images_only=True).encode_images(_images())
    script = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from negspace.runconfig import ModelConfig\n"
        "from negspace.runs import load_model\n"
        f"config = ModelConfig(spec={tiny_openclip.spec!r}, weights={str(tiny_openclip.weights)!r}, device='cpu',"
        f" cache_dir={str(tmp_path / 'cache')!r}, runtime='onnxruntime')\n"
        "encoder = load_model(config, images_only=True)\n"
        "rng = np.random.default_rng(0)\n"
        f"images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in {SIZES!r}]\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, encoder.encode_images(images))\n"
        "print(type(encoder).__name__, 'torch' in sys.modules, 'open_clip' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OnnxImageEncoder", "False", "False"]
    assert_features_close(np.load(tmp_path / "got.npy"), expected)


@pytest.mark.parametrize("damage", ["truncated", "swapped", "entry"])
def test_a_damaged_export_or_entry_is_made_again_in_a_child(tiny_openclip, tmp_path, caplog, damage):
    """Half a file, another model in its place, an entry that is not JSON: the next load finds
    no usable export, a child process makes it again, and the image path comes back."""
    cache = tmp_path / "cache"
    config = _config(tiny_openclip, cache)
    first = load_model(config, images_only=True)
    entry = image_index_path(cache, tiny_openclip.spec, first.fingerprint, "model")
    image = first.backend.folder / "image.onnx"
    if damage == "truncated":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    elif damage == "swapped":
        image.write_bytes((first.backend.folder / "text.onnx").read_bytes())
    else:
        entry.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="negspace"):
        assert load_image_encoder(config.spec, config.weights, cache, "model", lambda: None) is None
        mended = load_model(config, images_only=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("in a separate process" in m for m in messages)
    if damage != "entry":
        assert any("is made again" in m for m in messages), messages
    assert isinstance(mended, OnnxImageEncoder)
    assert_features_close(mended.encode_images(_images()), _torch(tiny_openclip).encode_images(_images()))


def test_a_model_without_a_recipe_is_exported_in_a_child_once_and_then_loads_with_torch(tiny_hf_clip, tmp_path, caplog):
    config = replace(_config(tiny_hf_clip, tmp_path / "cache"), weights=tiny_hf_clip.folder)  # --weights FOLDER
    with caplog.at_level(logging.INFO, logger="negspace.encoders.onnx_images"):
        first = load_model(config, images_only=True)
        second = load_model(config, images_only=True)
    exports = [r for r in caplog.records if "in a separate process" in r.getMessage()]
    assert len(exports) == 1  # the entry records that images need torch: no second child
    for encoder in (first, second):
        assert type(encoder).__name__ == "ClipEncoder" and encoder.runtime == "onnxruntime"


def test_weights_that_do_not_load_are_one_sentence_after_the_child_fails(tiny_openclip, tmp_path, caplog):
    from negspace.errors import WeightsUnavailableError

    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint at all")
    config = ModelConfig(
        spec=tiny_openclip.spec, weights=bad, device="cpu", cache_dir=tmp_path / "c", runtime="onnxruntime"
    )
    with caplog.at_level(logging.WARNING), pytest.raises(WeightsUnavailableError, match=re.escape(str(bad))):
        load_model(config, images_only=True)
    assert any("export process failed" in r.getMessage() for r in caplog.records)


def test_without_the_cache_or_local_weights_the_model_loads_as_usual(tiny_openclip, tmp_path):
    no_cache = load_model(_config(tiny_openclip, tmp_path / "c1", use_cache=False), images_only=True)
    assert type(no_cache).__name__ == "ClipEncoder" and no_cache.runtime == "onnxruntime"
    torch_runtime = load_model(
        ModelConfig(spec=tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", cache_dir=tmp_path / "c2"),
        images_only=True,
    )
    assert type(torch_runtime).__name__ == "ClipEncoder" and torch_runtime.runtime == "torch"


# ------------------------------------------------------------------------------ serving


def _torch_pages(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if "libtorch" in line or "/torch/" in line})


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the server's memory map in /proc")
def test_serve_runs_without_torch_and_answers_with_torch_s_scores(tiny_openclip, tmp_path):
    """Neither the first start (the export is made in a child process) nor the second maps a
    torch library in the server process."""
    detector = save_detector(tmp_path, tiny_openclip, method="mcm")
    pool = write_images(tmp_path / "pool", 6, seed=3) + write_images(tmp_path / "pool", 2, seed=4, size=(50, 20))
    model = ["--model", tiny_openclip.spec, "--weights", str(tiny_openclip.weights), "--device", "cpu", "-q"]
    scored = tmp_path / "scored"
    assert main(["score", str(tmp_path / "pool"), "--detector", str(detector), "--out", str(scored), *model]) == 0
    expected = {r["sha256"]: r["score"] for r in ds.dataset(scored, format="parquet").to_table().to_pylist()}
    served = []
    for start in range(2):
        port = free_port()
        args = ["--detector", str(detector), *model, "--runtime", "onnxruntime", "--cache-dir", str(tmp_path / "c")]
        process = start_process(args, port, timeout=180)  # the first start exports, in a child
        try:
            files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in pool]
            response = httpx.post(f"http://127.0.0.1:{port}/v1/score", files=files, timeout=120)
            assert response.status_code == 200, response.text
            served.append(response.json()["results"])
            described = httpx.get(f"http://127.0.0.1:{port}/v1/detector", timeout=30).json()
            torch_pages = _torch_pages(process.pid)
        finally:
            process.terminate()
            process.wait(60)
        assert torch_pages == [], (start, torch_pages[:3])
        assert described["runtime"] == "onnxruntime" and described["images_without_torch"] is True
    for results in served:
        assert len(results) == len(pool) and set(expected) == {r["sha256"] for r in results}
        assert_scores_close(
            [r["score"] for r in results],
            [expected[r["sha256"]] for r in results],
            tau=MCM_TEMPERATURE,
            dim=TINY_DIM,
            feature_error=1e-5,
        )


def test_detectors_that_encode_texts_while_serving_keep_the_full_encoder():
    """NegRefine encodes label pairs as it scores; learning, ANTS encodes the MLLM's words and
    InterNeg and TINS invert through the text tower; the others need the image tower alone."""
    from negspace import ANTS, MCM, TANL, TINS, AdaNeg, InterNeg, NegLabel, NegRefine
    from negspace.serve.service import images_only

    def bare(cls):
        return object.__new__(cls)  # isinstance is all the choice looks at

    for cls in (MCM, NegLabel, TANL, AdaNeg, ANTS, InterNeg, TINS):
        assert images_only(bare(cls), None), cls
    assert not images_only(bare(NegRefine), None)
    for cls in (TANL, AdaNeg):
        assert images_only(bare(cls), "sync") and images_only(bare(cls), "async")
    for cls in (ANTS, InterNeg, TINS, NegRefine):
        assert not images_only(bare(cls), "async"), cls
