"""Requests and results of the images domain: one request per kind of model (generation,
upscaling, depth, segmentation), each with only the fields that apply to it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag, TypeAdapter

from api.common.domain import ModelInfo
from api.common.jobs.schemas import job_model
from api.common.schemas import (
    InputPath,
    JobRequest,
    Name,
    OutputPath,
    Precision,
    Prompt,
    RequestModel,
)
from api.images.registry import (
    IMAGE_MODELS,
    MAX_CONTROLNETS,
    MAX_IMAGES,
    MAX_IP_ADAPTERS,
    MAX_LORA_SCALE,
    MAX_LORAS,
    MAX_SEED,
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
        lt=MAX_SEED,
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


class Lora(RequestModel):
    """A LoRA applied to the model for this request (sd1.5, sdxl and its fine-tunes, sd3,
    flux): a small add-on that shifts its style or teaches it a subject."""

    name: Name = Field(
        description="A LoRA in DD_LORAS_DIR, by its file name without .safetensors (GET "
        "/api/loras lists them with the family each fits), or, where the server may "
        "download, a Hugging Face repo id: owner/repo (its pytorch_lora_weights.safetensors "
        "or only .safetensors file) or owner/repo/<file>.safetensors.",
        examples=["film-grain"],
    )
    scale: float = Field(
        1.0,
        ge=-MAX_LORA_SCALE,
        le=MAX_LORA_SCALE,
        description="How strongly it acts: 0 = not at all, 1 = as trained, negative = "
        "away from it.",
    )


class ImageRequestBase(JobRequest):
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
        "with tiny weights). At least the model's min_size (GET /api/models).",
    )
    max_height: int | None = Field(
        None,
        ge=16,
        le=MAX_SIDE,
        description="Bound on the output height; the model's native height when absent (64 "
        "with tiny weights). At least the model's min_size (GET /api/models).",
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
    loras: list[Lora] = Field(
        [],
        title="LoRAs",
        max_length=MAX_LORAS,
        description="LoRAs, applied together, each with its scale (sd1.5, sdxl and its "
        "fine-tunes but not the refiner, sd3, sd3.5, flux); each must be made for the model's "
        "family. The model stays loaded: LoRAs are switched per request.",
    )
    num_images: int = Field(
        1,
        ge=1,
        le=MAX_IMAGES,
        description="How many images, in one job. Image n (from 1) gets seed + n - 1, is "
        "written as <name>_0001<ext>, <name>_0002<ext>... beside output_image_path (which "
        "names the batch: its own path is written only for num_images 1), and is the image "
        "that seed gives alone: re-run any one with its seed and num_images 1.",
    )
    bit_depth: Literal[8, 16] = Field(
        8,
        description="Bits per channel of a .png or .tif output: 16 keeps the model's float "
        "output (no 8-bit banding). An .exr output is always half-float linear (sRGB "
        "decoded); .jpg and .webp are 8-bit.",
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


AnyImageRequest = ImageRequest | UpscaleRequest | DepthRequest | SegmentationRequest
# The request of each kind of model: a generative model's (no task), or its task's.
REQUEST_TYPES: dict[Mode | None, type[AnyImageRequest]] = {
    None: ImageRequest,
    Mode.upscale: UpscaleRequest,
    Mode.depth: DepthRequest,
    Mode.segmentation: SegmentationRequest,
}


class ImageOutput(BaseModel):
    path: str = Field(description="Where it was written (in the client's form: DD_PATH_MAP).")
    url: str = Field(description="The same bytes over HTTP: a signed link.")
    width: int
    height: int
    take_path: str | None = Field(
        None, description="Its timestamped take in <dir>/tmp/ (with an output_image_path)."
    )
    label: str | None = Field(None, description="Segmentation: what this mask is of.")
    score: float | None = Field(None, description="Segmentation: detection confidence.")
    seed: int | None = Field(
        None,
        description="Diffusion models: this image's own seed (in a batch, the job's seed + "
        "its index): with num_images 1, that seed makes it again.",
    )


class ImageResult(BaseModel):
    images: list[ImageOutput]
    seed: int | None = Field(
        description="The seed used (a batch's first); null for models that take none."
    )
    mode: Mode
    tiny_weights: bool = Field(description="Made with tiny random weights (tests): noise.")
    precision: Precision = None
    timings: dict[str, float] = Field(description="Seconds: load_s, inference_s, write_s...")


class ControlNetInfo(BaseModel):
    """A ControlNet a diffusion model takes, and whether its weights are here."""

    repo: str
    modes: list[str]
    present: bool
    tiny: bool


class IpAdapterInfo(ControlNetInfo):
    """An IP-Adapter a diffusion model takes: its file in the repo, and whether it is here."""

    weights: str


class ImageModelInfo(ModelInfo):
    """An image model (GET /api/models)."""

    domain: Literal["images"] = "images"
    min_size: int | None = Field(
        None,
        description="Generative models: the smallest max_width / max_height it takes (less is "
        "refused, 422); smaller with tiny weights.",
    )
    controlnets: dict[str, ControlNetInfo] | None = Field(
        None, description="Diffusion models: the ControlNets it takes, by kind."
    )
    ip_adapters: dict[str, IpAdapterInfo] | None = Field(
        None, description="Diffusion models: the IP-Adapters it takes, by kind."
    )


class LoraInfo(BaseModel):
    """A LoRA in DD_LORAS_DIR (GET /api/loras)."""

    name: str = Field(description="What a request's loras[].name calls it.")
    family: str | None = Field(
        description="The model family it is for (sd1.5, sdxl, sd3, flux; sd2 or "
        "sdxl-refiner: none here), read from its keys and metadata; null: not recognised."
    )
    models: list[str] = Field(description="The models that take it.")
    path: str = Field(description="Its file on the server.")
    size_bytes: int


def _request_kind(value: Any) -> str:
    """Which request a (stored) request is, by its model: a generative one, or its task's."""
    name = value.get("model") if isinstance(value, dict) else getattr(value, "model", None)
    model = IMAGE_MODELS.get(name) if isinstance(name, str) else None
    return str(model.task) if model is not None and model.task is not None else "generative"


def _applicable(value: Any) -> Any:
    """A job queued by an earlier version held every image field (defaults filled): those
    that don't apply to its model are dropped."""
    if not isinstance(value, dict):
        return value
    kind = _request_kind(value)
    request_type = REQUEST_TYPES[None if kind == "generative" else Mode(kind)]
    return {name: item for name, item in value.items() if name in request_type.model_fields}


# A job's request as the job store holds it, typed by its model.
StoredImageRequest = Annotated[
    Annotated[ImageRequest, Tag("generative")]
    | Annotated[UpscaleRequest, Tag(Mode.upscale.value)]
    | Annotated[DepthRequest, Tag(Mode.depth.value)]
    | Annotated[SegmentationRequest, Tag(Mode.segmentation.value)],
    Discriminator(_request_kind),
    BeforeValidator(_applicable),
]
_STORED = TypeAdapter(StoredImageRequest)


def stored_request(request: dict[str, Any]) -> AnyImageRequest:
    """A job's stored request as its request class."""
    return _STORED.validate_python(request)


ImageJob = job_model("images", "ImageJob", StoredImageRequest, ImageResult)
