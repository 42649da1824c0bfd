"""Requests and results of the images domain."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.images.registry import (
    MAX_CONTROLNETS,
    MAX_IP_ADAPTERS,
    MAX_SIDE,
    MAX_STEPS,
    ControlNetKind,
    IpAdapterKind,
    Mode,
    ScaleLayers,
)


class ControlNet(BaseModel):
    """A control image that steers the composition (depth, edges or a pose skeleton)."""

    model_config = ConfigDict(extra="forbid")

    model: ControlNetKind = Field(
        description="What the control image is: depth (white = near), canny (white edges on "
        "black) or pose (an OpenPose skeleton). The family's ControlNet of that kind is used."
    )
    image_path: str = Field(
        description="The control image: a path on shared storage, a path from POST /api/files, "
        "or a data: URL. Resized to the output size."
    )
    conditioning_scale: float = Field(
        1.0, ge=0, le=2, description="How strongly it steers (0 = not at all)."
    )
    preprocess: bool = Field(
        False,
        description="Make the control image from a plain picture on the server: canny edges "
        "(OpenCV) or depth (the depth-anything model). Not for pose: send a pose skeleton.",
    )


class IpAdapter(BaseModel):
    """A reference image whose style, look or face the output takes on (sd1.5, sdxl)."""

    model_config = ConfigDict(extra="forbid")

    model: IpAdapterKind = Field(
        description="style (IP-Adapter), style-plus (IP-Adapter Plus: closer to the reference) "
        "or face (IP-Adapter Plus Face: a face crop as reference)."
    )
    image_path: str = Field(
        description="The reference image: a path on shared storage, a path from "
        "POST /api/files, or a data: URL."
    )
    mask_path: str | None = Field(
        None,
        description="Where in the output the adapter acts (white); everywhere when absent.",
    )
    scale: float = Field(1.0, ge=0, le=2, description="How strongly the reference shows.")
    scale_layers: ScaleLayers = Field(
        ScaleLayers.all,
        description="Which layers the adapter acts on: all, or (InstantStyle) only the style "
        "layer, only the layout layer, or both.",
    )


class ImageRequest(BaseModel):
    """Text→image, image→image or inpainting, chosen from which inputs are given."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model name, as listed by GET /api/models (e.g. sdxl).")
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Random when absent; the seed used is in the job's request and result.",
    )
    num_inference_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Model default when absent."
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=100, description="Model default when absent."
    )
    strength: float = Field(
        0.5,
        ge=0,
        le=1,
        description="How much image→image and "
        "inpainting change the input (0 keeps it, 1 replaces it).",
    )
    max_width: int | None = Field(
        None,
        ge=16,
        le=MAX_SIDE,
        description="Bound on the output width; the model's native width when absent.",
    )
    max_height: int | None = Field(
        None,
        ge=16,
        le=MAX_SIDE,
        description="Bound on the output height; the model's native height when absent.",
    )
    input_image_path: str | None = Field(
        None,
        description="Image to start from (image→image, "
        "inpainting): a path on shared storage, a path from "
        "POST /api/files, or a data: URL.",
    )
    input_mask_path: str | None = Field(
        None, description="White = repaint. With input_image_path: inpainting."
    )
    output_image_path: str | None = Field(
        None,
        description="Where to write the PNG/JPEG/WebP; "
        "a timestamped take is kept in <dir>/tmp/. Absent: "
        "the data dir, served at /api/files.",
    )
    inpainting_full_image: bool = Field(
        True,
        description="Inpaint at the full image (true) or "
        "on a padded crop around the mask, pasted back (false).",
    )
    optimize_low_vram: bool = Field(
        False,
        description="On CUDA: offload idle model parts to the CPU (slower, much less GPU memory).",
    )
    controlnets: list[ControlNet] = Field(
        [],
        max_length=MAX_CONTROLNETS,
        description="ControlNets, applied together (sd1.5, sdxl, flux in every mode; sd3 in "
        "text→image).",
    )
    ip_adapters: list[IpAdapter] = Field(
        [],
        max_length=MAX_IP_ADAPTERS,
        description="IP-Adapters, applied together (sd1.5 and sdxl).",
    )
    depth_format: Literal["png8", "png16", "exr"] = Field(
        "png8",
        description="Depth models: png8 = normalised 8-bit grey preview (white = near), png16 = "
        "normalised 16-bit grey PNG, exr = the raw predicted depth as float32 OpenEXR (one channel "
        "Y; relative inverse depth: larger = nearer). png16 needs a .png output_image_path, exr "
        "an .exr one.",
    )
    box_threshold: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Segmentation: keep objects whose detection score is above this.",
    )
    text_threshold: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Segmentation: prompt words scoring above this for an object make its label.",
    )


class ImageOutput(BaseModel):
    path: str
    url: str
    width: int
    height: int
    take_path: str | None = None
    label: str | None = None  # segmentation: what this mask is of
    score: float | None = None  # segmentation: detection confidence


class ImageResult(BaseModel):
    images: list[ImageOutput]
    seed: int
    mode: Mode
    tiny_weights: bool
    timings: dict[str, float]
