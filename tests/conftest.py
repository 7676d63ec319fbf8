"""Shared fixtures: an isolated feature cache per test session, tiny saved models, demo images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# huggingface_hub reads this once, at import: set it before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from fixtures_models import tiny_hf_clip, tiny_openclip  # noqa: E402,F401  (pytest fixtures)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's feature cache."""
    monkeypatch.setenv("NEGSPACE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "negspace-cache"))
