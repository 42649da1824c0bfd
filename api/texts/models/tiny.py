"""Tiny random-weight stand-ins for the text models the server serves.

``qwen-2.5-vl`` is a ``Qwen2_5_VLForConditionalGeneration`` with its tokenizer, image processor and
chat template, each written with ``save_pretrained`` in the files of Qwen/Qwen2.5-VL-3B-Instruct
(config.json, generation_config.json, model.safetensors, preprocessor_config.json,
tokenizer.json, tokenizer_config.json, chat_template.json), so ``AutoProcessor`` and
``models/qwen_vl.py`` load it through the same code as the real weights. The architecture is the
real one (windowed vision transformer with 14-px patches, 2x2 patch merger, temporal patches of 2
frames, multimodal RoPE, tied embeddings) at a few dozen channels and two layers each; the image
settings are the real repository's (its video processor takes them, as there).

The tokenizer is a byte-level BPE like Qwen's: Qwen's pre-tokenizer regex, byte alphabet and
added tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``,
``<|image_pad|>``, ``<|video_pad|>``, ...) in Qwen's order after the vocabulary, merges learnt in
memory from a small corpus (with the image models' BPE helpers), and Qwen2.5-VL's chat template.
Everything is built offline from fixed seeds: building twice gives byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import transformers
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
)

from api.common.tiny import (
    TinyModel,
    byte_alphabet,
    byte_level,
    corpus_words,
    learn_bpe_merges,
    seed,
    write_model,
)
from api.texts.registry import TEXT_MODELS

# Words of a conversation about pictures, on top of the image models' prompt words.
_CHAT_CORPUS = """
you are helpful assistant system user describe this that what is shown here there it its
please tell me about picture pictures video clip frame frames shot plate take first second
which how many where who color colour colors yes no one two three left right top bottom
"""

# Qwen2's added tokens, in the order (and so with the relative ids) of the real tokenizer;
# the special ones are never split out of or written into user text.
_SPECIAL_TOKENS = (
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
)
_PLAIN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
_EXTRA_SPECIAL_TOKENS = [t for t in _SPECIAL_TOKENS if t != "<|endoftext|>"]

# The chat template of Qwen2-VL and Qwen2.5-VL: a default system message, each message between
# <|im_start|>role and <|im_end|>, each image or video part as a vision placeholder that the
# processor expands to one <|image_pad|>/<|video_pad|> per merged patch.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Weights drawn 15x wider than the real models' 0.02: at 0.02 a model this small answers "\n"
# whatever it is shown; at 0.3 the answer changes with the image and the question.
_INITIALIZER_RANGE = 0.3


def _qwen_tokenizer() -> Qwen2Tokenizer:
    words = list(dict.fromkeys([*corpus_words(), *_CHAT_CORPUS.split()]))
    # Qwen's pre-tokenizer keeps a word's leading space: learn "Ġword" as well as "word".
    pieces = [byte_level(w) for w in words] + [byte_level(" " + w) for w in words]
    merges = learn_bpe_merges(pieces, end_of_word="")
    vocab: dict[str, int] = {}
    for token in [*byte_alphabet(), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    for token in (*_SPECIAL_TOKENS, *_PLAIN_ADDED_TOKENS):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # pairs are accepted as well as "a b" lines
        unk_token=None,  # type: ignore[arg-type]  # byte-level: every byte has a token
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=_EXTRA_SPECIAL_TOKENS,
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in _PLAIN_ADDED_TOKENS]
    )
    return tokenizer


def _image_processor() -> Qwen2VLImageProcessor:
    """The real repository's image settings: 56x56 up to 16384 tokens' worth of pixels. (It has
    no video processor config: the video processor takes these settings.)"""
    return Qwen2VLImageProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def _model(name: str, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    ids = {token: cast(int, tokenizer.convert_tokens_to_ids(token)) for token in _SPECIAL_TOKENS}
    hidden_size = 64
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": -(-len(tokenizer) // 64) * 64,  # padded, as the real 151936
            "hidden_size": hidden_size,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "max_window_layers": 2,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "hidden_act": "silu",
            "initializer_range": _INITIALIZER_RANGE,
            # multimodal RoPE: of each head's 8 rotary frequencies, 2 follow time, 3 height, 3
            # width (the real 16/24/24 of 64)
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "hidden_act": "silu",
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": hidden_size,
            "tokens_per_second": 2,
            "initializer_range": _INITIALIZER_RANGE,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    seed(name, "model")
    model = Qwen2_5_VLForConditionalGeneration(config)
    # the real repository's: ends at <|im_end|> or <|endoftext|>, near-greedy, penalty 1.05
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        do_sample=True,
        repetition_penalty=1.05,
        temperature=1e-6,
    )
    return model


def _qwen_vl(name: str, folder: Path) -> None:
    """The files of the real repository: the processor's parts saved one by one (the image
    processor as preprocessor_config.json, the template as chat_template.json), not as one
    processor_config.json, so that ``AutoProcessor`` takes the same path as for the real
    weights (the processor class from config.json's model type)."""
    tokenizer = _qwen_tokenizer()
    _model(name, tokenizer).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _image_processor().save_pretrained(folder)
    template = {"chat_template": CHAT_TEMPLATE}
    (folder / "chat_template.json").write_text(json.dumps(template, indent=2) + "\n")


TINY_TEXT_MODELS: dict[str, TinyModel] = {
    "qwen-2.5-vl": TinyModel(TEXT_MODELS["qwen-2.5-vl"].repo, _qwen_vl),
}


def build_tiny_text_models(models_dir: Path, names: Iterable[str] | None = None) -> list[str]:
    """Write a tiny random-weight copy of each named text model into models_dir/<name>/.

    ``names`` defaults to every tiny text model. Returns the names written.
    """
    selected = list(TINY_TEXT_MODELS if names is None else names)
    unknown = [name for name in selected if name not in TINY_TEXT_MODELS]
    if unknown:
        raise ValueError(f"unknown tiny text models: {unknown}; known: {list(TINY_TEXT_MODELS)}")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    try:
        for name in selected:
            write_model(models_dir, name, TINY_TEXT_MODELS[name])
    finally:
        transformers.utils.logging.enable_progress_bar()
    return selected
