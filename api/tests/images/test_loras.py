"""LoRAs per request, through HTTP on the tiny models and the tiny LoRAs tiny-models writes:
a LoRA changes the output and leaves no trace afterwards, two stack, scale 0 is no LoRA, a
LoRA job re-runs exactly; wrong family, unknown names and models without LoRAs are refused at
submit; GET /api/loras lists them with their families, read from their keys (diffusers,
kohya/A1111, BFL and SAI formats)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from api.common.models import CacheKey
from api.images.loras import lora_family
from api.tests.conftest import (
    app_state,
    assert_rejected,
    image_request,
    png_metadata,
    run_job,
    write_image,
)

# The tiny LoRA of each family (api/images/models/tiny_loras.py) and a model that takes it.
FAMILY_LORAS = [
    ("sd1.5", "tiny-sd15"),
    ("sdxl", "tiny-sdxl"),
    ("sd3", "tiny-sd3"),
    ("flux-schnell", "tiny-flux"),
]


def pixels(job: dict[str, Any]) -> np.ndarray:
    [image] = job["result"]["images"]
    with Image.open(image["path"]) as opened:
        return np.asarray(opened.convert("RGB"))


def generate(client: TestClient, workspace: Path, model: str, *loras: tuple[str, float]) -> dict:
    body = image_request(workspace, "text_to_image", model=model)
    return run_job(client, body | {"loras": [{"name": n, "scale": s} for n, s in loras]})


@pytest.mark.parametrize(("model", "lora"), FAMILY_LORAS)
def test_a_lora_changes_the_output_and_is_gone_afterwards(
    client: TestClient, workspace: Path, model: str, lora: str
):
    before = pixels(generate(client, workspace, model))
    with_lora = generate(client, workspace, model, (lora, 1.0))
    assert not np.array_equal(pixels(with_lora), before)
    assert with_lora["request"]["loras"] == [{"name": lora, "scale": 1.0}]
    metadata = png_metadata(Path(with_lora["result"]["images"][0]["path"]))
    assert metadata["loras"] == [{"name": lora, "scale": 1.0}]
    assert metadata["request"]["loras"] == [{"name": lora, "scale": 1.0}]
    # the same pipeline, switched back: exactly the pixels of a model that never had a LoRA
    assert np.array_equal(pixels(generate(client, workspace, model)), before)

    # the model was not loaded again: the resident one holds the LoRA as an adapter
    cache = app_state(client).services.model_cache("cpu")
    resident = cache.get(CacheKey(model), lambda: pytest.fail(f"{model} was unloaded"))
    assert len(resident.adapters) == 1


def test_scales_stacking_and_image_to_image(client: TestClient, workspace: Path):
    plain = pixels(generate(client, workspace, "sd1.5"))
    one = pixels(generate(client, workspace, "sd1.5", ("tiny-sd15", 1.0)))
    assert np.array_equal(pixels(generate(client, workspace, "sd1.5", ("tiny-sd15", 0))), plain)
    half = pixels(generate(client, workspace, "sd1.5", ("tiny-sd15", 0.5)))
    against = pixels(generate(client, workspace, "sd1.5", ("tiny-sd15", -1.0)))
    assert len({array.tobytes() for array in (plain, one, half, against)}) == 4

    # tiny-sd15-b adapts the text encoder too
    other = pixels(generate(client, workspace, "sd1.5", ("tiny-sd15-b", 1.0)))
    both = generate(client, workspace, "sd1.5", ("tiny-sd15", 1.0), ("tiny-sd15-b", 1.0))
    assert len({array.tobytes() for array in (plain, one, other, pixels(both))}) == 4
    # the order they are listed in doesn't matter
    swapped = generate(client, workspace, "sd1.5", ("tiny-sd15-b", 1.0), ("tiny-sd15", 1.0))
    assert np.allclose(pixels(swapped), pixels(both), atol=1)

    # image→image shares the model's components, LoRAs included
    body = image_request(workspace, "image_to_image", model="sd1.5")
    plain_i2i = pixels(run_job(client, body))
    lora_i2i = pixels(run_job(client, body | {"loras": [{"name": "tiny-sd15"}]}))
    assert not np.array_equal(plain_i2i, lora_i2i)
    assert np.array_equal(pixels(run_job(client, body)), plain_i2i)
    assert np.array_equal(pixels(generate(client, workspace, "sd1.5")), plain)


def test_with_a_controlnet_and_an_ip_adapter(client: TestClient, workspace: Path):
    """sdxl inpainting with a ControlNet and an IP-Adapter: the LoRA acts beside them, and
    taking it away again gives the pixels from before."""
    from api.tests.images.test_controlnets import control
    from api.tests.images.test_ip_adapters import adapter

    body = image_request(
        workspace,
        "inpainting",
        model="sdxl",
        controlnets=[control(workspace, "depth")],
        ip_adapters=[adapter(workspace)],
    )
    before = pixels(run_job(client, body))
    with_lora = run_job(client, body | {"loras": [{"name": "tiny-sdxl", "scale": 1.5}]})
    assert not np.array_equal(pixels(with_lora), before)
    assert np.array_equal(pixels(run_job(client, body)), before)


def test_a_lora_job_reruns_with_the_same_pixels(client: TestClient, workspace: Path):
    first = generate(client, workspace, "sd1.5", ("tiny-sd15", 0.8), ("tiny-sd15-b", -0.5))
    generate(client, workspace, "sd1.5")  # the LoRAs are off in between
    response = client.post(f"/api/jobs/{first['id']}/rerun?wait=120")
    assert response.status_code == 200, response.text
    again = response.json()
    assert again["status"] == "succeeded" and again["request"] == first["request"]
    assert np.array_equal(pixels(again), pixels(first))

    path = first["result"]["images"][0]["path"]
    response = client.post("/api/images/rerun?wait=120", json={"image_path": path})
    assert response.status_code == 200, response.text
    from_file = response.json()
    assert from_file["request"]["loras"] == first["request"]["loras"]
    assert np.array_equal(pixels(from_file), pixels(first))


def test_loras_are_listed_with_their_families(make_client):
    client = make_client(api_keys=["s3cret"])
    assert client.get("/api/loras").status_code == 401
    response = client.get("/api/loras", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    listed = {lora["name"]: lora for lora in response.json()}
    assert {name: lora["family"] for name, lora in listed.items()} == {
        "tiny-flux": "flux",
        "tiny-sd15": "sd1.5",
        "tiny-sd15-b": "sd1.5",
        "tiny-sd3": "sd3",
        "tiny-sdxl": "sdxl",
    }
    assert listed["tiny-sdxl"]["models"] == ["sdxl", "RealVisXL", "Fluently-XL"]
    assert listed["tiny-sd3"]["models"] == ["sd3", "sd3.5"]
    assert listed["tiny-sd15"]["path"].endswith("loras/tiny-sd15.safetensors")
    assert listed["tiny-sd15"]["size_bytes"] == Path(listed["tiny-sd15"]["path"]).stat().st_size


OK = {"model": "sd1.5", "prompt": "x", "num_inference_steps": 2, "max_width": 64, "max_height": 64}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"loras": [{"name": "tiny-sdxl"}]}, "loras", "'tiny-sdxl' is for sdxl"),
        (
            {"model": "RealVisXL", "loras": [{"name": "tiny-sd15"}]},
            "loras",
            "loras.0: LoRA 'tiny-sd15' is for sd1.5 (sd1.5), not for RealVisXL (sdxl)",
        ),
        (
            {"model": "sd3", "loras": [{"name": "tiny-sd3"}, {"name": "tiny-flux"}]},
            "loras",
            "loras.1: LoRA 'tiny-flux' is for flux",
        ),
        (
            {"loras": [{"name": "tiny-sd16"}]},
            "loras.0.name",
            "no LoRA 'tiny-sd16' in",
        ),
        (
            {"loras": [{"name": "tiny-sd15"}, {"name": "tiny-sd15", "scale": 0.5}]},
            "loras.1.name",
            "listed twice",
        ),
        (
            {"loras": [{"name": "someone/film-grain-lora"}]},
            "loras.0.name",
            "downloads are off",
        ),
        ({"loras": [{"name": "tiny-sd15", "scale": 5}]}, "loras.0.scale", "less than or equal"),
        ({"loras": [{"name": "tiny-sd15", "weight": 1}]}, "loras.0.weight", "Extra inputs"),
        ({"loras": [{"name": f"tiny-{i}"} for i in range(9)]}, "loras", "at most 8"),
        (
            {
                "model": "sdxl-refiner",
                "input_image_path": "PLATE",
                "loras": [{"name": "tiny-sdxl"}],
            },
            "loras",
            "model sdxl-refiner takes no LoRAs",
        ),
        (
            {"model": "depth-anything", "input_image_path": "PLATE", "loras": []},
            "loras",
            "does not apply to depth-anything",
        ),
    ],
)
def test_refused_at_submit(
    client: TestClient, workspace: Path, tmp_path: Path, changes: dict, field: str, message: str
):
    body = OK | changes
    if body.get("input_image_path") == "PLATE":
        body["input_image_path"] = str(write_image(workspace / "plate.png"))
        body = {k: v for k, v in body.items() if k not in ("num_inference_steps", "prompt")}
        if body["model"] == "depth-anything":
            body = {k: v for k, v in body.items() if k in ("model", "input_image_path", "loras")}
    error = assert_rejected(client, tmp_path, body, 422, field, message)
    if field == "loras.0.name" and "tiny-sd16" in str(body):
        assert "did you mean 'tiny-sd15'" in error["message"]


def test_external_model_takes_no_loras(make_client, tmp_path: Path):
    client = make_client(openai_api_key="sk-test")
    body = {"model": "gpt-image-1", "prompt": "x", "loras": [{"name": "tiny-sd15"}]}
    assert_rejected(client, tmp_path, body, 422, "loras", "gpt-image-1 takes no LoRAs")


# --- the family, from the keys -----------------------------------------------------------------


def lora_file(folder: Path, name: str, shapes: dict[str, tuple[int, int]], **metadata: str) -> Path:
    """A LoRA-shaped safetensors file: these keys with zero tensors of these shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, path, metadata)
    return path


KOHYA_CROSS_ATTENTION = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
KOHYA_SD15 = {
    f"{KOHYA_CROSS_ATTENTION}.lora_down.weight": (4, 768),
    f"{KOHYA_CROSS_ATTENTION}.lora_up.weight": (320, 4),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 768),
}
KOHYA_SDXL = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight": (4, 640),
    "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 768),
    "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 1280),
}
CASES: list[tuple[str, dict[str, tuple[int, int]], dict[str, str], str | None]] = [
    ("kohya sd1.5", KOHYA_SD15, {}, "sd1.5"),
    ("kohya sdxl", KOHYA_SDXL, {}, "sdxl"),
    (
        "kohya sdxl, unet only, LDM names",
        {"lora_unet_output_blocks_2_1_transformer_blocks_5_attn2_to_q.lora_down.weight": (4, 1280)},
        {},
        "sdxl",
    ),
    (
        "kohya sd1.5, LDM names",
        {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": (4, 320)},
        {},
        "sd1.5",
    ),
    (
        "diffusers sdxl, cross-attention width",
        {"unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)},
        {},
        "sdxl",
    ),
    (
        "old diffusers sd1.5",
        {
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora.down.weight": (
                4,
                768,
            )
        },
        {},
        "sd1.5",
    ),
    (
        "sd2 (1024-wide cross-attention)",
        {f"{KOHYA_CROSS_ATTENTION}.lora_down.weight": (4, 1024)},
        {},
        "sd2",
    ),
    (
        "kohya flux",
        {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": (4, 3072)},
        {},
        "flux",
    ),
    (
        "BFL flux",
        {"diffusion_model.single_blocks.0.linear1.lora_A.weight": (4, 3072)},
        {},
        "flux",
    ),
    (
        "diffusers flux, double blocks only",
        {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)},
        {},
        "flux",
    ),
    (
        "diffusers sd3",
        {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 1536)},
        {},
        "sd3",
    ),
    (
        "diffusers sd3.5 (dual attention)",
        {"transformer.transformer_blocks.0.attn2.to_q.lora_A.weight": (4, 64)},
        {},
        "sd3",
    ),
    (
        "SAI sd3",
        {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 1536)},
        {},
        "sd3",
    ),
    (
        "model spec metadata",
        {"some.unknown.key.lora_A.weight": (4, 8)},
        {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
        "sdxl",
    ),
    (
        "kohya metadata",
        {"some.unknown.key.lora_A.weight": (4, 8)},
        {"ss_base_model_version": "flux1"},
        "flux",
    ),
    ("unrecognised", {"some.unknown.key.lora_A.weight": (4, 8)}, {}, None),
]


@pytest.mark.parametrize(("case", "shapes", "metadata", "family"), CASES, ids=[c[0] for c in CASES])
def test_family_from_the_keys(
    tmp_path: Path, case: str, shapes: dict, metadata: dict, family: str | None
):
    assert lora_family(lora_file(tmp_path, "lora", shapes, **metadata)) == family


def test_a_file_that_is_no_safetensors_has_no_family(tmp_path: Path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    assert lora_family(path) is None


def test_loras_dir_setting_and_unfit_loras(
    make_client, tiny_models: Path, workspace: Path, tmp_path: Path
):
    """DD_LORAS_DIR: another folder; a LoRA for a family no model here has (sd2), or one
    whose family can't be told, is refused naming why; a file changed since it was loaded is
    loaded again."""
    folder = tmp_path / "my-loras"
    shutil.copytree(tiny_models / "loras", folder)
    lora_file(
        folder,
        "sd2-style",
        {f"{KOHYA_CROSS_ATTENTION}.lora_down.weight": (4, 1024)},
    )
    lora_file(folder, "mystery", {"some.unknown.key.lora_A.weight": (4, 8)})
    client = make_client(loras_dir=folder)
    listed = {lora["name"]: lora["family"] for lora in client.get("/api/loras").json()}
    assert listed["sd2-style"] == "sd2" and listed["mystery"] is None
    assert listed["tiny-sd15"] == "sd1.5"
    assert_rejected(
        client,
        tmp_path,
        OK | {"loras": [{"name": "sd2-style"}]},
        422,
        "loras",
        "is for sd2 (no model on this server)",
    )
    assert_rejected(
        client, tmp_path, OK | {"loras": [{"name": "mystery"}]}, 422, "loras", "can't tell"
    )

    first = pixels(generate(client, workspace, "sd1.5", ("tiny-sd15", 1.0)))
    shutil.copy(folder / "tiny-sd15-b.safetensors", folder / "tiny-sd15.safetensors")
    replaced = pixels(generate(client, workspace, "sd1.5", ("tiny-sd15", 1.0)))
    assert not np.array_equal(first, replaced)
    assert np.array_equal(
        replaced, pixels(generate(client, workspace, "sd1.5", ("tiny-sd15-b", 1.0)))
    )
