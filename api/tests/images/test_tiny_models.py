import hashlib
import inspect
import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)
from PIL import Image
from safetensors import safe_open
from transformers import AutoTokenizer, CLIPTokenizer, T5Tokenizer

from api.common.models import TINY_MARKER
from api.images.domain import IMAGES
from api.images.models.tiny import TINY_IMAGE_MODELS, build_tiny_image_models, tiny_models

PROMPT = "a photo of a cat"

PIPELINE_CLASSES = {
    "sd1.5": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "RealVisXL": "StableDiffusionXLPipeline",
    "Fluently-XL": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sd3.5": "StableDiffusion3Pipeline",
    "flux-schnell": "FluxPipeline",
}

IMAGE2IMAGE_CLASSES = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusion3Pipeline": "StableDiffusion3Img2ImgPipeline",
    "FluxPipeline": "FluxImg2ImgPipeline",
}

INPAINT_CLASSES = {
    "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLInpaintPipeline",
    "StableDiffusion3Pipeline": "StableDiffusion3InpaintPipeline",
    "FluxPipeline": "FluxInpaintPipeline",
}

LATENT_CHANNELS = {"sd3": 16, "sd3.5": 16, "flux-schnell": 16}


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


def _size_kwargs(pipe: DiffusionPipeline, width: int, height: int) -> dict[str, int]:
    """Image-to-image pipelines that take an explicit size (Flux) otherwise default to 1024."""
    parameters = inspect.signature(pipe.__call__).parameters
    return {"width": width, "height": height} if "width" in parameters else {}


def _load(folder: Path, name: str) -> DiffusionPipeline:
    auto = AutoPipelineForImage2Image if name == "sdxl-refiner" else AutoPipelineForText2Image
    return auto.from_pretrained(folder / name)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-models")
    assert build_tiny_image_models(folder) == list(tiny_models())
    return folder


@pytest.fixture(scope="session")
def init_image() -> Image.Image:
    gradient = Image.linear_gradient("L").resize((64, 64))
    return Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(180)))


@pytest.fixture(scope="session")
def mask_image() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def test_layout_and_size(models_dir: Path) -> None:
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(tiny_models())
    for name, repo in TINY_IMAGE_MODELS.items():
        folder = models_dir / name
        model_index = json.loads((folder / "model_index.json").read_text())
        assert model_index["_class_name"] == PIPELINE_CLASSES[name]
        assert json.loads((folder / TINY_MARKER).read_text()) == {
            "built_by": "deferred-diffusion tiny-models",
            "imitates": repo,
            "model": name,
            "tiny": True,
        }
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 5_000_000, f"{name} is {size} bytes"
        weights = list(folder.rglob("*.safetensors"))
        assert weights and not list(folder.rglob("*.bin"))
        for path in weights:
            with safe_open(path, "pt") as tensors:
                assert all(tensors.get_slice(k).get_dtype() == "F32" for k in tensors.keys())


def test_build_is_deterministic_and_replaces(models_dir: Path, tmp_path: Path) -> None:
    stale = tmp_path / "sd1.5" / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("left over from an earlier build")
    build_tiny_image_models(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(tiny_models())
    assert _file_hashes(tmp_path) == _file_hashes(models_dir)


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_tiny_image_models(tmp_path, ["sd9"])


@pytest.mark.parametrize("name", list(TINY_IMAGE_MODELS))
def test_tokenizers_match_text_encoders(models_dir: Path, name: str) -> None:
    pipe = _load(models_dir, name)
    pairs = [
        (pipe.components[f"tokenizer{suffix}"], pipe.components[f"text_encoder{suffix}"], suffix)
        for suffix in ("", "_2", "_3")
        if pipe.components.get(f"tokenizer{suffix}") is not None
    ]
    assert pairs
    for tokenizer, text_encoder, suffix in pairs:
        reloaded = AutoTokenizer.from_pretrained(models_dir / name / f"tokenizer{suffix}")
        assert type(reloaded) is type(tokenizer)
        assert len(tokenizer) == text_encoder.config.vocab_size
        ids = tokenizer(PROMPT).input_ids
        assert reloaded(PROMPT).input_ids == ids
        assert ids[-1] == tokenizer.eos_token_id == text_encoder.config.eos_token_id
        assert tokenizer.pad_token_id == text_encoder.config.pad_token_id
        if isinstance(tokenizer, CLIPTokenizer):
            assert tokenizer.model_max_length == text_encoder.config.max_position_embeddings == 77
            assert tokenizer.convert_ids_to_tokens(ids) == [
                "<|startoftext|>",
                *(f"{word}</w>" for word in PROMPT.split()),
                "<|endoftext|>",
            ]
        else:
            assert isinstance(tokenizer, T5Tokenizer)
            assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
                0,
                1,
                2,
            )
            assert tokenizer.convert_ids_to_tokens(ids) == [f"▁{w}" for w in PROMPT.split()] + [
                "</s>"
            ]


@pytest.mark.parametrize("name", list(TINY_IMAGE_MODELS))
def test_generates(
    models_dir: Path, name: str, init_image: Image.Image, mask_image: Image.Image
) -> None:
    pipe = _load(models_dir, name)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == PIPELINE_CLASSES[name]
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.latent_channels == LATENT_CHANNELS.get(name, 4)

    if name == "sdxl-refiner":
        image = pipe(
            PROMPT, image=init_image, strength=0.5, num_inference_steps=2, generator=_generator()
        ).images[0]
        assert image.size == (64, 64)
        wide = pipe(
            PROMPT,
            image=init_image.resize((80, 48)),
            strength=0.5,
            num_inference_steps=2,
            generator=_generator(),
        ).images[0]
    else:
        image = pipe(
            PROMPT, width=64, height=64, num_inference_steps=2, generator=_generator()
        ).images[0]
        assert image.size == (64, 64)
        wide = pipe(
            PROMPT, width=80, height=48, num_inference_steps=2, generator=_generator()
        ).images[0]
    assert wide.size == (80, 48)

    image2image = AutoPipelineForImage2Image.from_pipe(pipe)
    assert type(image2image).__name__ == IMAGE2IMAGE_CLASSES[type(pipe).__name__]
    image = image2image(
        PROMPT,
        image=init_image,
        strength=0.5,
        num_inference_steps=2,
        generator=_generator(),
        **_size_kwargs(image2image, 64, 64),
    ).images[0]
    assert image.size == (64, 64)

    inpaint = AutoPipelineForInpainting.from_pipe(pipe)
    assert type(inpaint).__name__ == INPAINT_CLASSES[type(pipe).__name__]
    image = inpaint(
        PROMPT,
        image=init_image,
        mask_image=mask_image,
        width=64,
        height=64,
        num_inference_steps=2,
        generator=_generator(),
    ).images[0]
    assert image.size == (64, 64)


def test_task_models_layout_and_size(models_dir: Path) -> None:
    from api.images.models import tiny_tasks

    for name, model in tiny_tasks.TINY_MODELS.items():
        folder = models_dir / name
        assert json.loads((folder / TINY_MARKER).read_text())["imitates"] == model.imitates
        assert (folder / "model_index.json").is_file() or (folder / "config.json").is_file()
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size < 5_000_000, f"{name} is {size} bytes"
        weights = list(folder.rglob("*.safetensors"))
        assert weights and not list(folder.rglob("*.bin"))
        for path in weights:
            with safe_open(path, "pt") as tensors:
                assert all(tensors.get_slice(k).get_dtype() == "F32" for k in tensors.keys())


def test_the_domain_names_every_tiny_model_it_reads():
    """tiny-models --only checks names against the domain's list, without importing the
    builders: the list must be exactly what the builders write."""
    assert set(IMAGES.tiny_model_names) == set(tiny_models())
