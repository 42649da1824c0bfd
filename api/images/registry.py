"""The image models: user-facing names → family, weights, what they can do, their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    text_to_image = "text_to_image"
    image_to_image = "image_to_image"
    inpainting = "inpainting"
    upscale = "upscale"
    depth = "depth"
    segmentation = "segmentation"


GENERATIVE = frozenset({Mode.text_to_image, Mode.image_to_image, Mode.inpainting})
# Modes that always need an input image and are the model's only mode.
TASKS = frozenset({Mode.upscale, Mode.depth, Mode.segmentation})

# Diffusion families: one implementation each (models/diffusion.py); variants are data.
DIFFUSION_FAMILIES = ("sd1.5", "sdxl", "sd3", "flux")

# Output sizes are rounded down to this: 8x VAE downsampling, then 2x2 patches (SD3, FLUX).
SIZE_MULTIPLE = 16
VAE_SCALE = 8  # pixels per latent pixel, every family
MAX_SIDE = 4096
# The default output size of a generative model whose weights are tiny (python -m api
# tiny-models): their UNets and transformers are built for 8x8 latents, i.e. 64 px.
TINY_SIZE = 64
# The smallest output side (max_width, max_height) each diffusion family is asked for; less
# is refused at submit. Below it a family's pictures fall apart: sd1.5 and sdxl, trained at
# 512 and 1024 px, hold together down to about half that; sd3 and flux, trained at sizes from
# 256 px up, to 256. Tiny weights take TINY_MIN_SIZE: their UNets have one channel per
# GroupNorm group, which can't normalise the 1x1 latent a 16 px side makes.
MIN_SIZES = {"sd1.5": 256, "sdxl": 512, "sd3": 256, "flux": 256}
TINY_MIN_SIZE = 32
MAX_STEPS = 500
# A batch (num_images): image i (from 0) of a batch seeded s is the image seed s + i gives alone.
MAX_IMAGES = 16
MAX_SEED = 2**63  # seeds are below it

# sd-x4-upscaler: the input is upscaled in tiles of the model's width x height input pixels
# (128 in -> 512 out, the crop size the model was trained at), neighbours overlapping by
# UPSCALE_TILE_OVERLAP input pixels and cross-faded over the overlap, so memory stays flat
# whatever the plate size. Each tile's noise comes from the seed plus the tile's index.
# UPSCALE_NOISE_LEVEL: noise added to the low-res input (0..350, diffusers' default 20; more
# noise = more invented detail). Outputs are capped at UPSCALE_MAX_SIDE pixels per side.
UPSCALE_FACTOR = 4
UPSCALE_TILE_OVERLAP = 32
UPSCALE_NOISE_LEVEL = 20
UPSCALE_MAX_SIDE = 16384

# segment-anything: Grounding DINO turns the prompt into boxes, SAM turns each box into a mask.
# Boxes overlapping a higher-scoring one by more than SEGMENT_NMS_IOU are dropped; at most
# SEGMENT_MAX_OBJECTS (the size of the colour palette) are kept, best score first.
GROUNDING_DINO = ("grounding-dino", "IDEA-Research/grounding-dino-base")
SEGMENT_NMS_IOU = 0.7
SEGMENT_MAX_OBJECTS = 10


@dataclass(frozen=True)
class ImageModel:
    name: str
    family: str  # sd1.5 | sdxl | sd3 | flux | upscaler | depth | segmentation | openai
    repo: str  # Hugging Face repo id of the weights (or the provider's model id)
    modes: frozenset[Mode]
    width: int
    height: int
    min_size: int = SIZE_MULTIPLE  # the smallest max_width/max_height it takes (MIN_SIZES)
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: bool = True  # whether the family takes a negative prompt
    external: bool = False  # runs at a provider: no local weights
    api_key_env: str | None = None  # external: the environment variable with the provider's key
    # other weights the model runs with: (folder name in DD_MODELS_DIR, Hugging Face repo)
    extra_weights: tuple[tuple[str, str], ...] = ()
    # the repo's half-precision copy of its weights (e.g. "fp16"): what a GPU loads from it
    variant: str | None = None

    @property
    def task(self) -> Mode | None:
        """The single task of an upscaling/depth/segmentation model."""
        tasks = self.modes & TASKS
        return next(iter(tasks)) if tasks else None


def _diffusion(
    name: str,
    family: str,
    repo: str,
    size: int,
    steps: int,
    guidance: float,
    modes: frozenset[Mode] = GENERATIVE,
    negative_prompt: bool = True,
    variant: str | None = None,
) -> ImageModel:
    return ImageModel(
        name,
        family,
        repo,
        modes,
        size,
        size,
        MIN_SIZES[family],
        steps,
        guidance,
        negative_prompt,
        variant=variant,
    )


IMAGE_MODELS: dict[str, ImageModel] = {
    model.name: model
    for model in (
        _diffusion(
            "sd1.5",
            "sd1.5",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            512,
            30,
            7.5,
            variant="fp16",
        ),
        _diffusion(
            "sdxl",
            "sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0",
            1024,
            30,
            5.0,
            variant="fp16",
        ),
        _diffusion(
            "sdxl-refiner",
            "sdxl",
            "stabilityai/stable-diffusion-xl-refiner-1.0",
            1024,
            30,
            5.0,
            modes=frozenset({Mode.image_to_image, Mode.inpainting}),
            variant="fp16",
        ),
        _diffusion("RealVisXL", "sdxl", "SG161222/RealVisXL_V4.0", 1024, 30, 5.0),
        _diffusion("Fluently-XL", "sdxl", "fluently/Fluently-XL-v4", 1024, 30, 5.0),
        _diffusion("sd3", "sd3", "stabilityai/stable-diffusion-3-medium-diffusers", 1024, 28, 7.0),
        _diffusion("sd3.5", "sd3", "stabilityai/stable-diffusion-3.5-medium", 1024, 40, 4.5),
        _diffusion(
            "flux-schnell",
            "flux",
            "black-forest-labs/FLUX.1-schnell",
            1024,
            4,
            0.0,
            negative_prompt=False,
        ),
        # Task models (one mode each, input_image_path required). width/height: the size they
        # process at. sd-x4-upscaler: the input tile (see UPSCALE_*); output = 4x the input.
        ImageModel(
            "sd-x4-upscaler",
            "upscaler",
            "stabilityai/stable-diffusion-x4-upscaler",
            frozenset({Mode.upscale}),
            128,
            128,
            steps=20,
            guidance_scale=9.0,
        ),
        # Depth Anything V2: the processor resizes the input to 518 px (aspect kept); the depth
        # is resized back to the input size. depth_format picks png8, png16 or EXR (float32).
        ImageModel(
            "depth-anything",
            "depth",
            "depth-anything/Depth-Anything-V2-Large-hf",
            frozenset({Mode.depth}),
            518,
            518,
            negative_prompt=False,
        ),
        # Text-prompted segmentation: Grounding DINO boxes (GROUNDING_DINO) -> SAM masks at 1024.
        ImageModel(
            "segment-anything",
            "segmentation",
            "facebook/sam-vit-huge",
            frozenset({Mode.segmentation}),
            1024,
            1024,
            negative_prompt=False,
            extra_weights=(GROUNDING_DINO,),
        ),
        # OpenAI's image model (models/openai_images.py). The provider picks the size from
        # three (1024x1024, 1536x1024, 1024x1536: nearest to the requested aspect ratio) and
        # the quality from num_inference_steps (<=10 low, <=30 medium, more high; absent auto).
        # It takes no seed, negative prompt, guidance or strength.
        ImageModel(
            "gpt-image-1",
            "openai",
            "gpt-image-1",
            GENERATIVE,
            1024,
            1024,
            negative_prompt=False,
            external=True,
            api_key_env="OPENAI_API_KEY",
        ),
    )
}


# ControlNets and IP-Adapters for the diffusion families (models/diffusion.py). Their weights
# are found like a model's: DD_MODELS_DIR/<name>/, the Hugging Face cache, then a download.


class ControlNetKind(StrEnum):
    depth = "depth"
    canny = "canny"
    pose = "pose"


# (family, kind) → (folder name in DD_MODELS_DIR, Hugging Face repo). Flux: XLabs' ControlNets
# converted to diffusers' format by XLabs (their -v3 checkpoints are single files for XLabs'
# own code, which diffusers' FluxControlNetModel.from_pretrained can't read).
CONTROLNETS: dict[tuple[str, ControlNetKind], tuple[str, str]] = {
    ("sd1.5", ControlNetKind.depth): ("controlnet-sd1.5-depth", "lllyasviel/sd-controlnet-depth"),
    ("sd1.5", ControlNetKind.canny): ("controlnet-sd1.5-canny", "lllyasviel/sd-controlnet-canny"),
    ("sd1.5", ControlNetKind.pose): ("controlnet-sd1.5-pose", "lllyasviel/sd-controlnet-openpose"),
    ("sdxl", ControlNetKind.depth): (
        "controlnet-sdxl-depth",
        "diffusers/controlnet-depth-sdxl-1.0-small",
    ),
    ("sdxl", ControlNetKind.canny): (
        "controlnet-sdxl-canny",
        "diffusers/controlnet-canny-sdxl-1.0-small",
    ),
    ("sdxl", ControlNetKind.pose): ("controlnet-sdxl-pose", "xinsir/controlnet-openpose-sdxl-1.0"),
    ("sd3", ControlNetKind.depth): ("controlnet-sd3-depth", "InstantX/SD3-Controlnet-Depth"),
    ("sd3", ControlNetKind.canny): ("controlnet-sd3-canny", "InstantX/SD3-Controlnet-Canny"),
    ("flux", ControlNetKind.depth): (
        "controlnet-flux-depth",
        "XLabs-AI/flux-controlnet-depth-diffusers",
    ),
    ("flux", ControlNetKind.canny): (
        "controlnet-flux-canny",
        "XLabs-AI/flux-controlnet-canny-diffusers",
    ),
}

# The modes each family runs ControlNets in: those diffusers has a ControlNet pipeline for.
# SD3 has none for image→image, and its ControlNet inpainting pipeline is for an inpainting
# ControlNet (the mask goes to the ControlNet), not for depth/canny on top of inpainting.
CONTROLNET_MODES: dict[str, frozenset[Mode]] = {
    "sd1.5": GENERATIVE,
    "sdxl": GENERATIVE,
    "sd3": frozenset({Mode.text_to_image}),
    "flux": GENERATIVE,
}


class IpAdapterKind(StrEnum):
    style = "style"
    style_plus = "style-plus"
    face = "face"


class ScaleLayers(StrEnum):
    """Where an IP-Adapter acts (InstantStyle): every cross-attention layer, or only the one
    that carries style (colour, material), the one that carries layout, or both."""

    all = "all"
    style = "style"
    layout = "layout"
    style_and_layout = "style_and_layout"


# h94/IP-Adapter: one folder holds every adapter and the image encoder they share (OpenCLIP
# ViT-H/14: the sdxl "_vit-h" adapters use it too).
IP_ADAPTER_WEIGHTS = ("IP-Adapter", "h94/IP-Adapter")
IP_ADAPTER_IMAGE_ENCODER = "models/image_encoder"
# (family, kind) → (subfolder, weight file) in that folder.
IP_ADAPTERS: dict[tuple[str, IpAdapterKind], tuple[str, str]] = {
    ("sd1.5", IpAdapterKind.style): ("models", "ip-adapter_sd15.safetensors"),
    ("sd1.5", IpAdapterKind.style_plus): ("models", "ip-adapter-plus_sd15.safetensors"),
    ("sd1.5", IpAdapterKind.face): ("models", "ip-adapter-plus-face_sd15.safetensors"),
    ("sdxl", IpAdapterKind.style): ("sdxl_models", "ip-adapter_sdxl_vit-h.safetensors"),
    ("sdxl", IpAdapterKind.style_plus): ("sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors"),
    ("sdxl", IpAdapterKind.face): ("sdxl_models", "ip-adapter-plus-face_sdxl_vit-h.safetensors"),
}

MAX_CONTROLNETS = 4
MAX_IP_ADAPTERS = 4

# LoRAs (images/loras.py, models/diffusion.py): *.safetensors files in DD_LORAS_DIR (default
# <models dir>/loras, where tiny-models writes its tiny ones), or Hugging Face repos. At most
# MAX_LORAS a request, each scaled by at most MAX_LORA_SCALE either way; a loaded model keeps
# up to RESIDENT_LORAS of them loaded as adapters (least recently used deleted first).
LORAS_FOLDER = "loras"
MAX_LORAS = 8
MAX_LORA_SCALE = 4.0
RESIDENT_LORAS = 16

# Models of a ControlNet/IP-Adapter/LoRA family whose UNet those don't fit: the SDXL refiner's
# cross-attention sees text_encoder_2 alone (1280 wide, not 2048) and it has no text→image.
WITHOUT_ADAPTERS = frozenset({"sdxl-refiner"})


def weights_folders() -> tuple[str, ...]:
    """Every folder in DD_MODELS_DIR the images domain reads (what tiny-models writes)."""
    names = [model.name for model in IMAGE_MODELS.values() if not model.external]
    names += [name for model in IMAGE_MODELS.values() for name, _ in model.extra_weights]
    names += [name for name, _ in CONTROLNETS.values()]
    names += [IP_ADAPTER_WEIGHTS[0], LORAS_FOLDER]
    return tuple(dict.fromkeys(names))
