"""``--runtime onnxruntime``: the towers exported to ONNX once (cached by the weights' fingerprint)
and run by a real ONNX Runtime; features, scores and metrics equal torch's within float32 bounds.

Every comparison gives each runtime a cache folder of its own: the feature cache is shared by the
runtimes (their features agree within float32 rounding), so one runtime would otherwise read the
features the other wrote."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from fixtures_models import TINY_DIM, SavedModel, save_tiny_openclip
from negspace.cli import main
from negspace.encoders import ClipEncoder, load_encoder
from negspace.errors import NegspaceError
from negspace.runconfig import ModelConfig
from numerics import FEATURE_ERROR, assert_features_close, assert_scores_close
from serve_support import free_port, save_detector, start_process, write_images

pytest.importorskip("onnxruntime")

TEXTS = ["cat", "a red fox", "the quick brown fox jumps over the lazy dog", "x", "two words"]
EXPORT_LOG = "negspace.encoders.onnx_backend"
MCM_TEMPERATURE = 1.0  # the scores' softmax temperature: their float32 bound follows from it


@pytest.fixture(scope="module", params=["openclip", "hf"])
def both(request: pytest.FixtureRequest, tmp_path_factory) -> tuple[ClipEncoder, ClipEncoder]:
    """The torch and the ONNX Runtime encoder of one tiny model (export to a temporary folder)."""
    saved = request.getfixturevalue("tiny_openclip" if request.param == "openclip" else "tiny_hf_clip")
    cache = tmp_path_factory.mktemp("onnx-cache")
    onnx = _onnx(saved, cache, use_cache=False)
    assert not (cache / "onnx").exists()  # use_cache=False: the export went to a temporary folder
    return _torch(saved), onnx


def _torch(saved: SavedModel) -> ClipEncoder:
    return load_encoder(saved.spec, weights=saved.weights, device="cpu", use_cache=False)


def _onnx(saved: SavedModel, cache: Path, **kw: object) -> ClipEncoder:
    return load_encoder(saved.spec, weights=saved.weights, device="cpu", cache_dir=cache, runtime="onnxruntime", **kw)  # type: ignore[arg-type]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 41, 3), dtype=np.uint8)) for i in range(n)]


def _exports(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "onnx").iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_image_and_text_features_equal_torch_for_any_batch_size(both, batch):
    """The batch axis (and the text tower's token axis) are dynamic: batches of 1, 2 and 5, texts
    of other lengths than the export's, all within the float32 bound of torch's features."""
    torch_encoder, onnx_encoder = both
    assert onnx_encoder.runtime == "onnxruntime" and torch_encoder.runtime == "torch"
    assert onnx_encoder.dim == TINY_DIM and onnx_encoder.preprocess_id == torch_encoder.preprocess_id
    images = _images(5)
    assert_features_close(onnx_encoder.encode_images(images, batch), torch_encoder.encode_images(images, batch))
    for template in ("{}", "a photo of a {}."):
        assert_features_close(
            onnx_encoder.encode_texts(TEXTS, template, batch_size=batch, progress=False),
            torch_encoder.encode_texts(TEXTS, template, batch_size=batch, progress=False),
        )


def test_the_export_is_cached_and_keyed_by_the_weights(tiny_openclip, tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger=EXPORT_LOG):
        _onnx(tiny_openclip, cache)
    assert any(r.getMessage().startswith("Exported ") for r in caplog.records if r.name == EXPORT_LOG)
    (folder,) = _exports(cache)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"image.onnx", "text.onnx", "export.json"} <= set(stamps)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=EXPORT_LOG):
        again = _onnx(tiny_openclip, cache)
    assert not [r for r in caplog.records if r.name == EXPORT_LOG and r.getMessage().startswith("Exported ")]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # read, not written
    assert again.backend.folder == folder  # type: ignore[attr-defined]

    other = save_tiny_openclip(tmp_path / "other", seed=1)  # the same architecture, other weights
    other_encoder = _onnx(other, cache)
    assert len(_exports(cache)) == 2 and other_encoder.fingerprint != again.fingerprint
    assert_features_close(other_encoder.encode_images(_images(3)), _torch(other).encode_images(_images(3)))


@pytest.mark.parametrize("damage", ["half", "swapped", "incomplete"])
def test_a_damaged_cached_export_is_exported_again(tiny_openclip, tmp_path, caplog, damage):
    """Half a file (a copy cut short), a valid model of something else in its place, a file
    missing: the next load exports again and gives torch's features."""
    cache = tmp_path / "cache"
    _onnx(tiny_openclip, cache)
    (folder,) = _exports(cache)
    image, text = folder / "image.onnx", folder / "text.onnx"
    if damage == "half":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    elif damage == "swapped":
        image.write_bytes(text.read_bytes())  # loads, but it is not the image tower
    else:
        text.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=EXPORT_LOG):
        encoder = _onnx(tiny_openclip, cache)
    messages = [r.getMessage() for r in caplog.records if r.name == EXPORT_LOG]
    assert any(m.startswith("Exported ") for m in messages), messages
    if damage != "incomplete":
        assert any("unusable" in m for m in messages), messages
    assert _exports(cache) == [folder] and text.is_file()
    assert_features_close(encoder.encode_images(_images(3)), _torch(tiny_openclip).encode_images(_images(3)))
    assert_features_close(encoder.encode_texts(TEXTS, progress=False), _torch(tiny_openclip).encode_texts(TEXTS))
    assert not [p for p in (cache / "onnx").iterdir() if ".tmp-" in p.name]  # no half export left


def test_a_bad_runtime_is_one_sentence_naming_the_option(tiny_openclip, tmp_path, capsys):
    with pytest.raises(NegspaceError, match="runtime must be one of torch, onnxruntime, got 'tensorrt'"):
        ModelConfig(spec=tiny_openclip.spec, runtime="tensorrt")
    with pytest.raises(NegspaceError, match="runtime must be one of"):
        load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cpu", runtime="onnx")
    for command in (["embed", str(tmp_path), "--out", str(tmp_path / "o")], ["serve", "--detector", str(tmp_path)]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--runtime", "tensorrt"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "--runtime: invalid choice: 'tensorrt'" in err, err
        assert "Traceback" not in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_openclip):
    """A saved MCM detector (torch; no corpus to mine: quick) and a folder of images."""
    root = tmp_path_factory.mktemp("onnx-world")
    detector = save_detector(root, tiny_openclip, method="mcm")
    write_images(root / "pool", 7, seed=3)
    write_images(root / "pool", 3, seed=4, size=(50, 20), fmt="png")
    return {"root": root, "detector": detector, "pool": root / "pool"}


def _model_args(tiny: SavedModel, runtime: str, cache: Path) -> list[str]:
    model = ["--model", tiny.spec, "--weights", str(tiny.weights), "--device", "cpu", "-q"]
    return [*model, "--runtime", runtime, "--cache-dir", str(cache)]


def _rows(folder: Path) -> dict[str, dict]:
    return {r["sha256"]: r for r in ds.dataset(folder, format="parquet").to_table().to_pylist()}


def test_embed_and_score_give_torch_s_results(world, tiny_openclip, tmp_path):
    runs = {}
    for runtime in ("torch", "onnxruntime"):
        args = _model_args(tiny_openclip, runtime, tmp_path / f"cache-{runtime}")
        assert main(["embed", str(world["pool"]), "--out", str(tmp_path / f"embed-{runtime}"), *args]) == 0
        scored = tmp_path / f"score-{runtime}"
        assert (
            main(["score", str(world["pool"]), "--detector", str(world["detector"]), "--out", str(scored), *args]) == 0
        )
        runs[runtime] = (_rows(tmp_path / f"embed-{runtime}"), _rows(scored))
    assert (tmp_path / "cache-onnxruntime" / "onnx").is_dir() and not (tmp_path / "cache-torch" / "onnx").exists()
    (torch_features, torch_scores), (onnx_features, onnx_scores) = runs["torch"], runs["onnxruntime"]
    assert set(torch_features) == set(onnx_features) == set(torch_scores) == set(onnx_scores)
    keys = sorted(torch_features)
    assert len(keys) == 10
    assert_features_close([onnx_features[k]["feature"] for k in keys], [torch_features[k]["feature"] for k in keys])
    assert_scores_close(
        [onnx_scores[k]["score"] for k in keys],
        [torch_scores[k]["score"] for k in keys],
        tau=MCM_TEMPERATURE,
        dim=TINY_DIM,
        feature_error=FEATURE_ERROR,
    )


def _scores_csv(path: Path) -> dict[tuple[str, str], float]:
    with path.open(encoding="utf-8") as file:
        return {(row["set"], row["sample"]): float(row["score"]) for row in csv.DictReader(file)}


def test_eval_gives_torch_s_scores(world, tiny_openclip, tmp_path):
    """MCM (text features from the text tower, image features from the image tower)."""
    root = world["root"]
    for runtime in ("torch", "onnxruntime"):
        command = ["eval", "--method", "mcm", "--classes", str(root / "classes.txt"), "--id", str(root / "id")]
        command += ["--ood", f"o={root / 'ood'}", "--out", str(tmp_path / runtime)]
        assert main([*command, *_model_args(tiny_openclip, runtime, tmp_path / f"cache-{runtime}")]) == 0
    torch_scores, onnx_scores = (
        _scores_csv(tmp_path / "torch" / "scores.csv"),
        _scores_csv(tmp_path / "onnxruntime" / "scores.csv"),
    )
    assert set(torch_scores) == set(onnx_scores) and len(torch_scores) == 12
    keys = sorted(torch_scores)
    assert_scores_close(
        [onnx_scores[k] for k in keys],
        [torch_scores[k] for k in keys],
        tau=MCM_TEMPERATURE,
        dim=TINY_DIM,
        feature_error=FEATURE_ERROR,
    )
    record = (tmp_path / "onnxruntime" / "metrics.json").read_text(encoding="utf-8")
    assert '"runtime": "onnxruntime"' in record and '"runtime"' not in (tmp_path / "torch" / "metrics.json").read_text()


def test_serve_with_onnxruntime_answers_with_torch_s_scores(world, tiny_openclip, tmp_path):
    """`negspace serve --runtime onnxruntime` in a process of its own: /v1/score gives the scores
    `negspace score` gives with torch."""
    torch_out = tmp_path / "torch"
    args = _model_args(tiny_openclip, "torch", tmp_path / "cache-torch")
    assert (
        main(["score", str(world["pool"]), "--detector", str(world["detector"]), "--out", str(torch_out), *args]) == 0
    )
    expected = _rows(torch_out)
    port = free_port()
    process = start_process(
        ["--detector", str(world["detector"]), *_model_args(tiny_openclip, "onnxruntime", tmp_path / "cache-onnx")],
        port,
        timeout=180,  # the first start exports the towers
    )
    try:
        paths = sorted(world["pool"].iterdir())
        files = [
            ("images", (p.name, p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg")) for p in paths
        ]
        response = httpx.post(f"http://127.0.0.1:{port}/v1/score", files=files, timeout=120)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
    finally:
        process.terminate()
        process.wait(60)
    assert [r["name"] for r in results] == [p.name for p in paths]
    assert_scores_close(
        [r["score"] for r in results],
        [expected[r["sha256"]]["score"] for r in results],
        tau=MCM_TEMPERATURE,
        dim=TINY_DIM,
        feature_error=FEATURE_ERROR,
    )
    assert (tmp_path / "cache-onnx" / "onnx").is_dir()  # the server ran the exported towers
