"""The ANTS prompts and their answer parsers, on a table of real-looking messy answers."""

from __future__ import annotations

import pytest
from PIL import Image

from negspace.mllm.prompts import (
    DESCRIBE_TEMPLATE,
    VSNL_TEMPLATE,
    clean_text,
    describe_request,
    is_refusal,
    parse_class_list,
    parse_description,
    vsnl_request,
)
from negspace.mllm.protocol import GenerationParams, ImagePart, TextPart


def test_templates_match_spec():
    assert DESCRIBE_TEMPLATE == (
        "Describe this image in fewer than eight words. Do not include the class name {id_class}."
    )
    assert VSNL_TEMPLATE == (
        "Give five different class names that share visual features with {c}, excluding {c}. "
        "Put each numbered class on a separate line."
    )


def test_describe_request_has_image_then_prompt(tmp_path):
    req = describe_request(str(tmp_path / "x.png"), "goldfish")
    assert req.has_images
    (msg,) = req.messages
    assert msg.role == "user"
    assert isinstance(msg.content[0], ImagePart) and msg.content[0].image == tmp_path / "x.png"
    assert isinstance(msg.content[1], TextPart)
    assert msg.content[1].text.endswith("Do not include the class name goldfish.")
    pil = Image.new("RGB", (4, 4))
    params = GenerationParams(max_tokens=16)
    req2 = describe_request(pil, "cat", params)
    assert req2.messages[0].content[0].image is pil and req2.params == params


def test_vsnl_request_is_text_only():
    req = vsnl_request("tabby cat")
    assert not req.has_images
    assert req.messages[0].content == (TextPart(VSNL_TEMPLATE.format(c="tabby cat")),)


DESCRIPTIONS = [
    # (answer, excluded, expected)
    ("A red car parked on a street.", "goldfish", "A red car parked on a street"),
    ("  a   red  car.  ", "goldfish", "a red car"),
    ("**A snowy mountain peak at sunrise.**", "volcano", "A snowy mountain peak at sunrise"),
    ('"Rusty gears on a wooden table."', "clock", "Rusty gears on a wooden table"),
    ("`Text on a white page`", "menu", "Text on a white page"),
    ("## A crowded city street at night", "tram", "A crowded city street at night"),
    ("> A bowl of ramen with chopsticks", "soup", "A bowl of ramen with chopsticks"),
    ("- A dog running on the beach", "cat", "A dog running on the beach"),
    ("Sure! Here is a description:\nA striped fabric pattern in blue.", "zebra", "A striped fabric pattern in blue"),
    ("Description: Green leaves with water droplets.", "frog", "Green leaves with water droplets"),
    (
        "A very long answer that goes on and on describing every single detail of the scene.",
        "dog",
        "A very long answer that goes on and",
    ),
    ("I'm sorry, I can't help with identifying this image.", "cat", None),
    ("I am sorry, but I cannot describe this image.", "cat", None),
    ("As an AI language model, I cannot see images.", "cat", None),
    ("Unfortunately, I cannot view the image you provided.", "cat", None),
    ("", "cat", None),
    (None, "cat", None),
    ("   \n\n  ", "cat", None),
    ("...", "cat", None),
    ("\ufffd\ufffd\x00\x07", "cat", None),
    ("A golden retriever playing in the grass.", "golden retriever", "playing in the grass"),
    ("Golden retriever.", "golden retriever", None),
    ("Two Tabby Cats sleeping on a sofa", "tabby cat", "Two sleeping on a sofa"),
    ("A pizza with cheese\x00 and \ufffdtomato", "bagel", "A pizza with cheese and tomato"),
    (b"A caf\xc3\xa9 terrace \xff\xfe at night", "bistro", "A café terrace at night"),
    ("The image shows a foggy forest path", "trail", "The image shows a foggy forest path"),
    ("*Close-up of a honeycomb texture*", "bee", "Close-up of a honeycomb texture"),
    ("A red car. It is parked near a tree.", "truck", "A red car"),
    ("Dr. Seuss book cover", "comic", "Dr. Seuss book cover"),
    ("1. A lighthouse on a rocky coast", "beacon", "A lighthouse on a rocky coast"),
]


@pytest.mark.parametrize(("answer", "excluded", "expected"), DESCRIPTIONS)
def test_parse_description(answer, excluded, expected):
    assert parse_description(answer, excluded) == expected


def test_parse_description_word_limit_is_a_parameter():
    assert parse_description("one two three four five", "x", max_words=3) == "one two three"
    with pytest.raises(ValueError):
        parse_description("a b", "x", max_words=0)


LISTS = [
    # (answer, excluded, expected)
    ("1. Wolf\n2. Coyote\n3. Fox\n4. Jackal\n5. Dingo", ["husky"], ["Wolf", "Coyote", "Fox", "Jackal", "Dingo"]),
    ("1) wolf\n2) coyote\n3) fox", ["husky"], ["wolf", "coyote", "fox"]),
    ("1: wolf\n2: coyote", ["husky"], ["wolf", "coyote"]),
    ("(1) wolf\n(2) coyote", ["husky"], ["wolf", "coyote"]),
    ("- wolf\n- coyote\n* fox\n• jackal", ["husky"], ["wolf", "coyote", "fox", "jackal"]),
    ("wolf, coyote, fox, jackal and dingo", ["husky"], ["wolf", "coyote", "fox", "jackal", "dingo"]),
    ("wolf\ncoyote\nfox", ["husky"], ["wolf", "coyote", "fox"]),
    (
        (
            "Sure! Here are five class names that share visual features with husky:\n"
            "1. **Alaskan Malamute**\n2. **Wolf**\n3. **Samoyed**\n4. **Akita**\n5. **Shiba Inu**\n"
            "These breeds share similar fur and body shapes with the husky."
        ),
        ["husky"],
        ["Alaskan Malamute", "Wolf", "Samoyed", "Akita", "Shiba Inu"],
    ),
    (
        "1. Wolf - similar fur and ears\n2. Coyote: slender build\n3. Fox (pointed snout)",
        ["husky"],
        ["Wolf", "Coyote", "Fox"],
    ),
    (
        "1. Husky\n2. Siberian husky\n3. Wolf\n4. Huskies\n5. Malamute",
        ["husky", "siberian husky"],
        ["Wolf", "Malamute"],
    ),
    ("1. wolf\n2. Wolf\n3. WOLF\n4. wolves\n5. fox", ["husky"], ["wolf", "fox"]),
    ("1. a\n2. b\n3. wolf\n4. fox\n5. cat\n6. dog\n7. cow\n8. pig", ["husky"], ["wolf", "fox", "cat", "dog", "cow"]),
    ("1. wolf 2. coyote 3. fox 4. jackal 5. dingo", ["husky"], ["wolf", "coyote", "fox", "jackal", "dingo"]),
    ("```\n1. wolf\n2. fox\n```", ["husky"], ["wolf", "fox"]),
    ("I'm sorry, but I can't help with that.", ["husky"], []),
    ("As an AI, I cannot browse class names.", ["husky"], []),
    ("", ["husky"], []),
    (None, ["husky"], []),
    ("\x00\x01\ufffd", ["husky"], []),
    ("1. `arctic_fox`\n2. _snow leopard_\n3. > polar bear", ["husky"], ["arctic_fox", "snow leopard", "polar bear"]),
    ("1. red_wolf\n2. The Gray Wolf.\n3. an Eskimo dog", ["husky"], ["red_wolf", "Gray Wolf", "Eskimo dog"]),
    (b"1. caf\xc3\xa9 chair\n2. st\xffool", ["table"], ["café chair", "stool"]),
    ("### Similar classes\n1. Tiger\n2. Leopard", ["lion"], ["Tiger", "Leopard"]),
    ("Here are five classes:\n\n1. Tiger\n\n2. Leopard\n\n3. Cheetah", ["lion"], ["Tiger", "Leopard", "Cheetah"]),
    ("The following animals look like a lion because they are large cats with tawny fur", ["lion"], []),
    ("Tiger; Leopard; Cheetah", ["lion"], ["Tiger", "Leopard", "Cheetah"]),
]


@pytest.mark.parametrize(("answer", "excluded", "expected"), LISTS)
def test_parse_class_list(answer, excluded, expected):
    assert parse_class_list(answer, excluded) == expected


def test_parse_class_list_k():
    assert parse_class_list("a1, wolf, fox, cat", ["x"], k=2) == ["wolf", "fox"]
    assert parse_class_list("wolf", ["x"], k=0) == []


def test_clean_text_and_refusal():
    assert clean_text(b"ok\xff") == "ok"
    assert clean_text("a\r\nb\tc") == "a\nb c"
    assert is_refusal("I'm sorry, I cannot do that")
    assert is_refusal("As an AI model I")
    assert not is_refusal("A sorry-looking dog")


def test_degenerate_descriptions_are_rejected():
    from negspace.mllm.prompts import is_degenerate, parse_description

    assert parse_description("lorem lorem lorem lorem", "cat") is None
    assert parse_description("Lorem, lorem. LOREM lorem!", "cat") is None
    assert parse_description(" ".join(f"word{i}" for i in range(25)), "cat") is None  # over 3x eight words
    assert parse_description("A red car on a wet road.", "cat") == "A red car on a wet road"
    assert not is_degenerate("Yes yes") and is_degenerate("no no no")
