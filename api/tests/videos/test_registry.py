"""The video registry: frame-count rules and output sizes."""

from __future__ import annotations

import pytest

from api.videos.registry import VIDEO_MODELS, VideoMode, valid_frames, video_size

LTX = VIDEO_MODELS["ltx-video"]
WAN = VIDEO_MODELS["wan-2.1"]
COG = VIDEO_MODELS["cogvideox"]
SVD = VIDEO_MODELS["stable-video-diffusion"]


def test_frames_rules_read_as_documented() -> None:
    assert {name: model.frames_rule for name, model in VIDEO_MODELS.items()} == {
        "stable-video-diffusion": "any",
        "cogvideox": "16k+1",
        "ltx-video": "8k+1",
        "wan-2.1": "4k+1",
        "runway-gen3a-turbo": "120k",
        "runway-gen4-turbo": "24k",
    }


@pytest.mark.parametrize("model", VIDEO_MODELS.values(), ids=list(VIDEO_MODELS))
def test_defaults_follow_their_own_rules(model) -> None:
    assert valid_frames(model, model.frames) == model.frames
    assert valid_frames(model, model.min_frames) == model.min_frames
    assert valid_frames(model, model.max_frames) == model.max_frames
    assert model.min_frames <= model.frames <= model.max_frames
    assert (model.max_frames - model.min_frames) % model.frame_step == 0
    assert model.width % model.size_multiple == 0 and model.height % model.size_multiple == 0
    assert video_size(model, model.width, model.height, None) == (model.width, model.height)
    assert VideoMode.image_to_video in model.modes
    assert model.external == (model.api_key_env is not None)
    assert (model.steps is None) == model.external


def test_only_ltx_does_text_to_video() -> None:
    assert [name for name, m in VIDEO_MODELS.items() if VideoMode.text_to_video in m.modes] == [
        "ltx-video"
    ]


@pytest.mark.parametrize(
    ("model", "requested", "expected"),
    [
        (LTX, 161, 161),
        (LTX, 160, 161),
        (LTX, 164, 161),
        (LTX, 165, 169),  # halfway between 161 and 169: up
        (LTX, 6, 9),  # below the minimum but nearest to it
        (LTX, 260, 257),  # above the maximum but nearest to it
        (WAN, 80, 81),
        (WAN, 10, 9),
        (COG, 49, 49),
        (COG, 60, 65),
        (COG, 24, 17),
        (SVD, 14, 14),
    ],
)
def test_valid_frames_rounds_to_the_nearest_count(model, requested: int, expected: int) -> None:
    assert valid_frames(model, requested) == expected


@pytest.mark.parametrize(
    ("model", "requested"),
    [(LTX, 0), (LTX, 4), (LTX, 262), (LTX, 100000), (WAN, 84), (COG, -5), (SVD, 1), (SVD, 26)],
)
def test_valid_frames_refuses_counts_out_of_range(model, requested: int) -> None:
    with pytest.raises(ValueError, match=f"{model.name} makes {model.min_frames} to "):
        valid_frames(model, requested)


@pytest.mark.parametrize(
    ("model", "bounds", "image", "expected"),
    [
        (WAN, (832, 480), (1920, 1080), (832, 464)),  # 16:9 in 832 wide: 468 high, down to 464
        (WAN, (832, 480), (1080, 1920), (256, 480)),  # portrait: the height bounds it (270)
        (WAN, (832, 480), (400, 300), (640, 480)),  # small inputs scale up to the bounds
        (LTX, (768, 512), (1920, 1080), (768, 416)),  # 432 rounded down to 32s
        (LTX, (768, 512), None, (768, 512)),  # text→video: the bounds
        (LTX, (700, 500), None, (672, 480)),  # ... rounded down to the multiple
        (SVD, (1024, 576), (1024, 576), (1024, 576)),
        (SVD, (1024, 1024), (3000, 1000), (1024, 336)),  # 341.3 high, down to 8s
        (COG, (1360, 768), (96, 48), (1360, 672)),  # 2:1 -> 680 high, down to 16s
        (LTX, (64, 64), (1000, 10), (64, 32)),  # never below one multiple
    ],
)
def test_video_size_keeps_the_aspect_inside_the_bounds(model, bounds, image, expected) -> None:
    assert video_size(model, bounds[0], bounds[1], image) == expected
