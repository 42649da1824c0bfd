"""Requests and results of the images domain: one request per kind of model (generation,
upscaling, depth, segmentation), each with only the fields that apply to it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from api.common.schemas import InputPath, Name, OutputPath, Prompt, RequestModel
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

# Fields that several requests share, defined once.
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        lt=2**63,
        description="Random when absent; the seed used is in the job's request and result.",
    ),
]
Steps = Annotated[int | None, Field(ge=1, le=MAX_STEPS, description="Model default when absent.")]
Guidance = Annotated[float | None, Field(ge=0, le=100, description="Model default when absent.")]
LowVram = Annotated[
    bool,
    Field(
        description="On CUDA: offload idle model parts to the CPU (slower, much less GPU memory)."
    ),
]
INPUT_DESCRIPTION = (
    "A path on shared storage, a path from POST /api/files, or a data: URL (paths up to "
    "4096 characters, data: URLs up to 64 MiB)."
)


class ControlNet(RequestModel):
    """A control image that steers the composition (depth, edges or a pose skeleton)."""

    model: ControlNetKind = Field(
        description="What the control image is: depth (white = near), canny (white edges on "
        "black) or pose (an OpenPose skeleton). The family's ControlNet of that kind is used."
    )
    image_path: InputPath = Field(
        description=f"The control image, resized to the output size. {INPUT_DESCRIPTION}"
    )
    conditioning_scale: float = Field(
        1.0, ge=0, le=2, description="How strongly it steers (0 = not at all)."
    )
    preprocess: bool = Field(
        False,
        description="Make the control image from a plain picture on the server: canny edges "
        "(OpenCV) or depth (the depth-anything model). Not for pose: send a pose skeleton.",
    )


class IpAdapter(RequestModel):
    """A reference image whose style, look or face the output takes on (sd1.5, sdxl)."""

    model: IpAdapterKind = Field(
        description="style (IP-Adapter), style-plus (IP-Adapter Plus: closer to the reference) "
        "or face (IP-Adapter Plus Face: a face crop as reference)."
    )
    image_path: InputPath = Field(description=f"The reference image. {INPUT_DESCRIPTION}")
    mask_path: InputPath | None = Field(
        None,
        description="Where in the output the adapter acts (white); everywhere when absent.",
    )
    scale: float = Field(1.0, ge=0, le=2, description="How strongly the reference shows.")
    scale_layers: ScaleLayers = Field(
        ScaleLayers.all,
        description="Which layers the adapter acts on: all, or (InstantStyle) only the style "
        "layer, only the layout layer, or both.",
    )


class ImageRequestBase(RequestModel):
    """What every image request has: the model, its input image and where the output goes."""

    model: Name = Field(description="Model name, as listed by GET /api/models (e.g. sdxl).")
    input_image_path: InputPath | None = Field(
        None, description=f"The image to start from. {INPUT_DESCRIPTION}"
    )
    output_image_path: OutputPath | None = Field(
        None,
        description="Where to write the output (at most 4096 characters); a timestamped take "
        "is kept in <dir>/tmp/. Absent: the data dir, served at /api/files.",
    )


class ImageRequest(ImageRequestBase):
    """Text→image, image→image or inpainting (the generative models), chosen from which
    inputs are given: an input image → image→image, an image and a mask → inpainting."""

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    seed: Seed = None
    num_inference_steps: Steps = None
    guidance_scale: Guidance = None
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
        description="Bound on the output width; the model's native width when absent (64 "
        "with tiny weights).",
    )
    max_height: int | None = Field(
        None,
        ge=16,
        le=MAX_SIDE,
        description="Bound on the output height; the model's native height when absent (64 "
        "with tiny weights).",
    )
    input_mask_path: InputPath | None = Field(
        None, description="White = repaint. With input_image_path: inpainting."
    )
    inpainting_full_image: bool = Field(
        True,
        description="Inpaint at the full image (true) or "
        "on a padded crop around the mask, pasted back (false).",
    )
    optimize_low_vram: LowVram = False
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


class TaskRequest(ImageRequestBase):
    """A task model's request: it works on an input image, which is required."""

    input_image_path: InputPath = Field(description=f"The image to work on. {INPUT_DESCRIPTION}")


class UpscaleRequest(TaskRequest):
    """4x upscaling (sd-x4-upscaler), guided by the prompt."""

    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    seed: Seed = None
    num_inference_steps: Steps = None
    guidance_scale: Guidance = None
    optimize_low_vram: LowVram = False


class DepthRequest(TaskRequest):
    """Depth estimation (depth-anything)."""

    depth_format: Literal["png8", "png16", "exr"] = Field(
        "png8",
        description="png8 = normalised 8-bit grey preview (white = near), png16 = normalised "
        "16-bit grey PNG, exr = the raw predicted depth as float32 OpenEXR (one channel Y; "
        "relative inverse depth: larger = nearer). png16 needs a .png output_image_path, exr "
        "an .exr one.",
    )


class SegmentationRequest(TaskRequest):
    """Text-prompted segmentation (segment-anything): masks of what the prompt names."""

    prompt: Prompt = Field(
        "", description="What to segment, objects separated by '.' or ',' (e.g. 'car. person.')."
    )
    box_threshold: float = Field(
        0.3, ge=0, le=1, description="Keep objects whose detection score is above this."
    )
    text_threshold: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Prompt words scoring above this for an object make its label.",
    )


# The request of each kind of model: a generative model's (no task), or its task's.
REQUEST_TYPES: dict[Mode | None, type[ImageRequestBase]] = {
    None: ImageRequest,
    Mode.upscale: UpscaleRequest,
    Mode.depth: DepthRequest,
    Mode.segmentation: SegmentationRequest,
}
AnyImageRequest = ImageRequest | UpscaleRequest | DepthRequest | SegmentationRequest


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
    seed: int | None  # None for models that take no seed (depth, segmentation)
    mode: Mode
    tiny_weights: bool
    timings: dict[str, float]
