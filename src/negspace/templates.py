"""The prompts the methods encode their labels with, written once.

NegLabel's authors prompt ID class names and WordNet nouns ``The nice {}.`` and adjectives
``This is a {} photo.``; TANL, AdaNeg and ANTS build on their code and keep both (ANTS also
prompts its VSNL labels as nouns, and encodes its ENS descriptions as written). MCM uses CLIP's
``a photo of a {}.``.
"""

from __future__ import annotations

ID_TEMPLATE = "The nice {}."  # ID class names (NegLabel, TANL, AdaNeg, ANTS)
NOUN_TEMPLATE = ID_TEMPLATE  # corpus nouns
ADJECTIVE_TEMPLATE = "This is a {} photo."  # corpus adjectives
MCM_TEMPLATE = "a photo of a {}."  # MCM's class names
VSNL_TEMPLATE = NOUN_TEMPLATE  # ANTS: class names the MLLM finds visually similar
ENS_TEMPLATE = "{}"  # ANTS: the MLLM's descriptions of negative images, as written

# CSP (Chen et al., NeurIPS 2024) and NegRefine (ICCV 2025), from the CSP authors' code
# (github.com/MengyuanChen21/NeurIPS2024-CSP, mmcls/models/classifiers/class_names.py:
# preset_noun_prompt_templates, preset_adj_prompt_templates, csp_templates). A label's feature is
# the mean of its unnormalised features over the templates, then normalised.
CSP_NOUN_TEMPLATES = (  # ID class names and corpus nouns
    "a close-up photo of the nice {}.",
    "a photo with the nice {}.",
    "a good photo with the nice {}.",
    "a photo of the nice {}.",
    "{}",
    "the {}",
    "the good {}",
    "the nice {}",
)
CSP_ADJECTIVE_TEMPLATES = (  # conjugated adjective phrases ("lively area"); no article
    "{}",
    "a nice photo of {}",
    "a good photo of {}",
    "a close-up photo of {}",
)
#: The superclass words an adjective is conjugated with, ``"{adjective} {word}"``, one drawn per
#: adjective (``random.seed(0)``, ``random.choice``).
CSP_SUPERCLASS_WORDS = (
    "environment",
    "space",
    "object",
    "scene",
    "place",
    "item",
    "area",
    "view",
    "thing",
    "pattern",
    "structure",
    "landscape",
    "vista",
    "creature",
)

# NegRefine's LLM filter (github.com/ah-ansari/NegRefine, src/neg_filter.py), verbatim: the
# system message, the proper-noun question and the subcategory question (its spelling kept, as
# the model was asked it). A reply is "yes" when it starts with "yes" (stripped, lower-cased).
NEGREFINE_SYSTEM = "You are a helpful assistant. Answering only Yes/No."
NEGREFINE_PROPER_NOUN = (
    "Is '{label}' a proper noun, like the name of a city, country, mountain, river, or any unique place or entity?"
)
NEGREFINE_SUBCATEGORY = "Is '{label}' a subcatgeory of '{name}'?"
NEGREFINE_PAIR = "{} and {}"  # NegRefine's multi-matching text: an ID name and a negative label
