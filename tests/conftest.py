"""Shared fixtures: an isolated feature cache per test session, tiny saved models, demo images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures_models import tiny_hf_clip, tiny_openclip  # noqa: E402,F401  (pytest fixtures)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache; never reach for the network hub."""
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "negspace-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
