"""Submit-time checks of an image request: the request class its model takes, every
field and input checked (a 4xx naming the field), defaults filled, and nothing written
until every check has passed (an inline data URL is saved last)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from api.common.errors import InvalidField
from api.common.inputs import InputImages
from api.common.names import did_you_mean
from api.common.schemas import MAX_NAME_CHARS, find_invalid_text, request_fields
from api.common.services import Services
from api.images.context import (
    DEPTH_MODEL,
    SIXTEEN_BIT_SUFFIXES,
    find_model,
    mode_of,
    output_suffixes,
)
from api.images.loras import cached_repo_file, local_loras, lora_family, repo_of
from api.images.registry import (
    CONTROLNET_MODES,
    CONTROLNETS,
    DIFFUSION_FAMILIES,
    IMAGE_MODELS,
    IP_ADAPTER_IMAGE_ENCODER,
    IP_ADAPTER_WEIGHTS,
    IP_ADAPTERS,
    MAX_SEED,
    UPSCALE_FACTOR,
    UPSCALE_MAX_SIDE,
    WITHOUT_ADAPTERS,
    ControlNetKind,
    ImageModel,
    Mode,
)
from api.images.schemas import (
    REQUEST_TYPES,
    AnyImageRequest,
    ControlNet,
    DepthRequest,
    ImageRequest,
    IpAdapter,
    Lora,
    SegmentationRequest,
    UpscaleRequest,
)
from api.images.settings import loras_dir
from api.images.sizing import check_output_size, check_sides, default_size

# Every field of any image request: one that the chosen model's request lacks "does not
# apply" to it (a field in none of them is simply unknown).
IMAGE_FIELDS = frozenset(name for kind in REQUEST_TYPES.values() for name in kind.model_fields)


def _invalid(request_type: type, errors: list[tuple[str, str, Any]]) -> ValidationError:
    """A validation error with a message of ours for each (field, message, value)."""
    return ValidationError.from_exception_data(
        request_type.__name__,
        [
            InitErrorDetails(
                type=PydanticCustomError("invalid_field", "{message}", {"message": message}),
                loc=(field,),
                input=value,
            )
            for field, message, value in errors
        ],
    )


def parse_request(body: Any) -> AnyImageRequest:
    """The body as its model's request: ImageRequest for a generative model, else its task's
    (UpscaleRequest, DepthRequest, SegmentationRequest). A ValidationError names each field
    that is wrong: an unknown model, a field that doesn't apply to the model, a bad value."""
    name = body.get("model") if isinstance(body, dict) else None
    if (
        not isinstance(name, str)
        or len(name) > MAX_NAME_CHARS
        or find_invalid_text(body) is not None
    ):
        return ImageRequest.model_validate(body)  # says what is wrong with it
    try:
        model = find_model(name)
    except InvalidField as exc:
        raise _invalid(ImageRequest, [(exc.field or "model", exc.message, name)]) from None
    request_type = REQUEST_TYPES[model.task]
    takes = ", ".join(request_fields(request_type))
    kind = model.task or ", ".join(sorted(model.modes))
    wrong = [
        (field, f"does not apply to {model.name} ({kind}); its fields: {takes}", body[field])
        if field in IMAGE_FIELDS
        else (
            field,
            "Extra inputs are not permitted"
            + (did_you_mean(field, request_type.model_fields) or f" (its fields: {takes})"),
            body[field],
        )
        for field in body
        if field not in request_type.model_fields
    ]
    if wrong:
        raise _invalid(request_type, wrong)
    return request_type.model_validate(body)


def validate_request(request: AnyImageRequest, services: Services) -> AnyImageRequest:
    """Submit-time checks (4xx naming the field); returns the request with defaults filled."""
    model = find_model(request.model)
    if (
        isinstance(request, ImageRequest)
        and request.input_mask_path
        and not request.input_image_path
    ):
        raise InvalidField(
            "input_mask_path needs input_image_path (the image to inpaint)", "input_mask_path"
        )
    mode = mode_of(model, request)
    if mode not in model.modes:
        can = ", ".join(sorted(model.modes))
        raise InvalidField(f"model {model.name} can't do {mode} (it does {can})", "model")
    check_model_available(model, services)
    defaults = {}
    if isinstance(request, ImageRequest | UpscaleRequest):
        defaults = sampling_defaults(model, request)
    if (
        isinstance(request, ImageRequest)
        and not model.external
        and mode in (Mode.image_to_image, Mode.inpainting)
        and int(defaults["num_inference_steps"] * request.strength) < 1
    ):
        raise InvalidField(
            f"strength {request.strength} with {defaults['num_inference_steps']} steps leaves "
            "no denoising step to run; raise strength or num_inference_steps",
            "strength",
        )
    if isinstance(request, SegmentationRequest) and not any(c.isalnum() for c in request.prompt):
        raise InvalidField(
            f"model {model.name} needs a prompt naming what to segment (e.g. 'car. person.')",
            "prompt",
        )
    if request.output_image_path is not None:
        suffixes = output_suffixes(mode, request)
        suffix = Path(request.output_image_path).suffix.lower()
        if isinstance(request, DepthRequest) and suffix not in suffixes:
            raise InvalidField(
                f"output_image_path must end with {' or '.join(suffixes)} for depth_format "
                f"{request.depth_format}: {request.output_image_path!r}",
                "output_image_path",
            )
        services.paths.resolve_output_path(request.output_image_path, "output_image_path", suffixes)
    inputs = InputImages(services)
    input_image = inputs.check(request.input_image_path, "input_image_path")
    checked = {"input_image_path": input_image}
    if mode == Mode.upscale:
        assert input_image is not None  # an upscale request requires its input image
        width, height = inputs.sizes[input_image]  # the header's: nothing decoded
        if max(width, height) * UPSCALE_FACTOR > UPSCALE_MAX_SIDE:
            raise InvalidField(
                f"input_image_path is {width}x{height}: upscaled {UPSCALE_FACTOR}x it would be "
                f"{width * UPSCALE_FACTOR}x{height * UPSCALE_FACTOR}, over {UPSCALE_MAX_SIDE} px "
                f"a side; send an input of at most {UPSCALE_MAX_SIDE // UPSCALE_FACTOR} px a side",
                "input_image_path",
            )
    if isinstance(request, ImageRequest):
        check_generated_outputs(model, mode, request, defaults["seed"])
        checked |= check_generative_inputs(model, mode, request, inputs)
        check_adapter_weights(model, request, services)
        check_loras(model, request.loras, services)
        weights = None
        if not model.external:
            weights = services.find_weights(model.name, model.repo)
        width, height = default_size(model, weights)
        check_sides(model, weights, request)
        defaults |= {
            "max_width": request.max_width or width,
            "max_height": request.max_height or height,
        }
        if not model.external:  # a provider picks its own sizes
            image_size = inputs.sizes.get(input_image) if input_image else None
            check_output_size(
                model, weights, defaults["max_width"], defaults["max_height"], image_size
            )
    inputs.save()
    return request.model_copy(update=checked | defaults)


def sampling_defaults(model: ImageModel, request: ImageRequest | UpscaleRequest) -> dict:
    """The seed (random), steps and guidance (the model's) that a request leaves out."""
    return {
        "seed": request.seed if request.seed is not None else random.randrange(2**31),
        "num_inference_steps": request.num_inference_steps or model.steps,
        "guidance_scale": (
            request.guidance_scale if request.guidance_scale is not None else model.guidance_scale
        ),
    }


def check_generated_outputs(
    model: ImageModel, mode: Mode, request: ImageRequest, seed: int
) -> None:
    """A batch's seeds must all be seeds; EXR and 16-bit outputs need the model's float
    pixels (a diffusion model's, whole: not pasted back as 8-bit crops)."""
    if seed + request.num_images - 1 >= MAX_SEED:
        raise InvalidField(
            f"seed {seed} with num_images {request.num_images}: the batch's last seed would be "
            f"over {MAX_SEED - 1}; use a smaller seed",
            "seed",
        )
    path = request.output_image_path
    suffix = Path(path).suffix.lower() if path else ".png"
    if request.bit_depth == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        raise InvalidField(
            f"bit_depth 16 needs a .png or .tif output_image_path, not {suffix} (an .exr is "
            "always half float; .jpg and .webp are 8-bit)",
            "bit_depth",
        )
    field = "output_image_path" if suffix == ".exr" else "bit_depth"
    what = "an .exr output" if suffix == ".exr" else "bit_depth 16"
    if (suffix == ".exr" or request.bit_depth == 16) and model.external:
        raise InvalidField(
            f"{field}: {model.name} sends 8-bit images; {what} needs a diffusion model's float "
            "output (write .png, .jpg or .webp with bit_depth 8)",
            field,
        )
    if (
        (suffix == ".exr" or request.bit_depth == 16)
        and mode == Mode.inpainting
        and not request.inpainting_full_image
    ):
        raise InvalidField(
            f"inpainting_full_image: inpainting a crop pastes it back in 8 bits; {what} needs "
            "inpainting_full_image true",
            "inpainting_full_image",
        )


def check_generative_inputs(
    model: ImageModel, mode: Mode, request: ImageRequest, inputs: InputImages
) -> dict[str, Any]:
    """The mask, ControlNets and IP-Adapters of a generative request, checked."""
    mask_path = inputs.check(request.input_mask_path, "input_mask_path")
    if (
        mask_path is not None
        and inputs.open(mask_path, "input_mask_path").convert("L").getbbox() is None
    ):
        raise InvalidField(
            "input_mask_path is all black: nothing to inpaint (white = repaint)", "input_mask_path"
        )
    return {
        "input_mask_path": mask_path,
        "controlnets": check_controlnets(model, mode, request.controlnets, inputs),
        "ip_adapters": check_ip_adapters(model, request.ip_adapters, inputs),
    }


def unavailable_reason(model: ImageModel, services: Services) -> str | None:
    """Why this server can't run ``model`` now (no provider key; weights absent while
    downloads are off), or None when it can."""
    if model.api_key_env and not getattr(services.settings, model.api_key_env.lower()):
        return (
            f"model {model.name} runs at its provider and this server has no "
            f"{model.api_key_env}; set it in the server's environment and restart the server"
        )
    if model.external:
        return None
    for name, repo in ((model.name, model.repo), *model.extra_weights):
        if services.find_weights(name, repo) is None:
            return services.missing_weights(name, repo)
    return None


def check_model_available(model: ImageModel, services: Services) -> None:
    """Refuse at submit a model that could only fail when its job runs."""
    reason = unavailable_reason(model, services)
    if reason is not None:
        raise InvalidField(reason, "model")


def check_adapter_weights(model: ImageModel, request: ImageRequest, services: Services) -> None:
    """The weights a request's ControlNets and IP-Adapters need (and depth-anything, for a
    depth ControlNet made on the server), refused at submit when absent and not downloadable.
    Runs after their kinds were checked against the model's family."""
    for index, controlnet in enumerate(request.controlnets):
        name, repo = CONTROLNETS[model.family, controlnet.model]
        if services.find_weights(name, repo) is None:
            field = f"controlnets.{index}.model"
            raise InvalidField(f"{field}: {services.missing_weights(name, repo)}", field)
        if controlnet.preprocess and controlnet.model == ControlNetKind.depth:
            depth = IMAGE_MODELS[DEPTH_MODEL]
            if services.find_weights(depth.name, depth.repo) is None:
                field = f"controlnets.{index}.preprocess"
                raise InvalidField(
                    f"{field}: making a depth control image needs {depth.name}: "
                    f"{services.missing_weights(depth.name, depth.repo)}",
                    field,
                )
    if not request.ip_adapters or model.external:
        return
    name, repo = IP_ADAPTER_WEIGHTS
    found = services.find_weights(name, repo, (f"{IP_ADAPTER_IMAGE_ENCODER}/config.json",))
    if found is None:
        raise InvalidField(f"ip_adapters: {services.missing_weights(name, repo)}", "ip_adapters")
    if found.source == "download":
        return
    for index, adapter in enumerate(request.ip_adapters):
        file = Path(found.location, *IP_ADAPTERS[model.family, adapter.model])
        if not file.is_file():
            field = f"ip_adapters.{index}.model"
            raise InvalidField(
                f"{field}: IP-Adapter weights {file} are missing: put the {repo} files there "
                f"(`hf download {repo} --local-dir {found.location}` on a machine with network)",
                field,
            )


def check_controlnets(
    model: ImageModel, mode: Mode, controlnets: list[ControlNet], inputs: InputImages
) -> list[ControlNet]:
    """Each ControlNet must be one the model's family has, in a mode diffusers runs it in."""
    if not controlnets:
        return []
    kinds = [
        kind
        for family, kind in CONTROLNETS
        if family == model.family and model.name not in WITHOUT_ADAPTERS
    ]
    for index, controlnet in enumerate(controlnets):
        field = f"controlnets.{index}"
        if controlnet.model not in kinds:
            has = f"its ControlNets: {', '.join(kinds)}" if kinds else "it takes no ControlNets"
            raise InvalidField(
                f"{field}.model: model {model.name} has no {controlnet.model} ControlNet ({has})",
                f"{field}.model",
            )
        if controlnet.preprocess and controlnet.model == ControlNetKind.pose:
            raise InvalidField(
                f"{field}.preprocess: pose can't be made on the server (no OpenPose model here); "
                "pose control images must already be pose skeletons: send one with preprocess "
                "false",
                f"{field}.preprocess",
            )
    if mode not in CONTROLNET_MODES[model.family]:
        runs = ", ".join(sorted(CONTROLNET_MODES[model.family]))
        raise InvalidField(
            f"controlnets: diffusers has no {model.family} ControlNet pipeline for {mode}; "
            f"{model.family} ControlNets run in {runs} only",
            "controlnets",
        )
    return [
        controlnet.model_copy(
            update={
                "image_path": inputs.check(controlnet.image_path, f"controlnets.{i}.image_path")
            }
        )
        for i, controlnet in enumerate(controlnets)
    ]


def check_ip_adapters(
    model: ImageModel, adapters: list[IpAdapter], inputs: InputImages
) -> list[IpAdapter]:
    """IP-Adapters exist for sd1.5 and sdxl; each needs a readable image (and mask)."""
    if not adapters:
        return []
    if model.external:  # gpt-image-1: the images are extra references for its edits
        return check_reference_images(model, adapters, inputs)
    families = sorted({family for family, _ in IP_ADAPTERS})
    if model.family not in families or model.name in WITHOUT_ADAPTERS:
        raise InvalidField(
            f"ip_adapters: model {model.name} takes no IP-Adapters; they work with the "
            f"{' and '.join(families)} models (SDXL base and its fine-tunes, not the refiner)",
            "ip_adapters",
        )
    checked = []
    for index, adapter in enumerate(adapters):
        field = f"ip_adapters.{index}"
        if (model.family, adapter.model) not in IP_ADAPTERS:
            raise InvalidField(
                f"{field}.model: {model.family} has no {adapter.model} IP-Adapter", f"{field}.model"
            )
        image_path = inputs.check(adapter.image_path, f"{field}.image_path")
        mask_path = inputs.check(adapter.mask_path, f"{field}.mask_path")
        checked.append(
            adapter.model_copy(update={"image_path": image_path, "mask_path": mask_path})
        )
    return checked


def check_reference_images(
    model: ImageModel, adapters: list[IpAdapter], inputs: InputImages
) -> list[IpAdapter]:
    """An external model takes IP-Adapter images as plain extra references, sent with the
    input image: their kind, scale and layers don't apply, and a mask can't confine them."""
    checked = []
    for index, adapter in enumerate(adapters):
        field = f"ip_adapters.{index}"
        if adapter.mask_path is not None:
            raise InvalidField(
                f"{field}.mask_path: {model.name} takes reference images whole; it can't "
                "confine one to a mask (leave mask_path out)",
                f"{field}.mask_path",
            )
        image_path = inputs.check(adapter.image_path, f"{field}.image_path")
        checked.append(adapter.model_copy(update={"image_path": image_path}))
    return checked


# How many of the LoRAs here an unknown name's message lists (GET /api/loras has them all).
SHOWN_LORAS = 20


def lora_models(family: str | None) -> list[str]:
    """The models that take a LoRA of ``family``."""
    return [
        model.name
        for model in IMAGE_MODELS.values()
        if model.family == family
        and model.family in DIFFUSION_FAMILIES
        and model.name not in WITHOUT_ADAPTERS
    ]


def check_loras(model: ImageModel, loras: list[Lora], services: Services) -> None:
    """Each LoRA must be one this server has (a file in DD_LORAS_DIR) or can get (a Hugging
    Face repo: from its cache, or a download), named once, and made for the model's family
    (read from its keys; a repo not yet downloaded is checked when its job runs)."""
    if not loras:
        return
    if model.name not in lora_models(model.family):
        families = ", ".join(DIFFUSION_FAMILIES)
        raise InvalidField(
            f"loras: model {model.name} takes no LoRAs; they work with the {families} models "
            "(not the SDXL refiner)",
            "loras",
        )
    folder = loras_dir(services.settings)
    files = local_loras(folder)
    for index, lora in enumerate(loras):
        field = f"loras.{index}.name"
        if any(other.name == lora.name for other in loras[:index]):
            raise InvalidField(
                f"{field}: LoRA {lora.name!r} is listed twice; list it once, with the scale "
                "you want",
                field,
            )
        path = files.get(lora.name)
        if path is None and repo_of(lora.name) is not None:
            path = cached_repo_file(lora.name)
            if path is None and not services.settings.downloads:
                raise InvalidField(
                    f"{field}: {lora.name!r} is a Hugging Face repo, not in this machine's "
                    f"Hugging Face cache, and downloads are off; put its .safetensors file "
                    f"into {folder} and name it by its file name without .safetensors",
                    field,
                )
            if path is None:
                continue  # downloaded when its job runs, its family checked then
        if path is None:
            shown = ", ".join(list(files)[:SHOWN_LORAS]) + (", ..." * (len(files) > SHOWN_LORAS))
            known = f"the LoRAs here: {shown}" if files else f"{folder} has none"
            raise InvalidField(
                f"{field}: no LoRA {lora.name!r} in {folder}"
                f"{did_you_mean(lora.name, files, quote=True)}; {known} (GET /api/loras)",
                field,
            )
        check_lora_family(model, f"loras.{index}", lora.name, lora_family(path))


def check_lora_family(model: ImageModel, where: str, name: str, family: str | None) -> None:
    """A LoRA must be made for the model's family (``where``: loras.N, in the message)."""
    if family == model.family:
        return
    if family is None:
        raise InvalidField(
            f"{where}: can't tell which model family LoRA {name!r} is for (its keys match "
            "no known LoRA format: diffusers/PEFT, kohya/A1111, BFL/XLabs Flux)",
            "loras",
        )
    takes = ", ".join(lora_models(family)) or "no model on this server"
    raise InvalidField(
        f"{where}: LoRA {name!r} is for {family} ({takes}), not for {model.name} ({model.family})",
        "loras",
    )
