"""Encoders on tiny random-weight models saved to disk and loaded the way a user loads them."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The tiny_openclip / tiny_hf_clip fixtures come from fixtures_models via conftest.py.
from fixtures_models import TINY_DIM, SavedModel
from negspace.cache import FeatureStore
from negspace.data import load_rgb
from negspace.encoders import ClipEncoder, ImageEncoding, SkippedFile, load_encoder
from negspace.errors import NegspaceError, WeightsUnavailableError
from numerics import FEATURE_ERROR, assert_features_close

TEXTS = ["cat", "a dog", "tabby cat", "school bus", "an aircraft carrier", "x", "zebra", "cat"]


@pytest.fixture(params=["openclip", "hf"])
def saved(request: pytest.FixtureRequest) -> SavedModel:
    """Each test taking ``saved`` runs once per backend."""
    name = "tiny_openclip" if request.param == "openclip" else "tiny_hf_clip"
    return request.getfixturevalue(name)


def _load(saved: SavedModel, cache_dir: Path | None = None, **kw: object) -> ClipEncoder:
    return load_encoder(
        saved.spec,
        weights=saved.weights,
        device="cpu",
        cache_dir=cache_dir,
        use_cache=cache_dir is not None,
        **kw,  # type: ignore[arg-type]
    )


class Counter:
    """Wraps a backend method and records what it was asked to encode."""

    def __init__(self, encoder: ClipEncoder, method: str, fail_on_call: int | None = None):
        self.calls: list[int] = []
        self.items: list[object] = []
        self._inner = getattr(encoder.backend, method)
        self._fail_on_call = fail_on_call
        setattr(encoder.backend, method, self)

    def __call__(self, batch: list) -> torch.Tensor:
        if self._fail_on_call is not None and len(self.calls) + 1 == self._fail_on_call:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        self.calls.append(len(batch))
        self.items.extend(batch)
        return self._inner(batch)


def _unit(x: np.ndarray) -> None:
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 50), (32, 32), (64, 20), (25, 70)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    """Four PNGs (one grayscale), one corrupt file and one missing path."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, im in enumerate(_images(4)):
        p = folder / f"img{i}.png"
        (im.convert("L") if i == 1 else im).save(p)
        paths.append(p)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return [*paths[:2], corrupt, *paths[2:], folder / "missing.png"]


# -- loading ----------------------------------------------------------------------------------


def test_loads_through_user_path(saved: SavedModel, tmp_path: Path) -> None:
    enc = _load(saved, tmp_path / "cache")
    assert enc.dim == TINY_DIM
    assert enc.device == torch.device("cpu")
    assert enc.spec == saved.spec
    assert enc.store is not None and enc.store.path.parent == tmp_path / "cache"
    assert enc.preprocess_id
    if saved.weights is not None:  # a file: its content hash
        digest = hashlib.sha256(saved.weights.read_bytes()).hexdigest()
        assert enc.fingerprint == f"sha256:{digest}"
    else:  # a save_pretrained folder
        assert enc.fingerprint.startswith("dir-sha256:")
    assert not enc.backend.model.training
    assert "ClipEncoder(" in repr(enc)


def test_weights_are_really_loaded(tiny_openclip: SavedModel, tmp_path: Path) -> None:
    # Random init differs per seed; equal features prove the saved state dict was loaded.
    a = _load(tiny_openclip).encode_texts(["cat"])
    b = _load(tiny_openclip).encode_texts(["cat"])
    np.testing.assert_array_equal(a, b)
    import fixtures_models

    other = fixtures_models.save_tiny_openclip(tmp_path / "other", seed=1)
    c = _load(other).encode_texts(["cat"])
    assert not np.allclose(a, c)


@pytest.mark.numerics
def test_openclip_weights_folder_with_one_checkpoint(tiny_openclip: SavedModel) -> None:
    enc = load_encoder(tiny_openclip.spec, weights=tiny_openclip.folder, use_cache=False)
    ref = _load(tiny_openclip).encode_texts(["cat"])
    assert_features_close(enc.encode_texts(["cat"]), ref)


@pytest.mark.numerics
def test_openclip_registered_arch_name(tiny_openclip: SavedModel) -> None:
    # A config registered with open_clip is then usable by name, like a built-in.
    import open_clip

    open_clip.add_model_config(tiny_openclip.folder / "negspace-tiny-clip.json")
    enc = load_encoder("openclip:negspace-tiny-clip/none", weights=tiny_openclip.weights, use_cache=False)
    ref = _load(tiny_openclip).encode_texts(["cat"])
    assert_features_close(enc.encode_texts(["cat"]), ref)


# -- texts ------------------------------------------------------------------------------------


@pytest.mark.numerics
def test_text_features_unit_norm_and_batch_invariant(saved: SavedModel) -> None:
    enc = _load(saved)
    whole = enc.encode_texts(TEXTS, batch_size=256, progress=False)
    assert whole.shape == (len(TEXTS), TINY_DIM)
    _unit(whole)
    small = enc.encode_texts(TEXTS, batch_size=3, progress=True)
    assert_features_close(small, whole)
    one_by_one = np.concatenate([enc.encode_texts([t]) for t in TEXTS])
    assert_features_close(one_by_one, whole)
    np.testing.assert_array_equal(whole[0], whole[-1])  # duplicate text, same row
    assert not np.allclose(whole[0], whole[1])


@pytest.mark.numerics
def test_template_is_applied(saved: SavedModel) -> None:
    enc = _load(saved)
    templated = enc.encode_texts(["cat", "dog"], template="a photo of a {}.")
    direct = enc.encode_texts(["a photo of a cat.", "a photo of a dog."])
    assert_features_close(templated, direct)
    for bad in ["a photo", "a {0} {1}", "{name}"]:
        with pytest.raises(NegspaceError, match="template"):
            enc.encode_texts(["cat"], template=bad)


@pytest.mark.numerics
def test_features_averaged_over_templates_are_the_mean_of_raw_features(saved: SavedModel, tmp_path: Path) -> None:
    """CSP's and NegRefine's label feature: mean of the unnormalised template features, then
    normalised (not the mean of unit features); raw features are cached apart from unit ones."""
    templates = ["a photo of a {}.", "a drawing of the {}.", "{} in the wild."]
    words = ["cat", "stone wall", "cat"]
    enc = _load(saved, tmp_path / "cache")
    averaged = enc.encode_texts_averaged(words, templates, progress=False)
    with torch.inference_mode():
        raw = [enc.backend.encode_text_batch([t.format(w) for w in words]).double().numpy() for t in templates]
    expected = np.mean(raw, axis=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    _unit(averaged)
    assert_features_close(averaged, expected)
    of_units = np.mean([enc.encode_texts(words, t) for t in templates], axis=0)
    of_units /= np.linalg.norm(of_units, axis=1, keepdims=True)
    assert np.abs(of_units - averaged).max() > 10 * FEATURE_ERROR  # the raw norms weigh the templates
    raw_first = enc.encode_texts(words, templates[0], unit=False)
    assert_features_close(raw_first, raw[0])  # unnormalised: relative to each row's norm
    again = _load(saved, tmp_path / "cache")
    counter = Counter(again, "encode_text_batch")
    np.testing.assert_array_equal(again.encode_texts_averaged(words, templates), averaged)
    assert counter.calls == []  # every raw feature came from the cache
    with pytest.raises(NegspaceError, match="template"):
        enc.encode_texts_averaged(words, [])


def test_empty_inputs(saved: SavedModel) -> None:
    enc = _load(saved)
    assert enc.encode_texts([]).shape == (0, TINY_DIM)
    assert enc.encode_images([]).shape == (0, TINY_DIM)
    res = enc.encode_image_files([])
    assert res.features.shape == (0, TINY_DIM) and res.paths == [] and res.skipped == []
    with pytest.raises(NegspaceError, match="batch size"):
        enc.encode_texts(["cat"], batch_size=0)


def test_text_cache_hit_across_loads(saved: SavedModel, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    enc = _load(saved, cache_dir)
    counter = Counter(enc, "encode_text_batch")
    first = enc.encode_texts(TEXTS, batch_size=3, progress=False)
    assert sorted(counter.items) == sorted(set(TEXTS))  # duplicates encoded once
    assert enc.store is not None and enc.store.count() == len(set(TEXTS))

    again = _load(saved, cache_dir)  # a new run: same spec and weights, same keys
    counter2 = Counter(again, "encode_text_batch")
    np.testing.assert_array_equal(again.encode_texts(TEXTS), first)
    assert counter2.calls == []

    # Another template is another key; shared texts in a later call are reused.
    again.encode_texts(["cat"], template="a photo of a {}.")
    again.encode_texts(["cat", "new words"])
    assert counter2.items == ["a photo of a cat.", "new words"]


@pytest.mark.numerics
def test_killed_run_resumes(saved: SavedModel, tmp_path: Path) -> None:
    texts = [f"word number {i}" for i in range(10)]
    reference = _load(saved).encode_texts(texts)

    enc = _load(saved, tmp_path / "cache")
    Counter(enc, "encode_text_batch", fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        enc.encode_texts(texts, batch_size=3)
    assert enc.store is not None and enc.store.count() == 6  # two whole batches committed

    rerun = _load(saved, tmp_path / "cache")
    counter = Counter(rerun, "encode_text_batch")
    assert_features_close(rerun.encode_texts(texts, batch_size=3), reference)  # other batches than the reference's
    assert counter.items == texts[6:]


@pytest.mark.numerics
def test_partial_cache_from_put_many(saved: SavedModel, tmp_path: Path) -> None:
    texts = [f"label {i}" for i in range(7)]
    enc = _load(saved, tmp_path / "cache")
    reference = _load(saved).encode_texts(texts)
    assert enc.store is not None
    enc.store.put_many({enc.text_key(t): reference[i] for i, t in enumerate(texts[:4])})
    counter = Counter(enc, "encode_text_batch")
    assert_features_close(enc.encode_texts(texts), reference)  # 3 texts encoded, not the reference's 7
    assert counter.items == texts[4:]


def test_use_cache_false_writes_nothing(saved: SavedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path / "default"))
    enc = load_encoder(saved.spec, weights=saved.weights, use_cache=False)
    assert enc.store is None
    enc.encode_texts(["cat"])
    assert not (tmp_path / "default").exists()
    cached = load_encoder(saved.spec, weights=saved.weights)  # default folder from the env
    assert cached.store is not None
    assert cached.store.path.parent == tmp_path / "default"


# -- images -----------------------------------------------------------------------------------


@pytest.mark.numerics
def test_image_features_unit_norm_and_batch_invariant(saved: SavedModel) -> None:
    enc = _load(saved)
    images = _images(5)
    whole = enc.encode_images(images, batch_size=64)
    assert whole.shape == (5, TINY_DIM)
    _unit(whole)
    assert_features_close(enc.encode_images(images, batch_size=2), whole)
    # Non-RGB input is converted, not rejected.
    gray = enc.encode_images([images[0].convert("L")])
    _unit(gray)


@pytest.mark.numerics
def test_image_files_skip_unreadable_and_cache(
    saved: SavedModel, tmp_path: Path, image_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    enc = _load(saved, tmp_path / "cache")
    counter = Counter(enc, "encode_pixels")
    with caplog.at_level("WARNING"):
        res = enc.encode_image_files(image_files, batch_size=2)
    assert isinstance(res, ImageEncoding)
    good = [p for p in image_files if p.name.startswith("img")]
    assert res.paths == good  # input order, minus the skipped
    assert [s.path.name for s in res.skipped] == ["corrupt.png", "missing.png"]
    assert all(isinstance(s, SkippedFile) and s.reason for s in res.skipped)
    assert "corrupt.png" in caplog.text and "missing.png" in caplog.text
    _unit(res.features)
    assert res.features.shape == (4, TINY_DIM)
    assert sum(counter.calls) == 4

    # Same features as encoding the decoded images directly.
    direct = enc.encode_images([load_rgb(p) for p in good])
    assert_features_close(res.features, direct)

    # Second run: every readable file comes from the cache; a renamed copy too (content key).
    copy = tmp_path / "renamed.png"
    shutil.copy(good[0], copy)
    again = _load(saved, tmp_path / "cache")
    counter2 = Counter(again, "encode_pixels")
    res2 = again.encode_image_files([*image_files, copy], progress=False)
    assert counter2.calls == []
    np.testing.assert_array_equal(res2.features[:4], res.features)
    np.testing.assert_array_equal(res2.features[4], res.features[0])
    assert len(res2.skipped) == 2


def test_image_cache_follows_file_content(saved: SavedModel, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _images(1, seed=1)[0].save(path)
    enc = _load(saved, tmp_path / "cache")
    before = enc.encode_image_files([path]).features
    _images(1, seed=2)[0].save(path)  # same name, new pixels: must not hit the old row
    after = enc.encode_image_files([path]).features
    assert not np.allclose(before, after)


def test_openood_preprocessing(saved: SavedModel, tmp_path: Path) -> None:
    model_pp = _load(saved, tmp_path / "cache")
    openood = _load(saved, tmp_path / "cache", preprocess="openood")
    assert openood.preprocess_id.startswith("openood:")
    assert openood.preprocess_id != model_pp.preprocess_id
    path = tmp_path / "wide.png"
    _images(3)[2].save(path)  # 64x20: the two pipelines crop it differently
    a = model_pp.encode_image_files([path]).features
    b = openood.encode_image_files([path]).features
    _unit(b)
    assert not np.allclose(a, b)  # different preprocessing, different cache rows
    with pytest.raises(NegspaceError, match="preprocessing"):
        _load(saved, preprocess="bogus")


# -- errors -----------------------------------------------------------------------------------


def _one_clear_sentence(exc: NegspaceError) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    # Python callers passed weights=, the command line --weights
    assert "weights" in msg and "--weights" not in msg and "--weights" in exc.cli_message()
    return msg


def test_missing_weights_path(saved: SavedModel, tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(saved.spec, weights=tmp_path / "nope.pt", use_cache=False)
    assert "nope.pt" in _one_clear_sentence(info.value)
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(f"hf:{tmp_path / 'no-such-folder'}", use_cache=False)
    _one_clear_sentence(info.value)


def test_corrupt_weights_file(tiny_openclip: SavedModel, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(tiny_openclip.weights.read_bytes()[:5000])  # truncated checkpoint
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(tiny_openclip.spec, weights=bad, use_cache=False)
    assert "corrupt.pt" in _one_clear_sentence(info.value)


def test_mismatched_weights_file(tiny_openclip: SavedModel, tiny_hf_clip: SavedModel, tmp_path: Path) -> None:
    # A real checkpoint of another model: clear error, not a state-dict dump.
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(tiny_openclip.spec, weights=tiny_hf_clip.folder / "model.safetensors", use_cache=False)
    # short, whatever the length of the (temporary) path it names
    assert len(_one_clear_sentence(info.value).replace(str(tiny_openclip.folder), "DIR")) < 400


def test_broken_hf_folder(tiny_hf_clip: SavedModel, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_hf_clip.folder, folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(f"hf:{folder}", use_cache=False)
    _one_clear_sentence(info.value)


def _not_a_checkpoint(kind: str, tmp_path: Path, other: SavedModel) -> Path:
    """A ``--weights`` file that is no checkpoint of the tiny open_clip model."""
    path = tmp_path / {"text": "notes.txt", "random": "random.bin", "numpy": "arrays.npy"}.get(kind, f"{kind}.pt")
    if kind == "text":
        path.write_text("# my notes\nThe model is somewhere else.\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "empty-dict":
        torch.save({}, path)
    elif kind == "numpy":
        np.save(path, np.zeros(3))
    else:  # a real checkpoint of another architecture (the transformers CLIP)
        return other.folder / "model.safetensors"
    return path


@pytest.mark.parametrize("kind", ["text", "random", "empty", "list", "empty-dict", "numpy", "other-architecture"])
def test_weights_that_are_no_checkpoint_of_the_model_are_one_sentence_naming_file_and_model(
    tiny_openclip: SavedModel, tiny_hf_clip: SavedModel, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    from negspace.cli import main

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    bad = _not_a_checkpoint(kind, tmp_path, tiny_hf_clip)
    code = main(
        [
            "embed",
            str(tmp_path / "imgs"),
            "--out",
            str(tmp_path / "out"),
            "--model",
            tiny_openclip.spec,
            "--weights",
            str(bad),
            "--device",
            "cpu",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert f"--weights {bad} is not a checkpoint of {tiny_openclip.spec}: expected a" in err
    expected = (
        "a state dict of this architecture ("
        if kind == "other-architecture"
        else "a safetensors file or a PyTorch state dict saved with torch.save ("
    )
    assert expected in err and not (tmp_path / "out").exists()


def test_hf_weights_that_are_no_model_folder_are_one_sentence(
    tiny_openclip: SavedModel, tiny_hf_clip: SavedModel, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from negspace.cli import main

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    for bad in (notes, tiny_openclip.folder):  # a text file; the folder of an open_clip model
        code = main(
            [
                "embed",
                str(tmp_path / "imgs"),
                "--out",
                str(tmp_path / "out"),
                "--model",
                tiny_hf_clip.spec,
                "--weights",
                str(bad),
                "--device",
                "cpu",
                "-q",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1
        expected = (
            f"--weights {bad} is not a checkpoint of {tiny_hf_clip.spec}: expected a folder written by save_pretrained"
        )
        assert expected in err
    # from Python: the argument's name
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(tiny_hf_clip.spec, weights=notes, use_cache=False)
    assert str(info.value).startswith(f"weights {notes} is not a checkpoint of {tiny_hf_clip.spec}")
    _one_clear_sentence(info.value)


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 with an empty hub cache (huggingface_hub reads the env at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    yield


@pytest.mark.parametrize(
    ("spec", "what", "where"),
    [
        # the default model: open_clip's checkpoint file and the hub repository that holds it
        (
            "openclip:ViT-B-16/openai",
            "the file open_clip_model.safetensors",
            "https://huggingface.co/timm/vit_base_patch16_clip_224.openai",
        ),
        (
            "openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "open_clip_config.json",
            "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ),
        (
            "hf:openai/clip-vit-base-patch16",
            "config.json, model.safetensors",
            "https://huggingface.co/openai/clip-vit-base-patch16",
        ),
    ],
)
def test_offline_hub_names_the_file_and_where_it_comes_from(
    offline_hub: None, spec: str, what: str, where: str
) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(spec, use_cache=False)
    msg = _one_clear_sentence(info.value)
    assert spec in msg and "hub" in msg
    assert what in msg and f"{where} " in msg


def test_unreachable_hub_fails_fast(
    unreachable_hub: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No offline flag, the hub at a port nobody listens on: the real probe finds it unreachable
    # and switches to cache-only instead of letting huggingface_hub retry (five times, 30 s).
    from huggingface_hub import constants

    # an earlier in-process `negspace` run gave its logger a handler of its own: read it here too
    monkeypatch.setattr(logging.getLogger("negspace"), "propagate", True)
    with caplog.at_level("INFO", logger="negspace"), pytest.raises(WeightsUnavailableError) as info:
        load_encoder("openclip:ViT-B-16/openai", use_cache=False)
    assert "unreachable" in _one_clear_sentence(info.value)
    assert constants.HF_HUB_OFFLINE is False  # the temporary offline switch was undone
    assert f"The hub ({unreachable_hub}) is unreachable" in caplog.text  # the probe said so
    assert "Retrying" not in caplog.text and unreachable_hub + "/" not in caplog.text  # and nothing was requested


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ViT-B-16", "not valid"),
        ("clip:ViT-B-16/openai", "Unknown model kind"),
        ("openclip:ViT-Q-99/openai", "Unknown open_clip architecture"),
        ("openclip:ViT-B-16/no-such-tag", "Unknown pretrained tag"),
        ("openclip:/no/such/config.json", "does not exist"),
        ("openclip:", "names no architecture"),
        ("hf:", "names no model"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(NegspaceError, match=match) as info:
        load_encoder(spec, use_cache=False)
    assert not isinstance(info.value, WeightsUnavailableError)
    assert "\n" not in str(info.value)


def test_config_json_that_is_not_a_model_config(tmp_path: Path) -> None:
    cfg = tmp_path / "x.json"
    cfg.write_text('{"hello": 1}')
    with pytest.raises(NegspaceError, match="not an open_clip model config"):
        load_encoder(f"openclip:{cfg}/none", use_cache=False)


def test_no_tag_and_no_weights(tiny_openclip: SavedModel) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(tiny_openclip.spec, use_cache=False)
    _one_clear_sentence(info.value)


# -- devices and optional dependencies --------------------------------------------------------


def test_cuda_requested_without_cuda(tiny_openclip: SavedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NegspaceError, match="CUDA"):
        load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="cuda")
    with pytest.raises(NegspaceError, match="device"):
        load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="tpu")
    enc = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, device="auto", use_cache=False)
    assert enc.device.type == "cpu"


def test_missing_transformers(tiny_hf_clip: SavedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(NegspaceError, match=r'pip install "negspace\[hf\]"'):
        load_encoder(tiny_hf_clip.spec, use_cache=False)


def test_store_is_shared_feature_store(tiny_openclip: SavedModel, tmp_path: Path) -> None:
    enc = _load(tiny_openclip, tmp_path / "cache")
    assert isinstance(enc.store, FeatureStore)


def test_pretrained_tag_settings_apply_to_local_weights(
    tiny_openclip: SavedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ViT-B-16/openai was trained with QuickGELU and CLIP's mean/std: a downloaded checkpoint
    # given with --weights must be built the same way (open_clip 3.x only warns otherwise).
    import open_clip

    class StopError(Exception):
        pass

    seen: dict[str, object] = {}

    def fake_create(name: str, **kwargs: object) -> None:
        seen.update(kwargs, name=name)
        raise StopError

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(StopError):
        load_encoder("openclip:ViT-B-16/openai", weights=tiny_openclip.weights, use_cache=False)
    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert seen["name"] == "ViT-B-16"
    assert seen["pretrained"] == str(tiny_openclip.weights)
    assert seen["force_quick_gelu"] is True
    assert seen["image_mean"] == tag["mean"] and seen["image_std"] == tag["std"]


@pytest.mark.numerics
def test_trimmed_text_forward_equals_full_forward(tiny_openclip):
    """Dropping padding past the longest prompt must not change open_clip text features."""
    import torch

    from negspace.encoders.openclip_backend import can_trim_padding, encode_text_trimmed

    encoder = load_encoder(tiny_openclip.spec, weights=tiny_openclip.weights, use_cache=False)
    model, tokenizer = encoder.backend.model, encoder.backend.tokenizer
    assert can_trim_padding(model)
    tokens = tokenizer(["The nice cat.", "This is a very gilded and old photo.", "x"])
    with torch.inference_mode():
        full = model.encode_text(tokens)
        trimmed = encode_text_trimmed(model, tokens)
    assert (tokens[:, 12:] == 0).all()  # the batch really had padding to drop
    assert_features_close(trimmed.numpy(), full.numpy())  # unnormalised: relative to each row's norm


@pytest.mark.numerics
def test_worker_processes_give_the_same_features_in_the_same_order(saved: SavedModel, tmp_path: Path) -> None:
    """Decoding in DataLoader workers (ahead of the model) changes nothing but the speed."""
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for k, image in enumerate(_images(4, seed=3) * 3):
        paths.append(folder / f"img_{k:02d}.png")
        image.rotate(7 * k).save(paths[-1])
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    paths.insert(5, folder / "corrupt.png")
    inline = _load(saved)
    inline.workers = 0
    pooled = _load(saved)
    pooled.workers = 2
    assert pooled.image_loader(paths, 3).num_workers == 2 and inline.image_loader(paths, 3).num_workers == 0
    a = inline.encode_image_files(paths, batch_size=3, progress=False)
    b = pooled.encode_image_files(paths, batch_size=3, progress=False)
    assert a.paths == b.paths == [p for p in paths if p.name != "corrupt.png"]
    assert [s.path.name for s in b.skipped] == ["corrupt.png"]
    assert_features_close(b.features, a.features)
    assert_features_close(a.features, inline.encode_images([load_rgb(p) for p in a.paths]))


def test_a_cached_file_is_not_even_opened(
    saved: SavedModel, tmp_path: Path, image_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from negspace.encoders import base

    good = [p for p in image_files if p.name.startswith("img")]
    first = _load(saved, tmp_path / "cache").encode_image_files(good, progress=False)
    opened: list[Path] = []
    real = base._try_sha256
    monkeypatch.setattr(base, "_try_sha256", lambda path: opened.append(path) or real(path))
    again = _load(saved, tmp_path / "cache").encode_image_files(good, progress=False)
    assert opened == [] and again.hashes == first.hashes
    np.testing.assert_array_equal(again.features, first.features)
    # a file rewritten (new size or time) is read and hashed again, and its new content encoded
    _images(1, seed=9)[0].save(good[0])
    changed = _load(saved, tmp_path / "cache").encode_image_files(good, progress=False)
    assert opened == [good[0]] and changed.hashes[0] != first.hashes[0]
    assert not np.allclose(changed.features[0], first.features[0])
