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
from negspace.encoders.openclip_backend import can_trim_padding, encode_text_trimmed
from negspace.errors import NegspaceError

PLACEHOLDER = "x"  # a one-token word CLIP's tokenizer keeps apart from punctuation ("x." is "x", ".")


class TokenInjection:
    """Encode prompts with one token position replaced by a given vector (see the module doc)."""

    def __init__(self, encoder: ClipEncoder) -> None:
        backend: Any = encoder.backend  # open_clip's or transformers': each holds a model and a tokenizer
        self.encoder = encoder
        self.device = encoder.device
        self.is_hf = hasattr(backend, "image_processor")
        self.model = backend.model
        self.tokenizer = backend.tokenizer
        if self.is_hf:
            self.embedding = self.model.text_model.embeddings.token_embedding
        else:
            self.embedding = getattr(self.model, "token_embedding", None)
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

    def encode(
        self, ids: torch.Tensor, positions: torch.Tensor | int, vectors: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw text features ``(B, D)`` of ``ids`` (``(B, L)``, or ``(1, L)`` shared by the batch)
        with ``vectors[i]`` at ``positions[i]``; differentiable in ``vectors`` only."""
        batch = len(vectors)
        if len(ids) == 1 and batch > 1:
            ids = ids.expand(batch, -1)
            mask = mask.expand(batch, -1) if mask is not None else None
        positions = (
            torch.as_tensor(positions, device=ids.device).expand(batch)
            if not torch.is_tensor(positions) or positions.dim() == 0
            else positions.to(ids.device)
        )
        rows = torch.arange(batch, device=ids.device)

        def inject(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[rows, positions] = vectors.to(output.dtype)
            return output

        handle = self.embedding.register_forward_hook(inject)
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if ids.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        try:
            with _frozen(self.model), autocast:
                if self.is_hf:
                    features = self.model.get_text_features(input_ids=ids, attention_mask=mask)
                    features = getattr(features, "pooler_output", features)
                elif can_trim_padding(self.model):  # a ~10-token prompt need not run over 77 positions
                    features = encode_text_trimmed(self.model, ids)
                else:
                    features = self.model.encode_text(ids)
        finally:
            handle.remove()
        return features.float()


class _Steps:
    """``loss.backward()`` and an optimiser step; on CUDA, where the text tower runs in fp16, with
    a gradient scaler (a batch mean's gradients fall below fp16's smallest normal number)."""

    def __init__(self, optimiser: torch.optim.Optimizer, device: torch.device) -> None:
        self.optimiser = optimiser
        self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimiser.zero_grad()
        if self.scaler is None:
            loss.backward()
            self.optimiser.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()


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


def imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates (as open_clip ships them), each with one ``{}``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


class PseudoTokenInverter:
    """InterNeg's test-time inversion: for each image feature ``v``, a pseudo-token ``s`` in a
    prompt template is optimised so that the prompt's text feature matches ``v``::

        min_s  mean_i (1 − cos(f_text(T_i(s_i)), v_i))      AdamW, ``steps`` steps

    ``s`` starts from N(0, ``init_std``²) (drawn with ``seed``, the same for every batch of one
    size, as the authors' reseeded draw); each step gives each image a random template of
    ``templates`` (Python's ``random`` seeded with ``seed`` at :meth:`reset`); the learned
    features are the last step's prompts encoded once more, normalised. Every image is inverted
    in one batch: ``steps + 1`` text-tower passes per batch.
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        templates: Sequence[str] | None = None,
        steps: int = 10,
        lr: float = 2e-2,
        weight_decay: float = 0.01,
        init_std: float = 0.02,
        seed: int = 0,
    ) -> None:
        import random

        self.injection = TokenInjection(encoder)
        self.templates = list(templates) if templates is not None else imagenet_templates()
        prompts = [self.injection.placeholder_prompt(t) for t in self.templates]
        width = max(ids.shape[1] for ids, _, _ in prompts)
        self.ids = torch.cat([torch.nn.functional.pad(ids, (0, width - ids.shape[1])) for ids, _, _ in prompts])
        self.masks = (
            torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m, _ in prompts if m is not None])
            if prompts[0][1] is not None
            else None
        )
        self.positions = torch.tensor([position for _, _, position in prompts], device=self.ids.device)
        self.steps, self.lr, self.weight_decay, self.init_std, self.seed = steps, lr, weight_decay, init_std, seed
        self.random = random.Random(seed)
        self.text_passes = 0  # text-tower forward passes (each over a whole batch of images)
        self.inverted = 0  # images inverted

    def reset(self) -> None:
        """The template draws start again (a new stream)."""
        import random

        self.random = random.Random(self.seed)

    def __call__(self, image_features: Any) -> Any:
        import numpy as np

        targets = torch.nn.functional.normalize(torch.as_tensor(np.asarray(image_features, np.float32)), dim=-1)
        targets = targets.to(self.ids.device)
        batch = len(targets)
        generator = torch.Generator().manual_seed(self.seed)
        vectors = (self.init_std * torch.randn(batch, self.injection.width, generator=generator)).to(self.ids.device)
        vectors.requires_grad_(True)
        step = _Steps(torch.optim.AdamW([vectors], lr=self.lr, weight_decay=self.weight_decay), self.ids.device)
        chosen = torch.zeros(batch, dtype=torch.long)
        for _ in range(self.steps):
            chosen = torch.tensor([self.random.randrange(len(self.templates)) for _ in range(batch)])
            features = self._encode(chosen, vectors)
            step((1 - (torch.nn.functional.normalize(features, dim=-1) * targets).sum(dim=-1)).mean())
        with torch.no_grad():
            learned = torch.nn.functional.normalize(self._encode(chosen, vectors), dim=-1)
        self.text_passes += self.steps + 1
        self.inverted += batch
        return learned.cpu().numpy().astype(np.float32)

    def _encode(self, chosen: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        ids = self.ids[chosen.to(self.ids.device)]
        mask = self.masks[chosen.to(self.ids.device)] if self.masks is not None else None
        return self.injection.encode(ids, self.positions[chosen.to(self.ids.device)], vectors, mask)


class WordInitialisedInverter:
    """TINS's test-time inversion: each image's pseudo-token starts from the fixed-bank word ``w``
    that best fits it, and replaces ``w``'s last token in ``"a photo of a {w}."``::

        w(v) = argmin_w  1 − cos(v, f(w)) + λ · mean_c (1 + cos(f(w), p_c))
        min_s  mean_i (1 − cos(e_i, v_i)) + λ · mean_{i,c} (1 + cos(e_i, p_c))      AdamW, ``steps`` steps

    (``f(w)`` the prompt's text feature, ``e_i`` the learned one, ``p_c`` the class prototypes,
    ``λ = 0.3``). ``steps + 1`` text-tower passes per batch of inverted images, plus one encoding
    of the candidate prompts (cached).
    """

    template = "a photo of a {}."

    def __init__(
        self,
        encoder: ClipEncoder,
        words: Sequence[str],
        prototypes: Any,
        steps: int = 30,
        lr: float = 2e-2,
        weight_decay: float = 1e-2,
        lam: float = 0.3,
    ) -> None:
        import numpy as np

        self.injection = TokenInjection(encoder)
        self.words = list(words)
        self.prototypes = torch.as_tensor(np.asarray(prototypes, np.float32)).to(encoder.device)
        self.candidates = torch.as_tensor(encoder.encode_texts(self.words, template=self.template, progress=False))
        self.candidates = self.candidates.to(encoder.device)
        self.steps, self.lr, self.weight_decay, self.lam = steps, lr, weight_decay, lam
        self.text_passes = 0
        self.inverted = 0

    def best_words(self, targets: torch.Tensor) -> torch.Tensor:
        """Each image's starting word: the argmin of the init objective over the fixed bank."""
        reg = (1 + self.candidates @ self.prototypes.T).mean(dim=1)
        return torch.argmin(1 - targets @ self.candidates.T + self.lam * reg, dim=1)

    def __call__(self, image_features: Any) -> Any:
        import numpy as np

        targets = torch.nn.functional.normalize(torch.as_tensor(np.asarray(image_features, np.float32)), dim=-1)
        targets = targets.to(self.prototypes.device)
        chosen = self.best_words(targets).tolist()
        prompts = [self.template.format(self.words[i]) for i in chosen]
        ids, mask = self.injection.tokenize(prompts)
        positions = torch.tensor(
            [self.injection.last_token_position(p, self.words[i]) for p, i in zip(prompts, chosen, strict=True)],
            device=ids.device,
        )
        vectors = self.injection.token_vectors(ids, positions).requires_grad_(True)
        step = _Steps(torch.optim.AdamW([vectors], lr=self.lr, weight_decay=self.weight_decay), ids.device)
        for _ in range(self.steps):
            features = torch.nn.functional.normalize(self.injection.encode(ids, positions, vectors, mask), dim=-1)
            step((1 - (features * targets).sum(dim=-1)).mean() + self.lam * (1 + features @ self.prototypes.T).mean())
        with torch.no_grad():
            learned = torch.nn.functional.normalize(self.injection.encode(ids, positions, vectors, mask), dim=-1)
        self.text_passes += self.steps + 1
        self.inverted += len(targets)
        return learned.cpu().numpy().astype(np.float32)
