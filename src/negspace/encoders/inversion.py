"""The CLIP text tower as a function of one token's embedding: what test-time inversion needs.

InterNeg and TINS (docs/methods) learn, for an image, a *pseudo-token*: a vector put in place of
one token of a prompt, optimised through the frozen text tower so that the prompt's text feature
matches the image. :class:`TokenInjection` encodes prompts with one position of each replaced by
a trainable vector, batched, with gradients to the vectors only (the model's parameters are
frozen for the call and restored after; their values never change), on CPU and CUDA (fp16
autocast there). It works for both backends (open_clip and transformers) through a forward hook
on the token-embedding table, so each library's own text forward runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from negspace.encoders.base import ClipEncoder
from negspace.errors import NegspaceError

PLACEHOLDER = "x"  # a one-token word CLIP's tokenizer keeps apart from punctuation ("x." is "x", ".")


class TokenInjection:
    """Encode prompts with one token position replaced by a given vector (see the module doc)."""

    def __init__(self, encoder: ClipEncoder) -> None:
        backend = encoder.backend
        self.encoder = encoder
        self.device = encoder.device
        self.is_hf = hasattr(backend, "image_processor")
        self.model = backend.model
        self.tokenizer = backend.tokenizer
        if self.is_hf:
            self.embedding = self.model.text_model.embeddings.token_embedding
        else:
            self.embedding = self.model.token_embedding
        if not isinstance(self.embedding, torch.nn.Embedding):
            raise NegspaceError(f"the text tower of {encoder.spec} has no token-embedding table to inject into")
        self.width = int(self.embedding.embedding_dim)

    # -- token ids ---------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids ``(N, L)`` on the model's device, and the attention mask (transformers)."""
        if self.is_hf:
            batch = self.tokenizer(list(texts), padding=True, return_tensors="pt")
            return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        return self.tokenizer(list(texts)).to(self.device), None

    def _content_length(self, text: str) -> int:
        """Tokens of ``text`` between the start and end tokens."""
        ids, mask = self.tokenize([text])
        count = int(mask[0].sum()) if mask is not None else int((ids[0] != 0).sum())
        return count - 2

    def placeholder_prompt(self, template: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``template`` (one ``{}``) with a pseudo-token slot: its ids ``(1, L)``, mask and the
        slot's position."""
        prefix = template.split("{}", 1)[0]
        position = 1 + (self._content_length(prefix.strip()) if prefix.strip() else 0)
        ids, mask = self.tokenize([template.format(PLACEHOLDER)])
        placeholder_id = self.tokenize([PLACEHOLDER])[0][0, 1]
        if int(ids[0, position]) != int(placeholder_id):
            raise NegspaceError(f"the prompt template {template!r} does not keep its slot apart as one token")
        return ids, mask, position

    def last_token_position(self, text: str, word: str) -> int:
        """The position of ``word``'s last token in ``text`` (which ends with ``word`` and then
        punctuation at most): where TINS puts its pseudo-token, initialised from that word."""
        head = text[: text.rindex(word) + len(word)]
        return self._content_length(head)  # 1 start token + n content tokens - 1

    def token_vectors(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The embedding-table rows at ``ids[i, positions[i]]``: a pseudo-token's starting value."""
        with torch.no_grad():
            return self.embedding.weight[ids[torch.arange(len(ids)), positions]].detach().clone().float()

    # -- the forward ---------------------------------------------------------------------------------

    def encode(self, ids: torch.Tensor, positions: torch.Tensor | int, vectors: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw text features ``(B, D)`` of ``ids`` (``(B, L)``, or ``(1, L)`` shared by the batch)
        with ``vectors[i]`` at ``positions[i]``; differentiable in ``vectors`` only."""
        batch = len(vectors)
        if len(ids) == 1 and batch > 1:
            ids = ids.expand(batch, -1)
            mask = mask.expand(batch, -1) if mask is not None else None
        positions = torch.as_tensor(positions, device=ids.device).expand(batch) if not torch.is_tensor(positions) \
            or positions.dim() == 0 else positions.to(ids.device)
        rows = torch.arange(batch, device=ids.device)

        def inject(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[rows, positions] = vectors.to(output.dtype)
            return output

        handle = self.embedding.register_forward_hook(inject)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if ids.device.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        try:
            with _frozen(self.model), autocast:
                if self.is_hf:
                    features = self.model.get_text_features(input_ids=ids, attention_mask=mask)
                    features = getattr(features, "pooler_output", features)
                else:
                    features = self.model.encode_text(ids)
        finally:
            handle.remove()
        return features.float()


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's parameters without gradients for the block (restored after): the inversion
    learns its pseudo-tokens only, and no ``.grad`` accumulates on the weights."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
