"""IP-Adapters through HTTP on the tiny models: each kind and layer preset on sd1.5 and sdxl,
several at once with masks and ControlNets, no trace left in the cached pipelines, rejections."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.images.registry import IP_ADAPTERS, IpAdapterKind, Mode, ScaleLayers
from api.images.schemas import IpAdapter
from api.tests.conftest import (
    assert_rejected,
    png_metadata,
    run_job,
    write_image,
    write_mask,
)
from api.tests.images.test_controlnets import (
    MEASURABLE,
    body_for,
    control,
    difference,
    pixels,
)


def adapter(workspace: Path, kind: str = "style", seed: int = 11, **extra) -> dict:
    path = write_image(workspace / f"reference_{kind}_{seed}.png", (48, 40), seed=seed)
    return {"model": kind, "image_path": str(path)} | extra


KIND_CASES = [
    ("sd1.5", "style", "all"),
    ("sd1.5", "style-plus", "style"),
    ("sd1.5", "face", "layout"),
    ("sdxl", "style", "style_and_layout"),
    ("sdxl", "style-plus", "all"),
    ("sdxl", "face", "style"),
]


@pytest.mark.parametrize(
    ("model", "kind", "layers"), KIND_CASES, ids=[f"{m}-{k}-{s}" for m, k, s in KIND_CASES]
)
def test_each_kind(client: TestClient, workspace: Path, model: str, kind: str, layers: str):
    out = workspace / f"{model}_{kind}.png"
    ip = adapter(workspace, kind, scale=1.5, scale_layers=layers)
    job = run_job(client, body_for(workspace, model, ip_adapters=[ip], output_image_path=str(out)))
    plain = run_job(client, body_for(workspace, model))
    assert difference(pixels(client, job), pixels(client, plain)) > MEASURABLE
    subfolder, weight_name = IP_ADAPTERS[model, IpAdapterKind(kind)]
    assert png_metadata(out)["ip_adapters"] == [
        {
            "model": kind,
            "image_path": ip["image_path"],
            "mask_path": None,
            "scale": 1.5,
            "scale_layers": layers,
            "weights": f"{subfolder}/{weight_name}",
        }
    ]


@pytest.mark.parametrize("model", ["sd1.5", "sdxl"])
@pytest.mark.parametrize("mode", [Mode.image_to_image, Mode.inpainting])
def test_two_controlnets_and_two_ip_adapters_one_masked(
    client: TestClient, workspace: Path, model: str, mode: Mode
):
    mask = str(write_mask(workspace / "left.png", (64, 64)))
    controlnets = [control(workspace, "depth"), control(workspace, "canny", seed=4)]
    adapters = [
        adapter(workspace, "style", scale=0.8, mask_path=mask),
        adapter(workspace, "style-plus", seed=12, scale_layers="style"),
    ]
    body = body_for(workspace, model, mode, controlnets=controlnets, ip_adapters=adapters)
    both = run_job(client, body)
    assert both["result"]["mode"] == mode
    assert [a["mask_path"] for a in both["request"]["ip_adapters"]] == [mask, None]
    unmasked = run_job(
        client, body | {"ip_adapters": [adapters[0] | {"mask_path": None}, adapters[1]]}
    )
    without = run_job(client, body | {"ip_adapters": []})
    assert difference(pixels(client, both), pixels(client, unmasked)) > MEASURABLE
    assert difference(pixels(client, both), pixels(client, without)) > MEASURABLE


@pytest.mark.parametrize("model", ["sd1.5", "sdxl"])
def test_adapters_leave_no_trace_in_the_cached_pipelines(
    client: TestClient, workspace: Path, model: str
):
    """The same request without adapters gives the same pixels before and after requests
    with them (text→image and image→image pipelines share the UNet the adapters go into)."""
    plain = body_for(workspace, model)
    plain_i2i = body_for(workspace, model, Mode.image_to_image)
    first = pixels(client, run_job(client, plain))
    first_i2i = pixels(client, run_job(client, plain_i2i))
    run_job(client, plain | {"ip_adapters": [adapter(workspace), adapter(workspace, "face")]})
    run_job(
        client,
        plain_i2i
        | {
            "ip_adapters": [adapter(workspace, "style-plus", scale_layers="layout")],
            "controlnets": [control(workspace)],
        },
    )
    assert np.array_equal(pixels(client, run_job(client, plain)), first)
    assert np.array_equal(pixels(client, run_job(client, plain_i2i)), first_i2i)


def test_pipelines_keep_their_own_scheduler(tiny_models: Path):
    """Schedulers keep state between calls (image→image's add_noise moves PNDM's tables to
    the GPU for good, which shifts later text→image pixels there): none is shared."""
    import torch

    from api.common.models import Weights
    from api.common.pipelines import Speed
    from api.images.models.diffusion import load_model
    from api.images.registry import IMAGE_MODELS

    weights = Weights("models_dir", str(tiny_models / "sd1.5"), tiny=True)
    loaded = load_model(IMAGE_MODELS["sd1.5"], weights, "cpu", False, Speed(), torch.float32)
    pipelines = [
        loaded.pipeline(Mode.text_to_image),
        loaded.pipeline(Mode.image_to_image),
        loaded.pipeline(Mode.inpainting),
        loaded.pipeline(Mode.image_to_image, image_encoder=None),
    ]
    assert pipelines[0] is loaded.base and pipelines[1] is loaded.pipeline(Mode.image_to_image)
    assert len({id(pipe.scheduler) for pipe in pipelines}) == len(pipelines)
    assert len({id(pipe.unet) for pipe in pipelines}) == 1


def test_a_failed_call_unloads_the_adapters(tiny_models: Path):
    """The adapters come out of the UNet even when the call in between fails."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from api.common.models import Weights
    from api.images.context import ImageContext
    from api.images.models.diffusion import ip_adapters_loaded
    from api.images.registry import IMAGE_MODELS
    from api.images.schemas import ImageRequest

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_models / "sd1.5")
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    request = ImageRequest(
        model="sd1.5", ip_adapters=[IpAdapter(model="style", image_path="/x.png")]
    )
    ctx = ImageContext(
        IMAGE_MODELS["sd1.5"],
        Mode.text_to_image,
        request,
        64,
        64,
        1,
        None,
        None,
        None,
        adapter_images=[Image.new("RGB", (32, 32))],
        adapter_masks=[None],
    )
    weights = Weights("models_dir", str(tiny_models / "IP-Adapter"), tiny=True)
    with pytest.raises(RuntimeError, match="boom"), ip_adapters_loaded(pipe, ctx, weights, "cpu"):
        assert pipe.unet.encoder_hid_proj is not None
        raise RuntimeError("boom")
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
    assert pipe.unet.encoder_hid_proj is None and pipe.image_encoder is None
    assert torch.is_tensor(next(pipe.unet.parameters()))


def _unet(down: list[bool], up: list[bool], layers: int) -> SimpleNamespace:
    """The parts of a UNet the layer presets look at: which blocks have attentions."""

    def block(has: bool) -> SimpleNamespace:
        return SimpleNamespace(attentions=[]) if has else SimpleNamespace()

    return SimpleNamespace(
        down_blocks=[block(h) for h in down],
        up_blocks=[block(h) for h in up],
        config=SimpleNamespace(layers_per_block=layers),
    )


SDXL = _unet([False, True, True], [True, True, False], 2)
SD15 = _unet([True, True, True, False], [False, True, True, True], 2)


@pytest.mark.parametrize(
    ("unet", "layers", "expected"),
    [
        (SDXL, "style", {"up": {"block_0": [0.0, 0.7, 0.0]}}),
        (SDXL, "layout", {"down": {"block_2": [0.0, 0.7]}}),
        (
            SDXL,
            "style_and_layout",
            {"up": {"block_0": [0.0, 0.7, 0.0]}, "down": {"block_2": [0.0, 0.7]}},
        ),
        (SD15, "style", {"up": {"block_1": [0.0, 0.7, 0.0]}}),
        (SD15, "layout", {"down": {"block_2": [0.0, 0.7]}}),
        (SDXL, "all", 0.7),
    ],
)
def test_layer_presets_are_instantstyles(unet, layers: str, expected):
    from api.images.models.diffusion import adapter_scale

    ip = IpAdapter(model="style", image_path="/x.png", scale=0.7, scale_layers=layers)
    assert adapter_scale(unet, ip) == expected


def test_missing_adapter_file_is_refused_at_submit(
    make_client, tiny_models: Path, workspace: Path, tmp_path: Path
):
    """The h94 folder is there (its image encoder) but not this adapter's weight file."""
    models = tmp_path / "models"
    (models / "IP-Adapter" / "models").mkdir(parents=True)
    os.symlink(tiny_models / "sd1.5", models / "sd1.5")
    os.symlink(
        tiny_models / "IP-Adapter" / "models" / "image_encoder",
        models / "IP-Adapter" / "models" / "image_encoder",
    )
    client = make_client(models_dir=models)
    body = body_for(workspace, "sd1.5", ip_adapters=[adapter(workspace)])
    error = assert_rejected(
        client, tmp_path, body, 422, "ip_adapters.0.model", "ip-adapter_sd15.safetensors"
    )
    assert f"--local-dir {models / 'IP-Adapter'}" in error["message"]


def test_kinds_and_presets_are_the_registry_ones():
    assert {kind for _, kind in IP_ADAPTERS} == set(IpAdapterKind)
    assert set(ScaleLayers) == {"all", "style", "layout", "style_and_layout"}


# ---------------------------------------------------------------------------------------------
# Rejections: a 4xx naming the field, no job, nothing written
# ---------------------------------------------------------------------------------------------


REJECTIONS = {
    "on flux": (
        lambda ws, tmp: body_for(ws, "flux-schnell", ip_adapters=[adapter(ws)]),
        422,
        "ip_adapters",
        "flux-schnell takes no IP-Adapters; they work with the sd1.5 and sdxl models",
    ),
    "on sd3": (
        lambda ws, tmp: body_for(ws, "sd3", ip_adapters=[adapter(ws)]),
        422,
        "ip_adapters",
        "sd3 takes no IP-Adapters",
    ),
    "on the refiner": (
        lambda ws, tmp: body_for(
            ws, "sdxl-refiner", Mode.image_to_image, ip_adapters=[adapter(ws)]
        ),
        422,
        "ip_adapters",
        "not the refiner",
    ),
    "missing reference": (
        lambda ws, tmp: body_for(
            ws, "sd1.5", ip_adapters=[{"model": "style", "image_path": str(ws / "nope.png")}]
        ),
        422,
        "ip_adapters.0.image_path",
        "does not exist",
    ),
    "mask outside roots": (
        lambda ws, tmp: body_for(
            ws,
            "sdxl",
            ip_adapters=[
                adapter(ws),
                adapter(ws, mask_path=str(write_mask(tmp / "outside_mask.png"))),
            ],
        ),
        403,
        "ip_adapters.1.mask_path",
        "outside the allowed roots",
    ),
    "scale 5": (
        lambda ws, tmp: body_for(ws, "sd1.5", ip_adapters=[adapter(ws, scale=5)]),
        422,
        "ip_adapters.0.scale",
        "less than or equal to 2",
    ),
    "too many": (
        lambda ws, tmp: body_for(ws, "sd1.5", ip_adapters=[adapter(ws)] * 5),
        422,
        "ip_adapters",
        "at most 4",
    ),
    "unknown preset": (
        lambda ws, tmp: body_for(ws, "sd1.5", ip_adapters=[adapter(ws, scale_layers="mid")]),
        422,
        "ip_adapters.0.scale_layers",
        "'all', 'style', 'layout' or 'style_and_layout'",
    ),
    "unknown kind": (
        lambda ws, tmp: body_for(ws, "sd1.5", ip_adapters=[adapter(ws, "faceid")]),
        422,
        "ip_adapters.0.model",
        "'style', 'style-plus' or 'face'",
    ),
}


@pytest.mark.parametrize("kind", list(REJECTIONS))
def test_rejected_at_submit(client: TestClient, workspace: Path, tmp_path: Path, kind: str):
    make, status, field, message = REJECTIONS[kind]
    assert_rejected(client, tmp_path, make(workspace, tmp_path), status, field, message)
