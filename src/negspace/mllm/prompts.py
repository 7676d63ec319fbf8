"""The ANTS prompts (docs/methods/ants.md, steps 3 and 5) and robust parsers for their answers.

Plain functions, no backend inside: :func:`describe_request` and :func:`vsnl_request` build
:class:`~negspace.mllm.protocol.ChatRequest` objects; :func:`parse_description` and
:func:`parse_class_list` turn whatever a model answered into something usable, or into
``None`` / ``[]`` when nothing is (the caller counts those in ``stats.rejected_answers``).

Models answer messily: refusals ("I'm sorry, I can't ..."), preambles ("Sure! Here is ..."),
markdown (``**bold**``, backticks, headings, bullets, block quotes), numbered or unnumbered
lists, too many or too few items, the very class name they were told to leave out, control
characters and U+FFFD replacement characters from broken UTF-8. The parsers handle all of these;
``tests/test_mllm_prompts.py`` pins them on a table of real-looking answers.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from PIL.Image import Image

from negspace.mllm.protocol import ChatRequest, GenerationParams, ImagePart, Message, TextPart

__all__ = [
    "DESCRIBE_TEMPLATE",
    "VSNL_TEMPLATE",
    "clean_text",
    "describe_request",
    "is_refusal",
    "parse_class_list",
    "parse_description",
    "vsnl_request",
]

#: ENS prompt (the authors' code), docs/methods/ants.md, step 3.
DESCRIBE_TEMPLATE = "Describe this image in fewer than eight words. Do not include the class name {id_class}."
#: VSNL prompt (the authors' code), docs/methods/ants.md, step 5. Text only: no image is needed.
VSNL_TEMPLATE = (
    "Give five different class names that share visual features with {c}, excluding {c}. "
    "Put each numbered class on a separate line."
)

# Longest class name kept from a list answer, in words ("Chesapeake Bay retriever" is 3);
# longer items are sentences (preambles, explanations), not names.
MAX_NAME_WORDS = 5


# -- requests -------------------------------------------------------------------------------------


def describe_request(
    image: Path | str | Image,
    id_class: str,
    params: GenerationParams = GenerationParams(),  # noqa: B008  (frozen dataclass)
) -> ChatRequest:
    """The ENS request: the image, then the description prompt naming the predicted class."""
    img = Path(image) if isinstance(image, str) else image
    prompt = DESCRIBE_TEMPLATE.format(id_class=id_class)
    return ChatRequest(messages=(Message.user(ImagePart(img), TextPart(prompt)),), params=params)


def vsnl_request(
    class_name: str,
    params: GenerationParams = GenerationParams(),  # noqa: B008  (frozen dataclass)
) -> ChatRequest:
    """The VSNL request: text only (the authors send a blank image; none is needed)."""
    return ChatRequest(messages=(Message.user(TextPart(VSNL_TEMPLATE.format(c=class_name))),), params=params)


# -- cleaning -------------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"""^\W*(?:
        (?:i'?m|i\s+am)\s+(?:so\s+|really\s+)?sorry
      | sorry\b
      | (?:unfortunately,?\s+)?i\s+(?:can'?not|can'?t|cannot|won'?t|am\s+(?:not\s+able|unable)|
            'm\s+(?:not\s+able|unable)|m\s+(?:not\s+able|unable)|do\s+not|don'?t)\s+
            (?:\w+\s+){0,3}?(?:help|assist|see|view|describe|identify|provide|comply|access|
            process|tell|determine|analy[sz]e|answer|do|fulfil+|open|display|recogni[sz]e|have)
      | i\s+apologi[sz]e
      | as\s+an?\s+(?:ai|language\s+model|large\s+language\s+model|text-based)
      | (?:there\s+is\s+)?no\s+image\s+(?:is\s+)?(?:provided|attached|available|shown)
      | unable\s+to\b
      | error\b
      | n/?a\W*$
      | none\W*$
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# Lead-ins a model puts before the actual answer ("Sure! Here is a description:").
_PREAMBLE_LINE = re.compile(
    r"^\W*(?:sure|certainly|of\s+course|okay|ok|absolutely|here\s+(?:is|are|'s)|"
    r"here's|below\s+(?:is|are))\b.*[:!.]?\s*$",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(
    r"^\s*(?:(?:sure|certainly|of\s+course|okay|ok)[,!.]?\s*)?"
    r"(?:(?:here\s+is|here's)\s+(?:a|the|my)\s+(?:short\s+|brief\s+)?description\s*[:\-]\s*|"
    r"(?:description|caption|answer|output)\s*[:\-]\s*)",
    re.IGNORECASE,
)
_CODE_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n?|```")
_INLINE_CODE = re.compile(r"`([^`]*)`")
_BOLD = re.compile(r"(\*\*|__)(.+?)\1")
_ITALIC = re.compile(r"(?<![\w*])([*_])(?!\s)(.+?)(?<!\s)\1(?![\w*])")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*")
_QUOTE = re.compile(r"^\s*(?:>\s*)+")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u2023\u25e6\u2043\u2219\u00b7]\s+)")
_NUMBER = re.compile(r"^\s*(?:\(?\d{1,2}\s*[.):\]\-]|\(\d{1,2}\)|#\d{1,2}[.):]?|[a-eA-E][.)])\s*")
_INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}\s*[.):]\s+")
_SPACES = re.compile(r"\s+")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_EDGE_PUNCT = " \t.,;:!?-\u2013\u2014*_~|" + _QUOTES
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[^\W\d_]{2,}")
# "1. Wolf - shares its fur" / "Wolf: similar ears" / "Wolf (similar shape)": keep the name.
_EXPLANATION = re.compile(r"\s+[-\u2013\u2014]\s+|:\s|\s*\(|,\s*(?:which|as|because|since)\b")


def clean_text(answer: str | bytes | None) -> str:
    """Decode, normalise and strip an answer of control characters and replacement characters.

    Bytes are decoded as UTF-8 with invalid sequences dropped. Newlines are kept (list parsing
    needs them); every other control or format character goes, as does U+FFFD.
    """
    if answer is None:
        return ""
    if isinstance(answer, (bytes, bytearray)):
        answer = bytes(answer).decode("utf-8", errors="replace")
    if not isinstance(answer, str):
        return ""
    text = unicodedata.normalize("NFKC", answer)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for ch in text:
        if ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append(" ")
        elif ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def _strip_markdown_line(line: str) -> str:
    line = _HEADING.sub("", line)
    line = _QUOTE.sub("", line)
    line = _LINK.sub(r"\1", line)
    line = _HTML_TAG.sub("", line)
    line = _INLINE_CODE.sub(r"\1", line)
    for _ in range(2):  # nested **_x_**
        line = _BOLD.sub(r"\2", line)
        line = _ITALIC.sub(r"\2", line)
    return line.replace("**", "").replace("__", "")


def _lines(text: str, drop_headings: bool = False) -> list[str]:
    text = _CODE_FENCE.sub("\n", text)
    raw = text.split("\n")
    if drop_headings:  # "### Similar classes" titles a list; it is not an item
        raw = [x for x in raw if not _HEADING.match(x) or not x.strip().startswith("#")]
    return [ln for ln in (_strip_markdown_line(x).strip() for x in raw) if ln]


def is_refusal(text: str) -> bool:
    """True for answers that decline ("I'm sorry, I can't ...", "As an AI ...")."""
    return bool(_REFUSAL.match(text.strip()))


def _squash(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _norm(name: str) -> str:
    """Comparison form of a class name: case-folded, separators as spaces, no edge punctuation."""
    name = name.casefold().replace("_", " ").replace("-", " ")
    return _squash(name).strip(_EDGE_PUNCT)


def _singular(name: str) -> str:
    if name.endswith("lves"):  # wolves, calves, shelves
        return name[:-3] + "f"
    if name.endswith("ies") and len(name) > 4:
        return name[:-3] + "y"
    if name.endswith(("ches", "shes", "sses", "xes")):
        return name[:-2]
    if name.endswith("s") and not name.endswith("ss") and len(name) > 3:
        return name[:-1]
    return name


_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


@functools.lru_cache(maxsize=65_536)  # ID names are keyed again for every answer
def _name_key(name: str) -> str:
    """Canonical form for comparing class names: normalised, no leading article, singular.

    "The Wolves", "wolf" and "a wolf" share one key, so a set of keys answers "is this name
    excluded?" in O(1) even against a thousand ID names.
    """
    return _singular(_ARTICLE.sub("", _norm(name)))


def _excluded_pattern(excluded: str) -> re.Pattern[str] | None:
    words = [re.escape(w) for w in re.split(r"[\s_\-]+", excluded.strip()) if w]
    if not words:
        return None
    body = r"[\s_\-]+".join(words)
    # the name, with an optional article before it and a plural ending after it
    return re.compile(rf"(?:\b(?:a|an|the)\s+)?\b{body}(?:s|es)?\b", re.IGNORECASE)


# -- descriptions ---------------------------------------------------------------------------------


def parse_description(answer: str | bytes | None, excluded: str, max_words: int | None = 8) -> str | None:
    """Clean an ENS description; ``None`` when the answer is unusable (see :func:`read_description`)."""
    read = read_description(answer, excluded, max_words)
    return None if read is None else read[0]


ASKED_WORDS = 8  # the description prompt asks for fewer than eight words


def is_degenerate(text: str, asked_words: int = ASKED_WORDS) -> bool:
    """An answer no description is in: one word repeated, or over 3x the asked length."""
    words = [w.casefold().strip(".,;:!?\"'") for w in text.split()]
    return (len(words) >= 3 and len(set(words)) == 1) or len(words) > 3 * asked_words


def read_description(
    answer: str | bytes | None, excluded: str, max_words: int | None = 8, strip_class_name: bool = True
) -> tuple[str, bool] | None:
    """Clean an ENS description: ``(text, whether the class name was cut out)``, ``None`` if unusable.

    Steps: decode and drop control / replacement characters; reject degenerate answers (one word
    repeated, over 3x the asked length: :func:`is_degenerate`); drop markdown; skip preamble lines
    ("Sure! Here is a description:") and take the first real line; drop lead-ins such as
    "Description:"; drop surrounding quotes; reject refusals; remove the excluded class name
    (with its article and plural ending) and keep the rest if it still has at least two words
    (otherwise ``None``), unless ``strip_class_name`` is off; collapse spaces; drop edge
    punctuation and the trailing period; cut to ``max_words`` words (``None``: no cut).
    """
    if max_words is not None and max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    cleaned = clean_text(answer)
    if is_degenerate(cleaned):
        return None
    lines = _lines(cleaned)
    if not lines:
        return None
    if is_refusal(lines[0]):
        return None
    # Skip preamble lines that only announce the answer.
    body = [ln for ln in lines if not (_PREAMBLE_LINE.match(ln) and ln.rstrip().endswith(":"))]
    if not body:
        return None
    text = body[0]
    text = _BULLET.sub("", text)
    text = _NUMBER.sub("", text) if re.match(r"^\s*\d{1,2}[.)]\s", text) else text
    text = _LEAD_IN.sub("", text)
    text = _squash(text)
    # "A red car. It is parked." -> the first sentence, when it is a description on its own
    sentences = _SENTENCE_END.split(text)
    if len(sentences) > 1 and len(sentences[0].split()) >= 2:
        text = sentences[0]
    text = text.strip(_EDGE_PUNCT)
    if not text or is_refusal(text):
        return None
    pattern = _excluded_pattern(excluded) if excluded and strip_class_name else None
    removed = pattern is not None and pattern.search(text) is not None
    if pattern is not None and removed:
        text = _squash(pattern.sub(" ", text))
        text = re.sub(r"\s+([,.;:!?])", r"\1", text)
        text = re.sub(r"^(?:[,.;:!?]\s*)+", "", text)
        text = text.strip(_EDGE_PUNCT)
        if len(text.split()) < 2:
            return None
    words = text.split()
    if max_words is not None and len(words) > max_words:
        words = words[:max_words]
    text = " ".join(words).strip(_EDGE_PUNCT)
    if not _WORD.search(text):
        return None
    return text, removed


# -- class lists ----------------------------------------------------------------------------------


def _split_items(lines: list[str]) -> list[str]:
    """Turn the answer's lines into candidate items (numbered, bulleted, or comma-separated)."""
    items: list[str] = []
    for line in lines:
        # "1. wolf 2. coyote 3. fox" on one line
        if len(_INLINE_NUMBER.findall(line)) >= 2:
            parts = [p for p in _INLINE_NUMBER.split(line) if p.strip()]
            items.extend(parts)
            continue
        stripped = _NUMBER.sub("", _BULLET.sub("", line))
        # "wolf, coyote, fox" (but not "Wolf: similar ears, shape and fur")
        if ("," in stripped or ";" in stripped) and not _NUMBER.match(line):
            pieces = [p for p in re.split(r"[;,]|\band\b", stripped) if p.strip()]
            if len(pieces) >= 2 and all(len(p.split()) <= MAX_NAME_WORDS for p in pieces):
                items.extend(pieces)
                continue
        items.append(line)
    return items


def _clean_item(item: str) -> str:
    item = _BULLET.sub("", item)
    item = _NUMBER.sub("", item)
    item = _QUOTE.sub("", _BULLET.sub("", item))
    item = _squash(item).strip(_EDGE_PUNCT)
    cut = _EXPLANATION.search(item)
    if cut is not None and cut.start() > 0:
        item = item[: cut.start()]
    item = re.sub(r"^(?:a|an|the)\s+", "", item, flags=re.IGNORECASE)
    return _squash(item).strip(_EDGE_PUNCT)


def parse_class_list(answer: str | bytes | None, excluded: Iterable[str], k: int = 5) -> list[str]:
    """Parse a VSNL answer into at most ``k`` class names (see :func:`read_class_list`)."""
    return read_class_list(answer, excluded, k)[0]


def read_class_list(answer: str | bytes | None, excluded: Iterable[str], k: int = 5) -> tuple[list[str], int]:
    """Parse a VSNL answer: at most ``k`` class names (``[]`` when nothing is usable) and how many
    excluded names were dropped on the way.

    Accepts "1. name", "2) name", "3: name", "(4) name", "- name", "* name", markdown, and
    unnumbered lists separated by commas or lines; drops preamble and closing sentences,
    explanations after the name ("Wolf - similar fur"), names equal (case-insensitive, plural
    tolerant) to any excluded name, and duplicates (case-insensitive, first kept).
    """
    if k < 1:
        return [], 0
    excluded_keys = {_name_key(e) for e in excluded if isinstance(e, str) and e.strip()} - {""}
    lines = _lines(clean_text(answer), drop_headings=True)
    if not lines or (is_refusal(lines[0]) and len(lines) == 1):
        return [], 0
    if is_refusal(lines[0]) and not any(_NUMBER.match(ln) or _BULLET.match(ln) for ln in lines):
        return [], 0
    names: list[str] = []
    dropped = 0
    seen: set[str] = set()
    for raw in _split_items(lines):
        if _PREAMBLE_LINE.match(raw) and (raw.rstrip().endswith(":") or len(raw.split()) > 3):
            continue
        if raw.rstrip().endswith(":") and not _NUMBER.match(raw):
            continue
        name = _clean_item(raw)
        if not name or not _WORD.search(name) or is_refusal(name):
            continue
        if len(name.split()) > MAX_NAME_WORDS:
            continue
        key = _name_key(name)
        if key in excluded_keys:
            dropped += 1
            continue
        if key in seen:
            continue
        seen.add(key)
        names.append(name)
        if len(names) >= k:
            break
    return names, dropped
