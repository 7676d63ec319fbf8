"""The text tower as a function of one token's embedding (negspace.encoders.inversion), on the
tiny saved models of both backends, against the normal text forward."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from negspace.encoders import load_encoder
from negspace.encoders.inversion import TokenInjection
from numerics import assert_features_close


@pytest.fixture(params=["openclip", "hf"])
def encoder(request):
    saved = request.getfixturevalue("tiny_openclip" if request.param == "openclip" else "tiny_hf_clip")
    spec = saved.spec
    return load_encoder(spec, weights=saved.weights, device="cpu", use_cache=False)


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _unit(features: torch.Tensor) -> np.ndarray:
    features = features.detach().float()
    return (features / features.norm(dim=-1, keepdim=True)).numpy()


@pytest.mark.numerics
def test_the_real_token_injected_gives_the_normal_text_feature(encoder):
    injection = TokenInjection(encoder)
    ids, mask, position = injection.placeholder_prompt("a photo of a {}.")
    # words of one token each (the tiny transformers tokenizer has a vocabulary of a few hundred)
    candidates = ["cat", "dog", "car", *"bcdefghijk"]
    words = [w for w in candidates if injection._content_length(w) == 1][:3]
    assert len(words) == 3
    word_ids, _ = injection.tokenize(words)
    vectors = injection.token_vectors(word_ids, torch.ones(len(words), dtype=torch.long))  # each word's one token
    injected = _unit(injection.encode(ids, position, vectors, mask))
    normal = encoder.encode_texts(words, template="a photo of a {}.", progress=False)
    assert_features_close(injected, normal)
    # one prompt per row works the same (TINS: each image its own word)
    prompts, prompt_mask = injection.tokenize([f"a photo of a {w}." for w in words])
    positions = torch.tensor([injection.last_token_position(f"a photo of a {w}.", w) for w in words])
    again = _unit(injection.encode(prompts, positions, injection.token_vectors(prompts, positions), prompt_mask))
    assert_features_close(again, normal)


def test_gradients_reach_the_vectors_only_and_the_weights_never_change(encoder):
    injection = TokenInjection(encoder)
    ids, mask, position = injection.placeholder_prompt("a photo of a {}.")
    before = _weights_digest(encoder.backend.model)
    torch.manual_seed(0)
    vectors = (0.02 * torch.randn(4, injection.width)).requires_grad_(True)
    targets = torch.nn.functional.normalize(torch.randn(4, encoder.dim), dim=-1)
    optimiser = torch.optim.AdamW([vectors], lr=2e-2, weight_decay=0.01)
    losses = []
    for _ in range(30):  # InterNeg's and TINS's loss: 1 - cos(text feature, image feature)
        features = torch.nn.functional.normalize(injection.encode(ids, position, vectors, mask), dim=-1)
        loss = (1 - (features * targets).sum(dim=-1)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert vectors.grad is not None and torch.count_nonzero(vectors.grad) > 0
    assert all(p.grad is None for p in encoder.backend.model.parameters())
    assert all(p.requires_grad for p in encoder.backend.model.parameters())  # restored after the call
    assert _weights_digest(encoder.backend.model) == before
    assert losses[-1] < losses[0] - 0.05  # the learned features approach the targets
