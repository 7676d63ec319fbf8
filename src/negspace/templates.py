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
