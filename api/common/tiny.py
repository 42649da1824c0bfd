"""What every domain's tiny random-weight models are built with: seeded components,
tokenizers built in memory (byte-level BPE like CLIP's, GPT-2's and Qwen's; a Unigram T5),
and the writer that puts a model into ``DD_MODELS_DIR/<name>/`` with the tiny marker.

Only ``python -m api tiny-models`` and the tests import this (it imports torch, diffusers
and transformers); each domain's builders live in its ``models/tiny.py``.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from api.common.models import TINY_MARKER

# Words the tokenizers know as whole tokens; anything else falls back to smaller pieces.
CORPUS = """
a an the of on in at with and to by from for into over under near behind
photo photograph picture image painting drawing illustration render portrait landscape
close up closeup wide shot view detailed highly realistic photorealistic cinematic lighting
soft hard light dark bright night day sunset sunrise morning evening golden hour
cat cats dog dogs horse bird fish animal person man woman child girl boy people face
astronaut robot car house city street forest mountain mountains river lake sea ocean beach
sky cloud clouds sun moon star stars snow rain tree trees flower flowers garden field
red orange yellow green blue purple pink black white gray brown colorful
sitting standing running walking flying riding holding wearing looking
small large big tiny old young beautiful cute happy sad
style art artwork digital oil watercolor sketch anime cartoon 3d 4k 8k hd
quality best masterpiece high low resolution sharp focus blurry bokeh depth field
background foreground table chair window door room wall floor
"""

T5_EXTRA_IDS = 100
T5_MAX_LENGTH = 512  # as the real T5 tokenizers of SD3 and Flux

# Builds a model's files into the given (empty) folder.
Builder = Callable[[str, Path], None]


@dataclass(frozen=True)
class TinyModel:
    imitates: str  # the real repo id
    build: Builder


def seed(model: str, component: str) -> None:
    """Seed torch from the model and component names (stable across runs and processes)."""
    torch.manual_seed(zlib.crc32(f"{model}/{component}".encode()))


def corpus_words() -> list[str]:
    return list(dict.fromkeys(CORPUS.split()))


def printable_bytes() -> list[int]:
    """The bytes that byte-level BPE (GPT-2, CLIP, Qwen) writes as themselves."""
    return [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]


def byte_alphabet() -> list[str]:
    """The byte-level alphabet: one printable character per byte value, in the order of the
    vocabularies of CLIP, GPT-2 and Qwen (the printable bytes first)."""
    printable = printable_bytes()
    # The other bytes map, in byte order, to the code points right after U+00FF.
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def byte_level(text: str) -> str:
    """``text``'s UTF-8 bytes in the byte-level alphabet, as byte-level BPE sees them
    (a space becomes "Ġ")."""
    printable = set(printable_bytes())
    others = [b for b in range(256) if b not in printable]
    characters = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return "".join(characters[b] for b in text.encode())


def learn_bpe_merges(words: list[str], end_of_word: str = "</w>") -> list[tuple[str, str]]:
    """Greedy BPE over the corpus words until each is a single symbol; ties break by pair.
    ``end_of_word`` marks a word's last symbol (CLIP's "</w>"; GPT-2-style vocabularies
    have none and mark a word's start with "Ġ" instead)."""
    splits = [(*word[:-1], word[-1] + end_of_word) for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in splits:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        splits = [apply_merge(symbols, best) for symbols in splits]


def apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def t5_tokenizer(model_max_length: int = T5_MAX_LENGTH) -> T5Tokenizer:
    """A T5-style Unigram tokenizer: <pad>=0, </s>=1, <unk>=2, pieces, then reversed sentinels."""
    characters = string.ascii_letters + string.digits + ".,;:!?'\"()-_/&+*=%#@"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -6.0) for word in corpus_words()]
    pieces += [(character, -10.0) for character in characters]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(T5_EXTRA_IDS))]
    return T5Tokenizer(vocab=pieces, extra_ids=T5_EXTRA_IDS, model_max_length=model_max_length)


def t5_text_encoder(
    model: str, component: str, tokenizer: T5Tokenizer, *, d_model: int
) -> T5EncoderModel:
    """Encoder of a T5 v1.1 (gated-gelu feed-forward), like t5-v1_1-xxl."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=d_model * 2,
        num_layers=2,
        num_heads=d_model // 8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    seed(model, component)
    return T5EncoderModel(config)


def saved_pipeline(make: Callable[[str], DiffusionPipeline]) -> Builder:
    def build(name: str, folder: Path) -> None:
        make(name).save_pretrained(folder, safe_serialization=True)

    return build


def write_model(models_dir: Path, name: str, model: TinyModel) -> None:
    """Build into a temporary folder beside the target, then swap it into place."""
    target = models_dir / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=models_dir))
    staging.chmod(0o755)
    try:
        # Builders seed torch's global generator; keep the caller's random state untouched.
        with torch.random.fork_rng(devices=[]):
            model.build(name, staging)
        marker = {
            "built_by": "deferred-diffusion tiny-models",
            "imitates": model.imitates,
            "model": name,
            "tiny": True,
        }
        (staging / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=models_dir))
            target.rename(retired / name)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_tiny_models(
    models_dir: Path, known: dict[str, TinyModel], names: Iterable[str] | None, kind: str
) -> list[str]:
    """Write each named model of ``known`` (default: all) into models_dir/<name>/, marked as
    tiny; ``kind`` names them in the error for an unknown name. Returns the names written."""
    selected = list(known if names is None else names)
    unknown = [name for name in selected if name not in known]
    if unknown:
        raise ValueError(f"unknown tiny {kind} models: {unknown}; known: {list(known)}")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    diffusers.utils.logging.disable_progress_bar()  # no "Writing model shards" bars
    transformers.utils.logging.disable_progress_bar()
    try:
        for name in selected:
            write_model(models_dir, name, known[name])
    finally:
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()
    return selected
