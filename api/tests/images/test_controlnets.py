"""ControlNets through HTTP on the tiny models: every family × mode diffusers has, several at
once, preprocessing, equality with a direct diffusers call, and every rejection."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    StableDiffusionControlNetPipeline,
)
from fastapi.testclient import TestClient
from PIL import Image

from api.images.registry import CONTROLNET_MODES, CONTROLNETS, ControlNetKind, Mode
from api.tests.conftest import (
    assert_rejected,
    decode,
    image_request,
    png_metadata,
    run_job,
    write_image,
)

FAMILY_MODELS = {"sd1.5": "sd1.5", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux-schnell"}


def body_for(workspace: Path, model: str, mode: Mode = Mode.text_to_image, **extra) -> dict:
    return image_request(workspace, mode, model=model, **extra)


def control(workspace: Path, kind: str = "depth", seed: int = 3, **extra) -> dict:
    """A control image (80x80: the server resizes it to the 64x64 output)."""
    path = write_image(workspace / f"control_{kind}_{seed}.png", (80, 80), seed=seed)
    return {"model": kind, "image_path": str(path)} | extra


def pixels(client: TestClient, job: dict) -> np.ndarray:
    return np.asarray(decode(client.get(job["result"]["images"][0]["url"]).content))


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference, in 8-bit levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# A different control image changes the tiny models' output by about half a level on average
# (a ControlNet itself, against none, by about ten); outputs are deterministic, so any clear
# non-zero difference is the control image's doing.
MEASURABLE = 0.2


CASES = [
    (family, mode, kind)
    for family, modes in CONTROLNET_MODES.items()
    for mode, kind in zip(
        sorted(modes),
        [kind for f, kind in CONTROLNETS if f == family] * 2,
        strict=False,
    )
]


@pytest.mark.parametrize(
    ("family", "mode", "kind"), CASES, ids=[f"{f}-{m}-{k}" for f, m, k in CASES]
)
def test_every_family_and_mode(
    client: TestClient, workspace: Path, family: str, mode: Mode, kind: ControlNetKind
):
    model = FAMILY_MODELS[family]
    out = workspace / "renders" / f"{family}.png"
    cn = control(workspace, kind, conditioning_scale=0.8)
    job = run_job(
        client,
        body_for(workspace, model, mode, controlnets=[cn], output_image_path=str(out)),
    )
    assert job["result"]["mode"] == mode and job["result"]["tiny_weights"] is True
    [image] = job["result"]["images"]
    assert (image["width"], image["height"]) == (64, 64)
    name, repo = CONTROLNETS[family, kind]
    assert png_metadata(out)["controlnets"] == [
        {
            "model": kind,
            "image_path": cn["image_path"],
            "conditioning_scale": 0.8,
            "preprocess": False,
            "repo": repo,
        }
    ]
    assert job["request"]["controlnets"][0]["model"] == kind


def test_the_support_table_matches_diffusers():
    """A ControlNet pipeline exists for every (family, mode) the registry allows; SD3 has none
    for image→image, and its inpainting one is for inpainting ControlNets (control_mask)."""
    import inspect

    auto = {
        Mode.text_to_image: AutoPipelineForText2Image,
        Mode.image_to_image: AutoPipelineForImage2Image,
        Mode.inpainting: AutoPipelineForInpainting,
    }
    base = {
        "sd1.5": "StableDiffusionPipeline",
        "sdxl": "StableDiffusionXLPipeline",
        "sd3": "StableDiffusion3Pipeline",
        "flux": "FluxPipeline",
    }
    from diffusers.pipelines.auto_pipeline import (
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        AUTO_INPAINT_PIPELINES_MAPPING,
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    )

    mappings = {
        Mode.text_to_image: AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        Mode.image_to_image: AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        Mode.inpainting: AUTO_INPAINT_PIPELINES_MAPPING,
    }
    for family, modes in CONTROLNET_MODES.items():
        for mode in modes:
            assert auto[mode]
            classes = [cls.__name__ for cls in mappings[mode].values()]
            assert any("ControlNet" in name and base[family][:-8] in name for name in classes)
    sd3_inpainting = [
        cls
        for cls in AUTO_INPAINT_PIPELINES_MAPPING.values()
        if "StableDiffusion3ControlNet" in str(cls)
    ]
    assert all(
        "control_mask" in inspect.signature(cls.__call__).parameters for cls in sd3_inpainting
    )
    assert not any(
        "StableDiffusion3ControlNet" in str(cls)
        for cls in AUTO_IMAGE2IMAGE_PIPELINES_MAPPING.values()
    )


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        ("sd3", Mode.text_to_image),
        ("flux-schnell", Mode.image_to_image),
        ("flux-schnell", Mode.inpainting),
    ],
)
def test_two_controlnets(client: TestClient, workspace: Path, model: str, mode: Mode):
    both = [
        control(workspace, "depth"),
        control(workspace, "canny", seed=4, conditioning_scale=0.5),
    ]
    job = run_job(client, body_for(workspace, model, mode, controlnets=both))
    one = run_job(client, body_for(workspace, model, mode, controlnets=both[:1]))
    assert difference(pixels(client, job), pixels(client, one)) > MEASURABLE
    assert [c["model"] for c in job["request"]["controlnets"]] == ["depth", "canny"]


def test_a_controlnet_changes_the_output_and_its_scale_counts(client: TestClient, workspace: Path):
    plain = pixels(client, run_job(client, body_for(workspace, "sd1.5")))
    steered = pixels(
        client, run_job(client, body_for(workspace, "sd1.5", controlnets=[control(workspace)]))
    )
    assert difference(plain, steered) > 2.0
    off = run_job(
        client, body_for(workspace, "sd1.5", controlnets=[control(workspace, conditioning_scale=0)])
    )
    assert np.array_equal(pixels(client, off), plain)


def test_output_equals_a_direct_diffusers_controlnet_call(
    client: TestClient, tiny_models: Path, workspace: Path
):
    cn = control(workspace, "canny", conditioning_scale=0.7)
    body = body_for(
        workspace, "sd1.5", negative_prompt="blurry", guidance_scale=3.0, controlnets=[cn]
    )
    served = pixels(client, run_job(client, body))

    controlnet = ControlNetModel.from_pretrained(tiny_models / "controlnet-sd1.5-canny")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_models / "sd1.5", controlnet=controlnet, safety_checker=None
    )
    control_image = (
        Image.open(cn["image_path"]).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    )
    direct = pipe(
        prompt=body["prompt"],
        negative_prompt="blurry",
        image=control_image,
        controlnet_conditioning_scale=0.7,
        num_inference_steps=2,
        guidance_scale=3.0,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]
    assert np.array_equal(served, np.asarray(direct))


def test_preprocess_canny_makes_edges_on_the_server(client: TestClient, workspace: Path):
    picture = control(workspace, "canny")
    edges = cv2.Canny(
        np.asarray(
            Image.open(picture["image_path"])
            .convert("RGB")
            .resize((64, 64), Image.Resampling.LANCZOS)
            .convert("L")
        ),
        100,
        200,
    )
    edges_path = workspace / "edges.png"
    Image.fromarray(edges).convert("RGB").save(edges_path)

    preprocessed = run_job(
        client, body_for(workspace, "sdxl", controlnets=[picture | {"preprocess": True}])
    )
    raw = run_job(client, body_for(workspace, "sdxl", controlnets=[picture]))
    premade = run_job(
        client,
        body_for(
            workspace, "sdxl", controlnets=[{"model": "canny", "image_path": str(edges_path)}]
        ),
    )
    assert np.array_equal(pixels(client, preprocessed), pixels(client, premade))
    assert difference(pixels(client, preprocessed), pixels(client, raw)) > MEASURABLE
    assert job_controlnets(preprocessed)[0]["preprocess"] is True


def job_controlnets(job: dict) -> list[dict]:
    return job["request"]["controlnets"]


def test_preprocess_depth_uses_the_depth_model(client: TestClient, workspace: Path):
    picture = control(workspace, "depth")
    preprocessed = run_job(
        client, body_for(workspace, "sd1.5", controlnets=[picture | {"preprocess": True}])
    )
    raw = run_job(client, body_for(workspace, "sd1.5", controlnets=[picture]))
    assert difference(pixels(client, preprocessed), pixels(client, raw)) > MEASURABLE
    models = {model["name"]: model for model in client.get("/api/models").json()}
    assert models["depth-anything"]["loaded_on"] == ["cpu"]


def test_control_image_as_data_url(client: TestClient, workspace: Path):
    data = write_image(workspace / "c.png", (64, 64), seed=5).read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    job = run_job(
        client, body_for(workspace, "sd1.5", controlnets=[{"model": "depth", "image_path": url}])
    )
    stored = Path(job["request"]["controlnets"][0]["image_path"])
    assert stored.read_bytes() == data


# ---------------------------------------------------------------------------------------------
# Rejections: a 4xx naming the field, no job, nothing written
# ---------------------------------------------------------------------------------------------


def _outside(tmp_path: Path) -> str:
    return str(write_image(tmp_path / "outside.png"))


REJECTIONS = {
    "pose on sd3": (
        lambda ws, tmp: body_for(ws, "sd3", controlnets=[control(ws, "pose")]),
        422,
        "controlnets.0.model",
        "sd3 has no pose ControlNet",
    ),
    "pose on flux": (
        lambda ws, tmp: body_for(
            ws, "flux-schnell", controlnets=[control(ws), control(ws, "pose")]
        ),
        422,
        "controlnets.1.model",
        "flux-schnell has no pose ControlNet (its ControlNets: depth, canny)",
    ),
    "sd3 image to image": (
        lambda ws, tmp: body_for(ws, "sd3", Mode.image_to_image, controlnets=[control(ws)]),
        422,
        "controlnets",
        "no sd3 ControlNet pipeline for image_to_image",
    ),
    "sd3 inpainting": (
        lambda ws, tmp: body_for(ws, "sd3.5", Mode.inpainting, controlnets=[control(ws)]),
        422,
        "controlnets",
        "sd3 ControlNets run in text_to_image only",
    ),
    "refiner": (
        lambda ws, tmp: body_for(
            ws, "sdxl-refiner", Mode.image_to_image, controlnets=[control(ws)]
        ),
        422,
        "controlnets.0.model",
        "sdxl-refiner has no depth ControlNet (it takes no ControlNets)",
    ),
    "task model": (
        lambda ws, tmp: {
            "model": "sd-x4-upscaler",
            "input_image_path": str(write_image(ws / "plate.png")),
            "controlnets": [control(ws)],
        },
        422,
        "controlnets",
        "does not apply to sd-x4-upscaler (upscale); its fields: model, input_image_path",
    ),
    "missing control image": (
        lambda ws, tmp: body_for(
            ws, "sd1.5", controlnets=[{"model": "depth", "image_path": str(ws / "nope.png")}]
        ),
        422,
        "controlnets.0.image_path",
        "does not exist",
    ),
    "control image outside roots": (
        lambda ws, tmp: body_for(
            ws, "sd1.5", controlnets=[control(ws), {"model": "canny", "image_path": _outside(tmp)}]
        ),
        403,
        "controlnets.1.image_path",
        "outside the allowed roots",
    ),
    "control image not an image": (
        lambda ws, tmp: body_for(
            ws, "sd1.5", controlnets=[{"model": "depth", "image_path": str(_text(ws / "n.png"))}]
        ),
        422,
        "controlnets.0.image_path",
        "not a readable image",
    ),
    "conditioning scale 5": (
        lambda ws, tmp: body_for(ws, "sd1.5", controlnets=[control(ws, conditioning_scale=5)]),
        422,
        "controlnets.0.conditioning_scale",
        "less than or equal to 2",
    ),
    "preprocess pose": (
        lambda ws, tmp: body_for(ws, "sd1.5", controlnets=[control(ws, "pose", preprocess=True)]),
        422,
        "controlnets.0.preprocess",
        "pose control images must already be pose skeletons",
    ),
    "too many controlnets": (
        lambda ws, tmp: body_for(ws, "sd1.5", controlnets=[control(ws)] * 5),
        422,
        "controlnets",
        "at most 4",
    ),
    "unknown kind": (
        lambda ws, tmp: body_for(ws, "sd1.5", controlnets=[control(ws, "normal")]),
        422,
        "controlnets.0.model",
        "'depth', 'canny' or 'pose'",
    ),
    "no control image": (
        lambda ws, tmp: body_for(ws, "sd1.5", controlnets=[{"model": "depth"}]),
        422,
        "controlnets.0.image_path",
        "Field required",
    ),
    "unknown field in a controlnet": (
        lambda ws, tmp: body_for(ws, "sd1.5", controlnets=[control(ws, guidance_end=0.5)]),
        422,
        "controlnets.0.guidance_end",
        "Extra inputs are not permitted",
    ),
    "data url then a control image outside roots": (
        lambda ws, tmp: body_for(
            ws,
            "sd1.5",
            input_image_path=_data_url(ws / "d.png"),
            controlnets=[
                {"model": "depth", "image_path": _data_url(ws / "e.png")},
                {"model": "canny", "image_path": _outside(tmp)},
            ],
        ),
        403,
        "controlnets.1.image_path",
        "outside the allowed roots",
    ),
}


def _text(path: Path) -> Path:
    path.write_text("not a picture")
    return path


def _data_url(path: Path) -> str:
    data = write_image(path).read_bytes()
    path.unlink()
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize("kind", list(REJECTIONS))
def test_rejected_at_submit(client: TestClient, workspace: Path, tmp_path: Path, kind: str):
    make, status, field, message = REJECTIONS[kind]
    assert_rejected(client, tmp_path, make(workspace, tmp_path), status, field, message)


def test_kinds_are_the_registry_kinds():
    assert {kind for _, kind in CONTROLNETS} == set(ControlNetKind)


def test_models_list_what_each_model_takes(client: TestClient):
    models = {model["name"]: model for model in client.get("/api/models").json()}
    assert models["sd3.5"]["controlnets"] == {
        kind: {
            "repo": CONTROLNETS["sd3", ControlNetKind(kind)][1],
            "modes": ["text_to_image"],
            "present": True,
            "tiny": True,
        }
        for kind in ("depth", "canny")
    }
    assert models["sd3.5"]["ip_adapters"] == {}
    assert set(models["RealVisXL"]["controlnets"]) == {"depth", "canny", "pose"}
    assert models["sdxl"]["ip_adapters"]["face"] == {
        "repo": "h94/IP-Adapter",
        "weights": "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
        "modes": ["image_to_image", "inpainting", "text_to_image"],
        "present": True,
        "tiny": True,
    }
    assert models["sdxl-refiner"]["controlnets"] is None  # takes none
    assert models["depth-anything"]["ip_adapters"] is None
