"""NegRefine's negative labels: CSP's pool, cleaned, then filtered by an LLM.

NegRefine (ICCV 2025; code github.com/ah-ansari/NegRefine, ``src/create_negs.py`` and
``src/neg_filter.py``) starts from CSP's conjugated pool (:mod:`negspace.corpus.csp`) with the ID
names removed from the nouns and the largest cosine to the ID classes as the ratio, keeps the
lowest 15% of each part, then (docs/methods/negrefine.md):

* **cleans** each label: only letters (Unicode-aware), ``_``, ``-`` and spaces are kept (spaces
  collapsed), labels of two characters or fewer dropped, repeats dropped (first seen kept); the
  cleaned string is what is embedded;
* **filters** it with a text-only LLM: a label the LLM calls a proper noun is dropped; otherwise,
  for each of the 10 ID names nearest to it (cosine of the bare strings' text features), nearest
  first, the label is dropped if it equals the name or the LLM calls it a subcategory of it (the
  first "yes" ends the questions).

The filtered list is written as a label file (``negspace mine``'s format), so the filter runs
once per model, class list and LLM; ``--negatives FILE`` reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from negspace.corpus.csp import PoolSelection, bank_of, select_from_pool
from negspace.corpus.labelfile import write_label_file
from negspace.corpus.mining import MinedNegatives, selection_key
from negspace.errors import NegspaceError, arg
from negspace.mllm.protocol import describe_model
from negspace.templates import NEGREFINE_PROPER_NOUN, NEGREFINE_SUBCATEGORY, NEGREFINE_SYSTEM

if TYPE_CHECKING:
    from negspace.encoders import ClipEncoder

log = logging.getLogger(__name__)

#: NegRefine's initial selection: ID names out of the nouns, the largest cosine as the ratio.
NEGREFINE_SELECTION = PoolSelection(quantile=1.0, saturate_above=0.95, fraction=0.15, remove_id_nouns=True)


def clean_label(label: str) -> str:
    """The label with only letters, ``_``, ``-`` and spaces kept (``"bird's nest"`` ->
    ``"birds nest"``), its spaces collapsed (``"cesium 137"`` -> ``"cesium"``: the same text to
    CLIP's tokenizer as the authors' ``"cesium "``, and a label file keeps it as written)."""
    return " ".join("".join(c for c in label if c.isalpha() or c in "_- ").split())


def clean_labels(labels: Sequence[str]) -> list[str]:
    """:func:`clean_label` of each, longer than two characters, each once in first-seen order
    (the authors' ``set`` gives an order that depends on the hash seed)."""
    kept = (clean_label(label) for label in labels)
    return list(dict.fromkeys(label for label in kept if len(label) > 2))


def is_yes(answer: str | None) -> bool:
    """NegRefine's reading of a reply: it starts with "yes" (after stripping, lower-cased)."""
    return answer is not None and answer.strip().lower().startswith("yes")


@dataclass
class FilterResult:
    """What the LLM filter kept, what it dropped and why, and how many requests failed."""

    kept: list[str]
    dropped: dict[str, str] = field(
        default_factory=dict
    )  # label -> "proper noun" | "same as NAME" | "subcategory of NAME"
    requests: int = 0
    failed: int = 0


def filter_labels(
    labels: Sequence[str],
    nearest: Sequence[Sequence[str]],
    ask: Callable[[list[str]], list[str | None]],
    max_failures: float = 0.1,
) -> FilterResult:
    """NegRefine's filter of ``labels``, ``nearest[i]`` holding label i's nearest ID names,
    nearest first; ``ask`` answers a batch of prompts (``None`` for a request that failed).

    The questions of every label go out in rounds (the proper-noun question, then the
    subcategory question of the nearest name, the second nearest, ...), each round one batch, so
    each label is asked exactly what the authors' loop asks it. A label whose request failed is
    kept (nothing speaks against it) and counted.

    Raises:
        NegspaceError: more than ``max_failures`` of the requests failed (the LLM is down or
            answers nothing usable; its result must not pass as a filter).
    """
    result = FilterResult([])
    undecided = list(range(len(labels)))

    def round_of(prompts: list[str]) -> list[str | None]:
        answers = ask(prompts) if prompts else []
        result.requests += len(prompts)
        result.failed += sum(answer is None for answer in answers)
        return answers

    answers = round_of([NEGREFINE_PROPER_NOUN.format(label=labels[i]) for i in undecided])
    for i, answer in zip(list(undecided), answers, strict=False):
        if is_yes(answer):
            result.dropped[labels[i]] = "proper noun"
            undecided.remove(i)
    for rank in range(max((len(names) for names in nearest), default=0)):
        asking = []
        for i in [i for i in undecided if rank < len(nearest[i])]:
            name = nearest[i][rank]
            if labels[i] == name:
                result.dropped[labels[i]] = f"same as {name}"
                undecided.remove(i)
            else:
                asking.append(i)
        answers = round_of([NEGREFINE_SUBCATEGORY.format(label=labels[i], name=nearest[i][rank]) for i in asking])
        for i, answer in zip(asking, answers, strict=False):
            if is_yes(answer):
                result.dropped[labels[i]] = f"subcategory of {nearest[i][rank]}"
                undecided.remove(i)
    if result.requests and result.failed / result.requests > max_failures:
        raise NegspaceError(
            f"The LLM filter of NegRefine lost {result.failed} of its {result.requests} requests "
            f"(more than {max_failures:.0%}); check the server ({arg('mllm', '--llm')}) and run again."
        )
    dropped = set(result.dropped)
    result.kept = [label for label in labels if label not in dropped]
    return result


def nearest_names(
    encoder: ClipEncoder, labels: Sequence[str], class_names: Sequence[str], k: int = 10
) -> list[list[str]]:
    """The ``k`` ID names nearest to each label, nearest first: cosines of the bare strings' text
    features (no template), as the authors' filter ranks them."""
    if not labels:
        return []
    names = list(class_names)
    name_features = encoder.encode_texts(names, progress=False)
    label_features = encoder.encode_texts(list(labels), progress=False)
    k = min(k, len(names))
    nearest = []
    for start in range(0, len(labels), 4096):
        cosines = label_features[start : start + 4096] @ name_features.T
        top = np.argsort(-cosines, axis=1, kind="stable")[:, :k]
        nearest += [[names[j] for j in row] for row in top]
    return nearest


def llm_asker(llm: Any, max_tokens: int = 16) -> Callable[[list[str]], list[str | None]]:
    """Prompts to answers through negspace's chat client (any OpenAI-compatible server, or a local
    model; answers cached by the client's response cache), temperature 0."""
    from negspace.mllm.protocol import ChatRequest, GenerationParams, Message, TextPart

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    system = Message("system", (TextPart(NEGREFINE_SYSTEM),))

    def ask(prompts: list[str]) -> list[str | None]:
        requests = [ChatRequest((system, Message.user(prompt)), params) for prompt in prompts]
        return list(llm.generate(requests))

    return ask


@dataclass
class RefinedBank:
    """NegRefine's bank and what building it did (for ``metrics.json``)."""

    bank: MinedNegatives
    notes: dict[str, Any]


def refine_bank(
    encoder: ClipEncoder,
    class_names: Sequence[str],
    id_features: np.ndarray,
    llm: Any = None,
    selection: PoolSelection = NEGREFINE_SELECTION,
    nearest: int = 10,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> RefinedBank:
    """The initial selection, cleaned, filtered by ``llm`` (skipped, and said, without one); the
    filtered list is cached as a label file under ``cache_dir/mined`` (keyed by model, classes,
    selection and the LLM's model id), so the filter runs once."""
    initial = select_from_pool(encoder, class_names, id_features, selection, cache_dir, progress)
    nouns, phrases = clean_labels(initial.nouns), clean_labels(initial.adjectives)
    notes: dict[str, Any] = {"initial_labels": len(initial.labels), "cleaned_labels": len(nouns) + len(phrases)}
    if llm is None:
        log.warning(
            "NegRefine: no LLM was given (--llm or --mllm), so its LLM filter was skipped: the bank is the "
            "initial selection, cleaned (%d labels)",
            len(nouns) + len(phrases),
        )
        notes["llm_filter"] = "skipped: no LLM was given"
        return RefinedBank(bank_of(encoder, nouns, phrases, progress=False), notes)
    model_id = getattr(llm, "model_id", type(llm).__name__)
    # keyed by the labels asked about (everything upstream: pool content, selection, model, classes)
    labels_digest = hashlib.sha256(json.dumps([nouns, phrases]).encode("utf-8")).hexdigest()
    settings = {"kind": "negrefine-filtered", "labels": labels_digest, "nearest": nearest, "llm": model_id}
    label_file = cache_dir / "mined" / f"{selection_key(encoder, class_names, settings)}.txt" if cache_dir else None
    if label_file is not None and label_file.is_file():
        from negspace.corpus.labelfile import read_label_file

        nouns, phrases = read_label_file(label_file)
        log.info("NegRefine: reusing the LLM-filtered list %s (%d labels)", label_file, len(nouns) + len(phrases))
        notes.update({"llm_filter": f"reused {label_file}", "llm": describe_model(llm, sends_images=False)})
        return RefinedBank(bank_of(encoder, nouns, phrases, progress=False), notes)
    ask = llm_asker(llm)
    log.info(
        "NegRefine: asking %s about %d labels (a proper noun? a subcategory of one of the %d nearest ID names?)",
        model_id,
        len(nouns) + len(phrases),
        nearest,
    )
    kept = []
    summary: dict[str, Any] = {
        "llm": describe_model(llm, sends_images=False),
        "requests": 0,
        "failed_requests": 0,
        "dropped": {},
    }
    for part in (nouns, phrases):
        result = filter_labels(part, nearest_names(encoder, part, class_names, nearest), ask)
        kept.append(result.kept)
        summary["requests"] += result.requests
        summary["failed_requests"] += result.failed
        for reason in result.dropped.values():
            kind = reason.split(" ")[0]
            summary["dropped"][kind] = summary["dropped"].get(kind, 0) + 1
    notes.update({"llm_filter": summary, "filtered_labels": len(kept[0]) + len(kept[1])})
    if summary["failed_requests"]:
        log.warning(
            "NegRefine: %d of the LLM's %d requests failed (their labels were kept); the filtered list is not "
            "saved, so the next run asks them again",
            summary["failed_requests"],
            summary["requests"],
        )
    elif label_file is not None:
        label_file.parent.mkdir(parents=True, exist_ok=True)
        write_label_file(
            label_file,
            kept[0],
            kept[1],
            comment=json.dumps({"method": "negrefine", "model": encoder.spec, "llm": model_id}),
        )
        notes["filtered_list"] = str(label_file)
        log.info("NegRefine: the filtered list is saved as %s (pass it as --negatives to skip the filter)", label_file)
    return RefinedBank(bank_of(encoder, kept[0], kept[1], progress=False), notes)
