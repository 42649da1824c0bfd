"""The tiny Qwen2.5-VL: the real repository's layout, tokenizer and template, built offline and
deterministically, loadable with transformers' own classes."""

import hashlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from api.texts.models.qwen_vl import QwenVL
from api.texts.models.tiny import TINY_TEXT_MODELS, build_tiny_text_models
from api.texts.registry import TEXT_MODELS

# The files of Qwen/Qwen2.5-VL-3B-Instruct (its weights come in two shards there), plus ours.
LAYOUT = [
    "chat_template.json",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tiny.json",
    "tokenizer.json",
    "tokenizer_config.json",
]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_layout_marker_and_size(tiny_text_models: Path) -> None:
    assert sorted(p.name for p in tiny_text_models.iterdir()) == sorted(TINY_TEXT_MODELS)
    folder = tiny_text_models / "qwen-2.5-vl"
    assert sorted(p.name for p in folder.iterdir()) == LAYOUT
    assert json.loads((folder / "tiny.json").read_text()) == {
        "built_by": "deferred-diffusion tiny-models",
        "imitates": TEXT_MODELS["qwen-2.5-vl"].repo,
        "model": "qwen-2.5-vl",
        "tiny": True,
    }
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 3_000_000, f"{size} bytes"
    with safe_open(folder / "model.safetensors", "pt") as tensors:
        assert all(tensors.get_slice(k).get_dtype() == "F32" for k in tensors.keys())


def test_build_is_deterministic_and_replaces(tiny_text_models: Path, tmp_path: Path) -> None:
    stale = tmp_path / "qwen-2.5-vl" / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("left over from an earlier build")
    assert build_tiny_text_models(tmp_path) == ["qwen-2.5-vl"]
    assert _file_hashes(tmp_path) == _file_hashes(tiny_text_models)


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny text models"):
        build_tiny_text_models(tmp_path, ["qwen-9"])
    assert not list(tmp_path.iterdir())


def test_loads_with_transformers_classes(tiny_text_models: Path, qwen_vl: QwenVL) -> None:
    folder = tiny_text_models / "qwen-2.5-vl"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    # load() gives the same weights, in fp32 on the CPU
    loaded = dict(qwen_vl.model.named_parameters())
    for name, parameter in model.named_parameters():
        assert loaded[name].dtype == parameter.dtype
        assert loaded[name].equal(parameter), name
    assert qwen_vl.model.device.type == "cpu"


def test_tokenizer_has_qwens_special_tokens(qwen_vl: QwenVL) -> None:
    tokenizer = qwen_vl.processor.tokenizer
    config = qwen_vl.model.config
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    # one after the other, in Qwen's order, after the learnt vocabulary
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert qwen_vl.model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"]
    )
    assert config.text_config.vocab_size >= len(tokenizer)
    # byte-level BPE: corpus words whole (with their leading space), anything else as bytes
    assert tokenizer.tokenize(" describe this picture") == ["Ġdescribe", "Ġthis", "Ġpicture"]
    text = "Zürich 🎬 <|im_end|>"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.tokenize(text)[-1] == "<|im_end|>"


def test_chat_template_renders_parts_as_the_processor_expects(qwen_vl: QwenVL) -> None:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "and?"}]},
    ]
    rendered = qwen_vl.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what?<|im_end|>\n"
        "<|im_start|>assistant\na cat<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>and?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert qwen_vl.processor.apply_chat_template(system) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )
