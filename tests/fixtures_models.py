"""Tiny random-weight CLIP models saved to disk, loaded back the way a user loads real ones.

Plain helpers (usable from any test or script):

* :func:`save_tiny_openclip` writes an open_clip model config JSON and a ``torch.save`` state
  dict; load it with ``load_encoder(saved.spec, weights=saved.weights)``, i.e. the same path as
  ``--model openclip:CONFIG.json/none --weights FILE``.
* :func:`save_tiny_hf_clip` writes a transformers ``save_pretrained`` folder (model, tokenizer,
  image processor); load it with ``load_encoder(saved.spec)``, i.e. ``--model hf:/path``.

Session-scoped pytest fixtures ``tiny_openclip`` and ``tiny_hf_clip`` build each once per run;
import them into ``conftest.py`` (``from fixtures_models import tiny_openclip, tiny_hf_clip``).
Both models embed into 32 dimensions and take 32-pixel images; weights are seeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

__all__ = [
    "TINY_DIM",
    "TINY_OPENCLIP_CONFIG",
    "SavedModel",
    "save_tiny_hf_clip",
    "save_tiny_openclip",
    "tiny_hf_clip",
    "tiny_openclip",
]

TINY_DIM = 32

#: open_clip model config of a 2-layer ViT (32 px, patch 16) and a 2-layer text tower.
TINY_OPENCLIP_CONFIG: dict = {
    "embed_dim": TINY_DIM,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    # A 16-token context keeps 70k corpus prompts cheap to encode; WordNet prompts fit in it.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


class SavedModel(NamedTuple):
    """A model written to disk: the spec and ``weights`` argument that load it."""

    spec: str
    weights: Path | None
    folder: Path


def save_tiny_openclip(folder: Path | str, seed: int = 0) -> SavedModel:
    """Save a tiny random open_clip model: ``negspace-tiny-clip.json`` + ``tiny_openclip.pt``."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "negspace-tiny-clip.json"
    config.write_text(json.dumps(TINY_OPENCLIP_CONFIG, indent=2), encoding="utf-8")
    # Build from the same config the user path will read; open_clip.CLIP takes its keys.
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPENCLIP_CONFIG)
    weights = folder / "tiny_openclip.pt"
    torch.save(model.state_dict(), weights)
    return SavedModel(spec=f"openclip:{config}/none", weights=weights, folder=folder)


def _tiny_clip_tokenizer():  # -> transformers.CLIPTokenizer
    """A CLIP tokenizer whose vocabulary is just the 256 byte-level symbols (no merges).

    Real CLIP vocabularies cannot be downloaded here; this one tokenises any text, offline.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


def save_tiny_hf_clip(folder: Path | str, seed: int = 0) -> SavedModel:
    """Save a tiny random transformers CLIPModel with tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 16,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=TINY_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return SavedModel(spec=f"hf:{folder}", weights=None, folder=folder)


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    """A tiny open_clip model saved once per test session."""
    return save_tiny_openclip(tmp_path_factory.mktemp("tiny_openclip"))


@pytest.fixture(scope="session")
def tiny_hf_clip(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    """A tiny transformers CLIP folder saved once per test session."""
    from external_tools import require_module

    require_module("transformers", extra="hf")  # skips only where the hf extra is not installed at all
    return save_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))
