"""Shared fixtures: an isolated feature cache per test session, tiny saved models, demo images."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# huggingface_hub reads this once, at import: set it before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chat_server import chat_server
from fixtures_models import SavedModel, save_tiny_openclip, tiny_hf_clip  # noqa: F401  (pytest fixtures)
from local_network import SilentServer, closed_port, point_hub_at


def _session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary root, shared by the pytest-xdist workers (each has a folder below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's feature cache; the workers of one run share one (SQLite, safe for
    several processes), so the tiny model's corpus is encoded once per run."""
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(_session_root(tmp_path_factory) / "negspace-cache"))


@pytest.fixture(autouse=True)
def restored_negspace_logger():
    """An in-process ``negspace.cli.main`` sets the ``negspace`` logger's handler, level and
    propagation: put them back, so that no later test (in whatever order) inherits them."""
    logger = logging.getLogger("negspace")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    """The tiny open_clip model, saved once per run, with its WordNet corpus features in the
    run's cache: the first worker encodes them (30 s), the others wait for it and reuse them."""
    from filelock import FileLock

    from negspace.corpus.mining import MiningConfig, mine_negative_labels
    from negspace.encoders import load_encoder

    root = _session_root(tmp_path_factory)
    folder = root / "tiny_openclip"
    with FileLock(str(root / "tiny_openclip.lock")):
        saved = save_tiny_openclip(folder) if not (folder / "ready").exists() else None
        if saved is not None:
            encoder = load_encoder(saved.spec, weights=saved.weights, device="cpu", cache_dir=root / "negspace-cache")
            mine_negative_labels(encoder, ["warm-up"], MiningConfig(), progress=False)
            (folder / "ready").touch()
    return SavedModel(
        spec=f"openclip:{folder / 'negspace-tiny-clip.json'}/none", weights=folder / "tiny_openclip.pt", folder=folder
    )


@pytest.fixture
def mllm_server():
    """A real OpenAI-compatible chat server on 127.0.0.1 with scripted, messy-but-usable answers."""
    chat_requests: list[dict] = []

    def answer(payload):
        chat_requests.append(payload)
        content = payload["messages"][-1]["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        has_image = not isinstance(content, str) and any(p["type"] == "image_url" for p in content)
        if "Give five" in text:
            return "1. **crimson tile**\n2) mosaic\n3: stained glass\n- red brick\n5. ruby"
        assert has_image and payload["model"] == server.model
        return getattr(server, "describe_answer", "A field of colourful static noise.")

    with chat_server("tiny-vlm", answer) as server:
        yield server, chat_requests


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    """The hub at a local port nobody listens on, online mode, an empty hub cache: negspace's real
    reachability probe runs, and fails. Returns the endpoint."""
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{closed_port()}"
    point_hub_at(monkeypatch, endpoint, offline=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return endpoint


@pytest.fixture
def silent_hub(monkeypatch):
    """The hub at a local socket that never answers, in offline mode (the suite's default): a test
    that nothing reaches the hub asserts ``silent_hub.connections() == 0``; a load that tried would
    have waited on it and been counted."""
    server = SilentServer()
    point_hub_at(monkeypatch, server.url, offline=True)
    yield server
    server.close()
