"""The prompt cache (DD_PROMPT_CACHE): a repeated prompt skips the text encoders and gives
the same pixels as a server without the cache, end to end through HTTP on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.common.models import CacheKey
from api.tests.conftest import app_state, image_request, run_job


def loaded(client, model: str):
    """The model's LoadedModel on the CPU (it must be loaded)."""
    cache = app_state(client).services.model_cache("cpu")
    return cache.get(CacheKey(model), lambda: pytest.fail(f"{model} is not loaded"))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("model", ["sdxl", "flux-schnell"])
def test_a_repeated_prompt_is_served_from_the_cache_with_the_same_pixels(
    make_client, workspace: Path, model: str
):
    cached, plain = make_client(), make_client(prompt_cache=0)
    outputs: dict[str, list[np.ndarray]] = {}
    for name, client in (("cached", cached), ("plain", plain)):
        for index, seed in enumerate((1, 2, 1)):
            body = image_request(workspace, "text_to_image", model=model, seed=seed)
            out = workspace / f"{name}-{index}.png"
            run_job(client, body | {"output_image_path": str(out)})
            outputs.setdefault(name, []).append(pixels(out))
    for a, b in zip(outputs["cached"], outputs["plain"], strict=True):
        assert np.array_equal(a, b)  # the cache changes no pixel
    assert np.array_equal(outputs["cached"][0], outputs["cached"][2])
    assert not np.array_equal(outputs["cached"][0], outputs["cached"][1])  # seeds still count
    assert loaded(cached, model).prompts.hits == 2  # the second and third request
    assert loaded(plain, model).prompts.hits == 0


def test_another_prompt_or_negative_prompt_is_encoded_anew(client, workspace: Path):
    first = image_request(workspace, "text_to_image", model="sdxl")
    changes = [{}, {"negative_prompt": "fog"}, {"prompt": "a harbour at night"}, {}]
    for index, change in enumerate(changes):
        run_job(client, first | change | {"output_image_path": str(workspace / f"{index}.png")})
    assert loaded(client, "sdxl").prompts.hits == 1  # only the last one
    assert np.array_equal(pixels(workspace / "0.png"), pixels(workspace / "3.png"))
    assert not np.array_equal(pixels(workspace / "0.png"), pixels(workspace / "1.png"))


def test_a_lora_on_the_text_encoder_gets_its_own_cache_entries(client, workspace: Path):
    """tiny-sd15-b adapts sd1.5's text encoder: the same prompt with it, without it and
    again with it gives its own text-encoder output each, and the cached ones the same
    pixels as the first time."""
    body = image_request(workspace, "text_to_image", model="sd1.5")
    lora = {"loras": [{"name": "tiny-sd15-b", "scale": 1.0}]}
    for index, extra in enumerate([{}, lora, {}, lora]):
        run_job(client, body | extra | {"output_image_path": str(workspace / f"{index}.png")})
    assert loaded(client, "sd1.5").prompts.hits == 2
    assert np.array_equal(pixels(workspace / "0.png"), pixels(workspace / "2.png"))
    assert np.array_equal(pixels(workspace / "1.png"), pixels(workspace / "3.png"))
    assert not np.array_equal(pixels(workspace / "0.png"), pixels(workspace / "1.png"))
