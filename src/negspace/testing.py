"""A synthetic CLIP-like feature world whose answers are known, for tests and examples.

No weights can be trusted offline, so detection quality is checked here: on features built to
have the geometry the methods assume.

- ``K`` ID classes, each a random unit text direction ``t_i``. ID images of class ``i`` are
  ``normalise(c·t_i + √(1−c²)·u)`` with ``u`` random, so ``cos(v, t_i) ≈ c`` (CLIP's typical
  image-text cosine is about 0.3).
- A corpus of candidate words: random unit directions, plus a few near-synonyms of each ID
  class (which mining must reject).
- Far-OOD concepts: directions mixing two corpus words far from the ID classes with a novel
  direction; far-OOD images sit
  near them, far from every ID class. The concept's text (e.g. ``"far concept 3"``) and feature
  are given, as an MLLM description of such images would be.
- Near-OOD concepts: each mixes one ID class direction with a novel direction, so its images look
  like that class; given with their text and the ID class they resemble.
- Optional CLIP image-side structure (off by default). With the defaults, images of one class
  share only their text direction (image-image cosine ~0.1), while real CLIP image features of one
  class are far closer to each other (~0.5-0.7) than to their text (~0.3), and all CLIP images
  share a modality-gap direction. ``image_cluster`` adds a shared random *image* direction per ID
  class and per OOD concept, ``modality_gap`` one direction common to every image:
  ``image = normalise(v + image_cluster·d_class + modality_gap·g)``. Methods that use test images
  as proxies (AdaNeg) need that structure; text-only scores mostly do not.

Everything is drawn from one seeded generator: the same arguments give the same world. The
image-structure directions come from a second generator spawned from the same seed, so turning
them on changes the images only: texts, corpus, concepts and labels stay identical, and with both
strengths 0 (the default) the world is bit-identical to a world drawn without them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negspace.mllm.protocol import ImagePart, MLLMStats, TextPart


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class SyntheticWorld:
    """Features (float32, unit rows) and names of one synthetic world; see the module doc."""

    class_names: list[str]
    id_text_features: np.ndarray
    corpus_words: list[str]
    corpus_features: np.ndarray
    id_image_features: np.ndarray
    id_image_labels: np.ndarray
    far_concepts: list[str]
    far_concept_features: np.ndarray
    far_ood_features: np.ndarray
    far_ood_concept: np.ndarray
    near_concepts: list[str]
    near_concept_features: np.ndarray
    near_concept_parent: np.ndarray
    near_ood_features: np.ndarray
    near_ood_concept: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.id_text_features.shape[1])

    def negatives(self, count: int) -> tuple[list[str], np.ndarray]:
        """The ``count`` corpus words least similar to the ID classes (a stand-in for mining)."""
        similarity = np.percentile(self.corpus_features @ self.id_text_features.T, 95, axis=1)
        keep = np.argsort(similarity, kind="stable")[:count]
        return [self.corpus_words[i] for i in keep], self.corpus_features[keep]


def _images_near(
    rng: np.random.Generator,
    centres: np.ndarray,
    which: np.ndarray,
    signal: tuple[float, float],
    lure: np.ndarray | None = None,
    lure_signal: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Unit images with cosine ~ U(signal) to their centre, plus an optional lure direction each."""
    n, dim = len(which), centres.shape[1]
    strength = rng.uniform(*signal, size=(n, 1))
    mix = strength * centres[which]
    if lure is not None:
        lure_strength = rng.uniform(*lure_signal, size=(n, 1))
        mix = mix + lure_strength * lure
        strength = np.sqrt(strength**2 + lure_strength**2)
    noise = _unit(rng.standard_normal((n, dim)))
    return _unit(mix + np.sqrt(np.clip(1.0 - strength**2, 0.0, None)) * noise).astype(np.float32)


def make_world(
    dim: int = 512,
    n_classes: int = 20,
    n_corpus: int = 2000,
    synonyms_per_class: int = 3,
    n_per_class: int = 25,
    n_far_concepts: int = 5,
    n_near_concepts: int = 4,
    n_per_concept: int = 100,
    image_signal: tuple[float, float] = (0.22, 0.38),
    far_lure_signal: tuple[float, float] = (0.1, 0.3),
    far_corpus_share: float = 0.8,
    near_parent_share: float = 0.75,
    image_cluster: float = 0.0,
    modality_gap: float = 0.0,
    seed: int = 0,
) -> SyntheticWorld:
    """Draw a world.

    Args:
        dim: feature dimension.
        n_classes: number of ID classes ``K``.
        n_corpus: random corpus words (near-synonyms of the ID classes are added on top).
        synonyms_per_class: corpus words placed close to each ID class.
        n_per_class: ID images per class.
        n_far_concepts: far-OOD concepts.
        n_near_concepts: near-OOD concepts.
        n_per_concept: OOD images per concept.
        image_signal: range of the cosine between an image and its own class or concept.
        far_lure_signal: range of the cosine between a far-OOD image and one random ID class
            (real far-OOD images often look a little like some ID class, which fools MCM).
        far_corpus_share: how much of a far concept's direction is shared with corpus words
            (the rest is novel, i.e. only a description of the images can capture it).
        near_parent_share: how much of a near concept's direction is its parent ID class.
        image_cluster: weight of a shared random unit image direction per ID class, far concept
            and near concept, added to each of its images before renormalising (0: none). At 0.8
            with ``modality_gap=0.5``, same-class image cosines rise from ~0.1 to ~0.5 and the
            image-text cosine falls from ~0.3 to ~0.2, roughly CLIP's image geometry.
        modality_gap: weight of one random unit direction added to every image (ID and OOD) before
            renormalising (0: none); it raises every image-image cosine alike.
        seed: seed of the world; the same arguments give the same world.
    """
    if image_cluster < 0 or modality_gap < 0:
        raise ValueError(f"image_cluster and modality_gap must be >= 0, got {image_cluster} and {modality_gap}")
    rng = np.random.default_rng(seed)
    id_text = _unit(rng.standard_normal((n_classes, dim)))
    random_words = _unit(rng.standard_normal((n_corpus, dim)))
    parents = np.repeat(np.arange(n_classes), synonyms_per_class)
    synonyms = _unit(0.9 * id_text[parents] + 0.1 * _unit(rng.standard_normal((len(parents), dim))))
    corpus = np.concatenate([random_words, synonyms]).astype(np.float32)
    corpus_words = [f"word {i}" for i in range(n_corpus)] + [f"synonym {k} of class {p}" for k, p in enumerate(parents)]

    # Far concepts are built from words far from every ID class, as real far-OOD concepts are:
    # those are the words negative-label mining keeps.
    farthest_half = np.argsort(np.percentile(random_words @ id_text.T, 95, axis=1))[: n_corpus // 2]
    far_anchor = np.stack(
        [_unit(corpus[rng.choice(farthest_half, 2, replace=False)].sum(0)) for _ in range(n_far_concepts)]
    )
    far_novel = _unit(rng.standard_normal((n_far_concepts, dim)))
    far_concepts = _unit(far_corpus_share * far_anchor + np.sqrt(1 - far_corpus_share**2) * far_novel)

    near_parent = rng.choice(n_classes, n_near_concepts, replace=False)
    near_novel = _unit(rng.standard_normal((n_near_concepts, dim)))
    near_concepts = _unit(near_parent_share * id_text[near_parent] + np.sqrt(1 - near_parent_share**2) * near_novel)

    id_labels = np.repeat(np.arange(n_classes), n_per_class)
    far_which = np.repeat(np.arange(n_far_concepts), n_per_concept)
    near_which = np.repeat(np.arange(n_near_concepts), n_per_concept)
    id_images = _images_near(rng, id_text, id_labels, image_signal)
    far_images = _images_near(
        rng,
        far_concepts,
        far_which,
        image_signal,
        lure=id_text[rng.integers(0, n_classes, len(far_which))],
        lure_signal=far_lure_signal,
    )
    near_images = _images_near(rng, near_concepts, near_which, image_signal)
    if image_cluster or modality_gap:
        # A second generator, so the structure never shifts the draws above (texts, corpus, ...).
        structure = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        gap = _unit(structure.standard_normal(dim))

        def structured(images: np.ndarray, which: np.ndarray, n_groups: int) -> np.ndarray:
            directions = _unit(structure.standard_normal((n_groups, dim)))
            return _unit(images + image_cluster * directions[which] + modality_gap * gap).astype(np.float32)

        id_images = structured(id_images, id_labels, n_classes)
        far_images = structured(far_images, far_which, n_far_concepts)
        near_images = structured(near_images, near_which, n_near_concepts)
    return SyntheticWorld(
        class_names=[f"class {i}" for i in range(n_classes)],
        id_text_features=id_text.astype(np.float32),
        corpus_words=corpus_words,
        corpus_features=corpus,
        id_image_features=id_images,
        id_image_labels=id_labels,
        far_concepts=[f"far concept {i}" for i in range(n_far_concepts)],
        far_concept_features=far_concepts.astype(np.float32),
        far_ood_features=far_images,
        far_ood_concept=far_which,
        near_concepts=[f"near concept {i}" for i in range(n_near_concepts)],
        near_concept_features=near_concepts.astype(np.float32),
        near_concept_parent=near_parent,
        near_ood_features=near_images,
        near_ood_concept=near_which,
    )


# -- a scripted MLLM, a text encoder and streams for ANTS on a world ------------------------------


def _image_path(image: object) -> Path:
    """The path of a request's image: the synthetic worlds' images are files named by concept."""
    if not isinstance(image, (str, Path)):
        raise TypeError(f"the synthetic worlds' MLLMs read image paths, not {type(image).__name__}")
    return Path(image)


class WorldMLLM:
    """A scripted MLLM (the :class:`negspace.mllm.protocol.MLLM` protocol) that knows a world.

    Deterministic answers from the image path or class name in the request. Descriptions: a far-OOD
    image ``far/<concept>_<i>.png`` (see :func:`world_stream`) is described by its concept's text;
    ID and near-OOD images get an image-specific ordinary sentence. VSNL: another ID class name
    (which ANTS must drop), then the near concepts whose parent is the asked class, else made-up
    names. ``behaviour``: ``"good"``, ``"none"`` (every request fails), ``"garbage"`` (unusable
    answers) or ``"raise"`` (the backend raises).
    """

    model_id = "scripted"

    def __init__(self, world: SyntheticWorld, behaviour: str = "good") -> None:
        self.world = world
        self.behaviour = behaviour
        self.stats = MLLMStats()
        self.received = 0
        self.generate_calls = 0

    def generate(self, requests: Sequence[Any]) -> list[str | None]:
        self.generate_calls += 1
        self.received += len(requests)
        self.stats.calls += len(requests)
        if self.behaviour == "raise":
            raise RuntimeError("backend exploded")
        answers: list[str | None] = []
        for request in requests:
            parts = [p for m in request.messages for p in m.content]
            image = next((p.image for p in parts if isinstance(p, ImagePart)), None)
            text = " ".join(p.text for p in parts if isinstance(p, TextPart))
            if self.behaviour == "none":
                self.stats.failures += 1
                answers.append(None)
            elif self.behaviour == "garbage":
                answers.append(["", "I'm sorry, I can't help with that.", "!!! ???", "1. 2. 3."][self.received % 4])
            elif image is not None:
                answers.append(self._describe(_image_path(image)))
            else:
                answers.append(self._similar(text))
        return answers

    def _describe(self, path: Path) -> str:
        concept, index = (int(x) for x in path.stem.split("_"))
        if path.parent.name == "far":
            return f"{self.world.far_concepts[concept]}."
        return f"An ordinary picture number {path.parent.name} {index}"

    def _similar(self, prompt: str) -> str:
        found = re.search(r"share visual features with (.+?), excluding", prompt)
        if found is None:
            raise ValueError(f"not a VSNL prompt: {prompt!r}")
        name = found.group(1)
        cls = self.world.class_names.index(name)
        near = [self.world.near_concepts[j] for j in np.flatnonzero(self.world.near_concept_parent == cls)]
        # another ID class (plural, capitalised) first: VSNL must drop it
        other = self.world.class_names[(cls + 1) % len(self.world.class_names)].capitalize() + "s"
        names = [other] + (near or [f"gadget {cls} {k}" for k in "abcde"])
        return "\n".join(f"{i}. {n}" for i, n in enumerate(names, start=1))


class InstantMLLM:
    """An MLLM (the :class:`negspace.mllm.protocol.MLLM` protocol) that answers every request at
    once, for timing everything around the MLLM on any images: a description unique to each
    request (``concept_text(i)`` for an image ``far/<i>_<j>.*`` when given), five made-up names
    for ANTS's similar-class question, and "No." to any other question (NegRefine's filter)."""

    model_id = "instant"

    def __init__(self, concept_text: Any = None) -> None:
        self.stats = MLLMStats()
        self.received = 0
        self.concept_text = concept_text

    def generate(self, requests: Sequence[Any]) -> list[str | None]:
        answers: list[str | None] = []
        for request in requests:
            self.received += 1
            parts = [p for m in request.messages for p in m.content]
            image = next((p.image for p in parts if isinstance(p, ImagePart)), None)
            text = " ".join(p.text for p in parts if isinstance(p, TextPart))
            if image is None and "share visual features with" in text:
                answers.append("\n".join(f"{k}. lookalike {self.received} {w}" for k, w in enumerate("abcde", 1)))
            elif image is None:
                answers.append("No.")
            elif self.concept_text is not None and _image_path(image).parent.name == "far":
                answers.append(self.concept_text(int(_image_path(image).stem.split("_")[0])))
            else:
                answers.append(f"an ordinary scene number {self.received}")
        self.stats.calls += len(requests)
        return answers


class WorldTextEncoder:
    """A text encoder for a world: its texts map to their vectors, any other text to a unit vector
    seeded by the hash of the prompt (so ANTS's banks can be built without a CLIP model)."""

    def __init__(self, world: SyntheticWorld) -> None:
        self.dim = world.dim
        self.known = dict(zip(world.far_concepts, world.far_concept_features, strict=True))
        self.known.update(zip(world.near_concepts, world.near_concept_features, strict=True))
        self.known.update(zip(world.class_names, world.id_text_features, strict=True))
        self.calls = 0

    def encode_texts(self, texts: Sequence[str], template: str = "{}", progress: bool = True) -> np.ndarray:
        self.calls += 1
        rows = []
        for text in texts:
            if text in self.known:
                rows.append(self.known[text])
                continue
            seed = int(hashlib.sha256(template.format(text).encode()).hexdigest()[:12], 16)
            v = np.random.default_rng(seed).standard_normal(self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


def world_stream(world: SyntheticWorld, kind: str, seed: int = 0, batch_size: int = 50) -> tuple[list[Any], np.ndarray]:
    """A shuffled test stream of a world: ``(batches, order)``.

    ``kind`` is ``"far"`` or ``"near"`` (ID then that OOD set) or ``"mixed"`` (ID, far, near).
    ``batches`` are :class:`~negspace.detectors.base.StreamBatch` with paths ``id/<class>_<i>.png``,
    ``far/<concept>_<i>.png``, ``near/<concept>_<i>.png`` (what :class:`WorldMLLM` reads);
    ``order[j]`` is the index, in the concatenation ID, OOD, of the ``j``-th streamed image.
    """
    from negspace.detectors.base import StreamBatch
    from negspace.evaluation import stream_order

    parts = {
        "far": [("far", world.far_ood_features, world.far_ood_concept)],
        "near": [("near", world.near_ood_features, world.near_ood_concept)],
    }
    parts["mixed"] = parts["far"] + parts["near"]
    if kind not in parts:
        raise ValueError(f"kind must be 'far', 'near' or 'mixed', got {kind!r}")
    features = np.concatenate([world.id_image_features, *(f for _, f, _ in parts[kind])])
    paths = [Path(f"id/{c}_{i}.png") for i, c in enumerate(world.id_image_labels)]
    for name, _, concept in parts[kind]:
        paths += [Path(f"{name}/{c}_{i}.png") for i, c in enumerate(concept)]
    order = stream_order(len(world.id_image_features), len(features) - len(world.id_image_features), seed)
    batches = [
        StreamBatch(features[order[s : s + batch_size]], [paths[i] for i in order[s : s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]
    return batches, order
