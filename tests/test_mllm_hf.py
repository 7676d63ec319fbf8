"""The hf: backend: message building (pure), and real generation with a tiny Qwen2-VL built from
a config with random weights, saved with save_pretrained and loaded back as a user would."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from external_tools import require_module
from negspace.errors import NegspaceError
from negspace.mllm.hf_backend import build_hf_messages, load_rgb
from negspace.mllm.prompts import describe_request, vsnl_request
from negspace.mllm.protocol import ChatRequest, GenerationParams, ImagePart, Message, TextPart


def test_build_messages_image_then_text(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (600, 300)).save(path)
    messages, images = build_hf_messages(describe_request(path, "cat"), image_size=448)
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {
                    "type": "text",
                    "text": "Describe this image in fewer than eight words. Do not include the class name cat.",
                },
            ],
        }
    ]
    (img,) = images
    assert img.mode == "RGB" and img.size == (448, 224)


def test_build_messages_text_only_and_multi_part():
    messages, images = build_hf_messages(vsnl_request("cat"))
    assert images == [] and messages[0]["content"][0]["type"] == "text"
    a, b = Image.new("L", (10, 10)), Image.new("RGB", (20, 10))
    req = ChatRequest(
        (
            Message("system", (TextPart("be brief"),)),
            Message.user(ImagePart(a), "compare", ImagePart(b)),
        )
    )
    messages, images = build_hf_messages(req, load_images=False)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert [p["type"] for p in messages[1]["content"]] == ["image", "text", "image"]
    assert images == [a, b]
    _, loaded = build_hf_messages(req)
    assert [im.mode for im in loaded] == ["RGB", "RGB"] and loaded[1].size == (20, 10)


def test_build_messages_text_only_model():
    messages, images = build_hf_messages(
        ChatRequest((Message("system", (TextPart("be brief"),)), Message.user("a", "b"))), text_only=True
    )
    assert messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]
    assert images == []
    with pytest.raises(ValueError, match="text-only"):
        build_hf_messages(describe_request(Image.new("RGB", (4, 4)), "cat"), text_only=True)


def test_load_rgb_never_upscales():
    assert load_rgb(Image.new("P", (30, 40)), 448).size == (30, 40)


def _one_sentence(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 500, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_hub_model_fails_fast(empty_hub_cache, silent_hub):
    # conftest sets HF_HUB_OFFLINE=1: a hub id that is not cached fails at once, in one sentence,
    # without a connection to the hub (one would wait on the silent socket and be counted)
    from negspace.errors import WeightsUnavailableError
    from negspace.mllm.loading import load_mllm

    with pytest.raises(WeightsUnavailableError) as info:
        load_mllm("hf:nosuch/model", cache=False, device="cpu")
    _one_sentence(info.value, "hf:nosuch/model", "HF_HUB_OFFLINE", "hf:/path/to/folder")
    assert silent_hub.connections() == 0


def test_unreachable_hub_fails_fast_without_hub_chatter(unreachable_hub, capfd, caplog, monkeypatch):
    # No offline flag, the hub at a port nobody listens on: the encoders' real probe finds it
    # unreachable and switches this load to cache-only instead of letting huggingface_hub retry.
    from huggingface_hub import constants

    from negspace.errors import WeightsUnavailableError
    from negspace.mllm.loading import load_mllm

    # an earlier in-process `negspace` run gave its logger a handler of its own, writing to that
    # test's captured (now closed) stderr: drop it, and read the records here
    monkeypatch.setattr(logging.getLogger("negspace"), "handlers", [])
    monkeypatch.setattr(logging.getLogger("negspace"), "propagate", True)
    with caplog.at_level("INFO", logger="negspace"), pytest.raises(WeightsUnavailableError) as info:
        load_mllm("hf:nosuch/model", cache=False, device="cpu")
    _one_sentence(info.value, "hf:nosuch/model", "unreachable", "hf:/path/to/folder")
    assert constants.HF_HUB_OFFLINE is False  # the temporary offline switch was undone
    assert f"The hub ({unreachable_hub}) is unreachable" in caplog.text  # the probe said so
    assert "Retrying" not in caplog.text and unreachable_hub + "/" not in caplog.text  # nothing was requested
    err = capfd.readouterr().err
    assert "Retrying" not in err and unreachable_hub not in err and "huggingface.co" not in err


def test_cached_hub_model_loads_offline(empty_hub_cache):
    # The fast offline failure must not refuse a model that is in the hub cache.
    from negspace.mllm.loading import load_mllm

    repo = empty_hub_cache / "models--negspace--tiny-chat"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    save_tiny_qwen2_text(repo / "snapshots" / ("0" * 40))
    mllm = load_mllm("hf:negspace/tiny-chat", cache=False, device="cpu")
    assert mllm.text_only and mllm.model_id.startswith("hf:negspace/tiny-chat")


@pytest.mark.parametrize(
    "spec", ["/no/such/negspace/model", "./no/such/model", "~/no-such-negspace-model", "a/b/c", "../no-such-model"]
)
def test_missing_folder_says_so(spec, tmp_path, monkeypatch, silent_hub):
    from negspace.mllm.loading import load_mllm

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NegspaceError) as info:
        load_mllm(f"hf:{spec}", cache=False, device="cpu")
    _one_sentence(info.value, "folder", "does not exist", spec, "hf:/path/to/folder")
    assert silent_hub.connections() == 0  # a path is never looked up on the hub


def test_folder_without_a_model(tmp_path, tiny_qwen):
    from negspace.mllm.loading import load_mllm

    def fails(path: Path, *needles: str) -> None:
        with pytest.raises(NegspaceError) as info:
            load_mllm(f"hf:{path}", cache=False, device="cpu")
        _one_sentence(info.value, str(path), "hf:/path/to/folder", *needles)

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, "no config.json")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text('{"model_type": "no-such-architecture"}')
    fails(junk, "no model transformers can load")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    fails(broken, "no model transformers can load")
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"x")
    fails(a_file, "not a folder")


# -- a tiny Qwen2-VL, built offline ---------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        [
            (
                "Describe this image in fewer than eight words. Give five different "
                "class names that share visual features."
            )
        ],
        trainer,
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def save_tiny_qwen2_text(folder: Path) -> Path:
    """A 1-layer text-only Qwen2 chat model with the same tokenizer and template."""
    import torch

    require_module("transformers", extra="hf")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fast = _tiny_tokenizer()
    fast.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(1)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def save_tiny_qwen2_vl(folder: Path) -> Path:
    """A 1-layer Qwen2-VL (random weights), a byte-level BPE tokenizer trained on one sentence,
    and a processor whose images become 4 visual tokens; all written with save_pretrained."""
    import torch

    require_module("transformers", extra="hf")
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    fast = _tiny_tokenizer()
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIALS}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=fast,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(fast),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 16,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    # transformers is in the test extra: an API this builder cannot use fails, it is not skipped
    return save_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def test_tiny_qwen2_vl_generates_batched_with_and_without_images(tiny_qwen, tmp_path):
    from negspace.mllm.loading import load_mllm

    mllm = load_mllm(f"hf:{tiny_qwen}", device="cpu", batch_size=3, cache_dir=tmp_path)
    params = GenerationParams(max_tokens=4)
    reqs = [
        describe_request(Image.new("RGB", (200, 100), (255, 0, 0)), "cat", params),
        describe_request(Image.new("RGB", (60, 90), (0, 0, 255)), "a goldfish", params),
        vsnl_request("cat", params),
        vsnl_request("a much longer class name", params),
        describe_request(Image.new("RGB", (30, 30)), "x", params),
    ]
    answers = mllm.generate(reqs)
    assert len(answers) == 5 and all(isinstance(a, str) for a in answers)
    assert mllm.stats.calls == 5 and mllm.stats.failures == 0
    # left padding: each answer equals the one given alone (greedy)
    backend = mllm.backend
    alone = [backend.generate([r])[0] for r in reqs[:4]]
    assert alone == answers[:4]
    # the cache answers the second time
    assert mllm.generate(reqs) == answers and mllm.stats.cache_hits == 5


def test_text_only_model_for_vsnl(tiny_qwen, tmp_path_factory, tmp_path):
    from negspace.mllm.loading import MLLMPair, load_mllm

    text_dir = save_tiny_qwen2_text(tmp_path_factory.mktemp("tiny-qwen2-text"))
    pair = load_mllm(f"hf:{tiny_qwen}", text_spec=f"hf:{text_dir}", device="cpu", cache_dir=tmp_path)
    assert isinstance(pair, MLLMPair)
    assert pair.text.backend.text_only and not pair.vision.backend.text_only
    params = GenerationParams(max_tokens=3)
    out = pair.generate(
        [
            vsnl_request("cat", params),
            describe_request(Image.new("RGB", (40, 40)), "cat", params),
            vsnl_request("a longer class name", params),
        ]
    )
    assert all(isinstance(a, str) for a in out)
    assert pair.stats.calls == 3 and pair.stats.failures == 0
    # a text-only backend asked about an image fails that request, counted, without raising
    text_backend = pair.text.backend
    assert text_backend.generate([describe_request(Image.new("RGB", (8, 8)), "cat", params)]) == [None]
    assert text_backend.stats.failures == 1
