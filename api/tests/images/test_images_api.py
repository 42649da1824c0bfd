"""Every family × mode end to end through HTTP, on the tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from fastapi.testclient import TestClient
from PIL import Image

from api.images.registry import IMAGE_MODELS, TASKS, Mode
from api.tests.conftest import decode, image_request, png_metadata, run_job, write_image

CASES = [  # external models (gpt-image-1) run against a fake provider: test_gpt_image.py
    (name, mode)
    for name, model in IMAGE_MODELS.items()
    if not model.external
    for mode in Mode
    if mode in model.modes and mode not in TASKS  # tasks: test_upscaler/_depth/_segmentation
]


def request_for(mode: Mode, workspace: Path, **extra) -> dict:
    return image_request(workspace, mode, (96, 64), negative_prompt="blurry") | extra


@pytest.mark.parametrize(("model", "mode"), CASES, ids=[f"{m}-{mode}" for m, mode in CASES])
def test_every_family_and_mode(client: TestClient, workspace: Path, model: str, mode: Mode):
    out = workspace / "renders" / f"{model}.png"
    job = run_job(client, request_for(mode, workspace, model=model, output_image_path=str(out)))

    result = job["result"]
    assert result["mode"] == mode
    assert result["seed"] == 7
    assert result["tiny_weights"] is True
    [image] = result["images"]
    # Text→image: the bounds. With a 96x64 plate: its 3:2 aspect fitted into 64x64 → 64x32
    # (rounded to a multiple of 16).
    expected = (64, 64) if mode == Mode.text_to_image else (64, 32)
    assert (image["width"], image["height"]) == expected
    assert image["path"] == str(out)
    with Image.open(out) as written:
        assert written.size == expected
    meta = png_metadata(out)
    assert meta["model"] == model and meta["mode"] == mode and meta["seed"] == 7
    assert meta["prompt"] == "a lighthouse at dusk"
    assert meta["num_inference_steps"] == 2 and meta["tiny_weights"] is True
    assert meta["job_id"] == job["id"]
    take = Path(image["take_path"])
    assert take.parent == out.parent / "tmp" and take.name.startswith(f"{model}_")
    assert take.read_bytes() == out.read_bytes()
    served = client.get(image["url"])
    assert served.status_code == 200
    assert served.content == out.read_bytes()
    assert job["request"]["guidance_scale"] == IMAGE_MODELS[model].guidance_scale


def test_same_request_gives_same_pixels(client: TestClient, workspace: Path):
    body = request_for(Mode.image_to_image, workspace, model="sd1.5")
    first, second = run_job(client, body), run_job(client, body)
    a = client.get(first["result"]["images"][0]["url"]).content
    b = client.get(second["result"]["images"][0]["url"]).content
    assert np.array_equal(np.asarray(decode(a)), np.asarray(decode(b)))
    other = run_job(client, body | {"seed": 8})
    c = client.get(other["result"]["images"][0]["url"]).content
    assert not np.array_equal(np.asarray(decode(a)), np.asarray(decode(c)))


@pytest.mark.parametrize("model", ["sd1.5", "sdxl", "sd3", "flux-schnell"])
def test_output_equals_a_direct_diffusers_call(
    client: TestClient, tiny_models: Path, workspace: Path, model: str
):
    body = request_for(Mode.text_to_image, workspace, model=model, guidance_scale=3.0)
    job = run_job(client, body)
    served = decode(client.get(job["result"]["images"][0]["url"]).content)

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_models / model)
    arguments = dict(
        prompt=body["prompt"],
        num_inference_steps=2,
        guidance_scale=3.0,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(7),
    )
    if model != "flux-schnell":
        arguments["negative_prompt"] = body["negative_prompt"]
    direct = pipe(**arguments).images[0]
    assert np.array_equal(np.asarray(served), np.asarray(direct))


def test_inpainting_equals_a_direct_call_and_keeps_unmasked_pixels_with_crop(
    client: TestClient, tiny_models: Path, workspace: Path
):
    body = request_for(Mode.inpainting, workspace, model="sd1.5", max_width=96, max_height=64)
    job = run_job(client, body)
    served = decode(client.get(job["result"]["images"][0]["url"]).content)

    t2i = AutoPipelineForText2Image.from_pretrained(tiny_models / "sd1.5")
    pipe = AutoPipelineForInpainting.from_pipe(t2i)
    plate = Image.open(body["input_image_path"]).convert("RGB")
    mask = Image.open(body["input_mask_path"]).convert("L")
    direct = pipe(
        prompt=body["prompt"],
        negative_prompt=body["negative_prompt"],
        image=plate,
        mask_image=mask,
        strength=0.75,
        num_inference_steps=2,
        guidance_scale=7.5,
        width=96,
        height=64,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]
    assert np.array_equal(np.asarray(served), np.asarray(direct))

    cropped = run_job(client, body | {"inpainting_full_image": False})
    out = np.asarray(decode(client.get(cropped["result"]["images"][0]["url"]).content))
    assert out.shape == (64, 96, 3)
    assert not np.array_equal(out, np.asarray(served))


def test_image_to_image_direct_call(client: TestClient, tiny_models: Path, workspace: Path):
    body = request_for(Mode.image_to_image, workspace, model="sdxl-refiner")
    job = run_job(client, body)
    served = decode(client.get(job["result"]["images"][0]["url"]).content)
    pipe = AutoPipelineForImage2Image.from_pretrained(tiny_models / "sdxl-refiner")
    plate = (
        Image.open(body["input_image_path"])
        .convert("RGB")
        .resize((64, 32), Image.Resampling.LANCZOS)
    )
    direct = pipe(
        prompt=body["prompt"],
        negative_prompt=body["negative_prompt"],
        image=plate,
        strength=0.75,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]
    assert np.array_equal(np.asarray(served), np.asarray(direct))


def test_default_output_goes_to_the_data_dir(client: TestClient, workspace: Path, tmp_path):
    job = run_job(
        client,
        request_for(
            Mode.text_to_image, workspace, model="sd1.5", seed=None, max_width=48, max_height=80
        ),
    )
    [image] = job["result"]["images"]
    path = Path(image["path"])
    assert path.is_relative_to(tmp_path / "data" / "outputs" / job["id"])
    assert (image["width"], image["height"]) == (48, 80)
    assert image["take_path"] is None
    seed = job["result"]["seed"]
    assert job["request"]["seed"] == seed and png_metadata(path)["seed"] == seed
    assert client.get(image["url"]).content == path.read_bytes()


def test_data_url_input(client: TestClient, workspace: Path):
    import base64

    plate = write_image(workspace / "plate.png", (64, 64))
    url = "data:image/png;base64," + base64.b64encode(plate.read_bytes()).decode()
    job = run_job(
        client,
        {
            "model": "sd1.5",
            "prompt": "x",
            "num_inference_steps": 2,
            "max_width": 64,
            "max_height": 64,
            "input_image_path": url,
        },
    )
    assert job["result"]["mode"] == "image_to_image"
    assert Path(job["request"]["input_image_path"]).is_file()


def test_upload_then_use_as_input(client: TestClient, workspace: Path):
    plate = write_image(workspace / "plate.png", (64, 64))
    with plate.open("rb") as handle:
        uploaded = client.post("/api/files", files={"file": ("plate.png", handle, "image/png")})
    assert uploaded.status_code == 201, uploaded.text
    path = uploaded.json()["path"]
    assert Path(path).read_bytes() == plate.read_bytes()
    job = run_job(
        client,
        {
            "model": "sd1.5",
            "num_inference_steps": 2,
            "max_width": 64,
            "max_height": 64,
            "input_image_path": path,
        },
    )
    assert job["result"]["mode"] == "image_to_image"


def write_exr(path: Path, pixels: np.ndarray) -> Path:
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    name = "RGB" if pixels.ndim == 3 else "Y"
    OpenEXR.File(header, {name: pixels.astype(np.float32)}).write(str(path))
    return path


def test_exr_plate_and_mask(client: TestClient, workspace: Path):
    """Scene-linear EXR inputs: the plate goes through the sRGB curve, the mask is read as is."""
    rng = np.random.default_rng(0)
    linear = rng.uniform(0, 1.5, (48, 64, 3))  # over-range values are clipped
    plate = write_exr(workspace / "plate.exr", linear)
    mask_values = np.zeros((48, 64))
    mask_values[12:36, 16:48] = 1.0
    mask = write_exr(workspace / "mask.exr", mask_values)
    job = run_job(
        client,
        {
            "model": "sd1.5",
            "prompt": "x",
            "num_inference_steps": 2,
            "strength": 0.75,
            "max_width": 64,
            "max_height": 64,
            "input_image_path": str(plate),
            "input_mask_path": str(mask),
        },
    )
    assert job["result"]["mode"] == "inpainting"
    assert (job["result"]["images"][0]["width"], job["result"]["images"][0]["height"]) == (64, 48)

    from api.common.media import open_image

    decoded = np.asarray(open_image(plate, "input_image_path"), dtype=np.float64) / 255
    clipped = linear.clip(0, 1)
    expected = np.where(clipped <= 0.0031308, 12.92 * clipped, 1.055 * clipped ** (1 / 2.4) - 0.055)
    assert np.abs(decoded - expected).max() <= 0.5 / 255 + 1e-6

    uploaded = client.post("/api/files", files={"file": ("p.exr", plate.read_bytes())})
    assert uploaded.status_code == 201, uploaded.text
    broken = client.post("/api/files", files={"file": ("p.exr", b"not an exr")})
    assert broken.status_code == 422 and broken.json()["error"]["field"] == "file"


def test_half_precision_files_are_used_where_present(tiny_models: Path, tmp_path: Path):
    from diffusers import DiffusionPipeline

    from api.common.models import Weights
    from api.images.models.diffusion import has_variant

    sd15 = IMAGE_MODELS["sd1.5"]
    assert sd15.variant == "fp16"
    assert not has_variant(sd15, Weights("models_dir", str(tiny_models / "sd1.5")))
    DiffusionPipeline.from_pretrained(tiny_models / "sd1.5").save_pretrained(
        tmp_path / "sd1.5", variant="fp16"
    )
    assert has_variant(sd15, Weights("models_dir", str(tmp_path / "sd1.5")))
    assert has_variant(sd15, Weights("download", sd15.repo))
    assert not has_variant(IMAGE_MODELS["sd3"], Weights("download", "x"))
