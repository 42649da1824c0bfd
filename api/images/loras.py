"""LoRAs: where a request's LoRA names point (a file in DD_LORAS_DIR, or a Hugging Face
repo), and which model family each is for, read from its safetensors header (no tensor is
loaded). Loading them into a pipeline is the diffusion models' business (models/diffusion.py).

The family comes from, in order:
- the file's metadata: ``modelspec.architecture`` (the Stability/kohya model spec, e.g.
  ``stable-diffusion-xl-v1-base/lora``) or kohya's ``ss_base_model_version`` (``sdxl_base_v1-0``);
- its keys, in diffusers/PEFT (``unet.down_blocks.0...lora_A.weight``), older diffusers
  (``...lora.down.weight``, ``...processor.to_k_lora...``), kohya/A1111 (``lora_unet_...``,
  ``lora_te_``/``lora_te1_``/``lora_te2_``; SDXL in the original UNet's ``input_blocks`` naming),
  BFL/XLabs Flux (``double_blocks``, ``single_blocks``) and SAI SD3 (``joint_blocks``) formats:
  - flux: single or double stream blocks; sd3: joint blocks, or a transformer with dual
    attention (``attn2``, SD3.5), SD3's patch embedding, a 1536/2432-wide transformer, or a
    last block without context output (SD3's ``context_pre_only`` block);
  - a UNet: sdxl with a second text encoder's keys, 2048-wide cross-attention, several
    transformer blocks per attention or the added embedding; sd1.5 with 768-wide
    cross-attention or attentions where only SD 1.x has them (the first down and last up
    block); 1024-wide cross-attention is SD 2.x (no model here takes it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from api.common.errors import JobFailure
from api.common.services import Services
from api.images.registry import ImageModel
from api.images.schemas import Lora
from api.images.settings import loras_dir

SUFFIX = ".safetensors"
# The file diffusers' trainers write, picked from a repo when the name gives no file.
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# owner/repo, or owner/repo/<path of a .safetensors file in it>
_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<file>[\w./-]+\.safetensors))?$")

_METADATA_ARCHITECTURES = (  # modelspec.architecture / ss_base_model_version prefixes
    ("stable-diffusion-xl-v1-refiner", "sdxl-refiner"),
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-v1", "sd1.5"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-3", "sd3"),
    ("flux", "flux"),
    ("sdxl", "sdxl"),
    ("sd_v1", "sd1.5"),
    ("sd_v2", "sd2"),
    ("sd3", "sd3"),
)
_FLUX_BLOCKS = re.compile(r"(single_transformer_blocks|single_blocks|double_blocks)_\d")
_SD3_BLOCKS = re.compile(r"joint_blocks_\d")
_UNET = re.compile(r"(down_blocks|up_blocks|input_blocks|output_blocks)_\d|mid_block|middle_block")
_SECOND_TEXT_ENCODER = re.compile(r"text_encoder_2_|lora_te2_")
_SDXL_UNET = re.compile(r"transformer_blocks_[1-9]|add_embedding|label_emb")
_SD1_UNET = re.compile(
    r"down_blocks_0_attentions|up_blocks_3_attentions|input_blocks_[12]_1_|output_blocks_([6-9]|1[01])_1_"
)
# The LoRA "down" matrix of a cross-attention key projection: [rank, cross-attention width].
_CROSS_ATTENTION_DOWN = re.compile(
    r"attn2_(processor_)?to_k(_lora)?_(lora_a|lora_down|down|lora_linear_layer_down)_weight$"
)
_CROSS_ATTENTION_WIDTHS = {768: "sd1.5", 1024: "sd2", 2048: "sdxl"}
_BLOCK = re.compile(r"transformer_blocks_(\d+)_(.*)")
_QUERY_DOWN = re.compile(r"^attn_to_q_(lora_a|lora_down)_weight$")
_TRANSFORMER_WIDTHS = {1536: "sd3", 2432: "sd3", 3072: "flux"}
_CONTEXT_OUTPUT = ("ff_context", "attn_to_add_out")


@dataclass(frozen=True)
class LoraFile:
    """A LoRA on this machine: its name in requests, its file and the family it fits."""

    name: str
    path: Path
    family: str | None  # None: not recognised (see the module's doc)
    size_bytes: int


@dataclass(frozen=True)
class RequestLora:
    """A request's LoRA, found: its name, its local file and its scale."""

    name: str
    path: Path
    scale: float


def request_loras(services: Services, model: ImageModel, loras: list[Lora]) -> list[RequestLora]:
    """A job's LoRAs as local files (a Hugging Face one downloaded now), each checked again
    for the model's family (a download's for the first time). The job fails otherwise."""
    found = []
    for lora in loras:
        path = lora_path(services, lora.name)
        family = lora_family(path)
        if family != model.family:
            raise JobFailure(
                f"LoRA {lora.name!r} is for {family or 'no model family this server knows'}, "
                f"not for {model.name} ({model.family})",
                type="invalid_input",
            )
        found.append(RequestLora(lora.name, path, lora.scale))
    return found


def repo_of(name: str) -> tuple[str, str | None] | None:
    """(repo id, file in it or None) for a Hugging Face name; None for a local name."""
    match = _REPO.match(name) if "/" in name else None
    if match is None or ".." in name:
        return None
    return match["repo"], match["file"]


def local_loras(folder: Path) -> dict[str, Path]:
    """The LoRA files of a folder (not its subfolders) by name: file name less .safetensors."""
    if not folder.is_dir():
        return {}
    return {
        path.name.removesuffix(SUFFIX): path
        for path in sorted(folder.iterdir())
        if path.name.endswith(SUFFIX) and not path.name.startswith(".") and path.is_file()
    }


def describe_loras(services: Services) -> list[LoraFile]:
    """Every LoRA in DD_LORAS_DIR, with its family (GET /api/loras)."""
    return [
        LoraFile(name, path, lora_family(path), path.stat().st_size)
        for name, path in local_loras(loras_dir(services.settings)).items()
    ]


def lora_family(path: Path) -> str | None:
    """The family a LoRA file is for (None: not recognised, or gone), read from its header."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _family_of_file(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _family_of_file(path: str, mtime_ns: int, size: int) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as file:
            metadata = file.metadata() or {}
            shapes = {key: file.get_slice(key).get_shape() for key in file.keys()}
    except Exception:  # not a safetensors file, or a broken one: nothing to recognise
        return None
    return family_of(shapes, metadata)


def family_of(shapes: dict[str, list[int]], metadata: dict[str, str]) -> str | None:
    """The family of a LoRA from its keys (with their shapes) and metadata: see the module's
    doc for what is recognised."""
    for field in ("modelspec.architecture", "ss_base_model_version"):
        value = metadata.get(field, "").lower()
        for prefix, family in _METADATA_ARCHITECTURES:
            if value.startswith(prefix):
                return family
    keys = {key.lower().replace(".", "_"): shape for key, shape in shapes.items()}
    if any(_FLUX_BLOCKS.search(key) for key in keys):
        return "flux"
    if any(_SD3_BLOCKS.search(key) for key in keys):
        return "sd3"
    unet = {key: shape for key, shape in keys.items() if _UNET.search(key)}
    if unet:
        return _unet_family(keys, unet)
    blocks = {key: shape for key, shape in keys.items() if _BLOCK.search(key)}
    if blocks:
        return _transformer_family(keys, blocks)
    return None


def _unet_family(keys: dict[str, list[int]], unet: dict[str, list[int]]) -> str | None:
    if any(_SECOND_TEXT_ENCODER.search(key) for key in keys):
        return "sdxl"
    for key, shape in unet.items():
        if _CROSS_ATTENTION_DOWN.search(key) and len(shape) == 2:
            if shape[1] in _CROSS_ATTENTION_WIDTHS:
                return _CROSS_ATTENTION_WIDTHS[shape[1]]
    if any(_SDXL_UNET.search(key) for key in unet):
        return "sdxl"
    if any(_SD1_UNET.search(key) for key in unet):
        return "sd1.5"
    return None


def _transformer_family(keys: dict[str, list[int]], blocks: dict[str, list[int]]) -> str | None:
    if any("pos_embed" in key for key in keys):
        return "sd3"
    if any("x_embedder" in key or "guidance_embedder" in key for key in keys):
        return "flux"
    modules: dict[int, list[str]] = {}
    for key, shape in blocks.items():
        match = _BLOCK.search(key)
        assert match is not None  # blocks are the keys it matches
        index, module = int(match[1]), match[2]
        if module.startswith("attn2_"):
            return "sd3"  # dual attention: SD3.5
        if _QUERY_DOWN.match(module) and len(shape) == 2 and shape[1] in _TRANSFORMER_WIDTHS:
            return _TRANSFORMER_WIDTHS[shape[1]]
        modules.setdefault(index, []).append(module)

    def has_context_output(index: int) -> bool:
        return any(module.startswith(_CONTEXT_OUTPUT) for module in modules[index])

    last = max(modules)
    if not has_context_output(last) and any(has_context_output(i) for i in modules):
        return "sd3"  # SD3's last block is context_pre_only: no context output layers
    return None


def lora_path(services: Services, name: str) -> Path:
    """A request's LoRA as a local file: DD_LORAS_DIR's, or a Hugging Face repo's (from the
    cache, or downloaded). The job fails when it can't be had."""
    hub = repo_of(name)
    if hub is None:
        path = local_loras(loras_dir(services.settings)).get(name)
        if path is None:
            raise JobFailure(
                f"LoRA {name!r} is no longer in {loras_dir(services.settings)}",
                type="model_unavailable",
            )
        return path
    cached = cached_repo_file(name)
    if cached is not None:
        return cached
    repo, file = hub
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, file or repo_weight_name(repo)))
    except Exception as exc:
        raise JobFailure(
            f"LoRA {name!r} could not be had from Hugging Face: {exc}", type="model_unavailable"
        ) from exc


def repo_weight_name(repo: str) -> str:
    """The LoRA file of a repo whose name gives none: diffusers' own, else its only
    .safetensors file (several: the name must say which, owner/repo/<file>)."""
    from huggingface_hub import list_repo_files

    files = [f for f in list_repo_files(repo) if f.endswith(SUFFIX)]
    if DEFAULT_WEIGHT_NAME in files or not files:
        return DEFAULT_WEIGHT_NAME
    if len(files) > 1:
        raise JobFailure(
            f"Hugging Face repo {repo} has several .safetensors files ({', '.join(files)}): "
            f"name one, as {repo}/<file>",
            type="invalid_input",
        )
    return files[0]


def cached_repo_file(name: str) -> Path | None:
    """A Hugging Face LoRA's file when it is in the local Hugging Face cache."""
    hub = repo_of(name)
    if hub is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, file = hub
    found = try_to_load_from_cache(repo, file or DEFAULT_WEIGHT_NAME)
    return Path(found) if isinstance(found, str) else None
