"""segment-anything end to end on the tiny Grounding DINO + SAM: clown mask, per-object masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from api.images.models.segmentation import PALETTE, detector_prompt
from api.images.registry import GROUNDING_DINO, SEGMENT_MAX_OBJECTS
from api.tests.conftest import assert_nothing_happened, files_under, png_metadata, write_image

SIZE = (80, 56)


def submit(client: TestClient, body: dict) -> dict:
    response = client.post("/api/images?wait=120", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_tiny_detector_finds_something_at_zero_thresholds(tiny_models: Path):
    folder = tiny_models / GROUNDING_DINO[0]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder)
    inputs = processor(
        images=Image.new("RGB", SIZE, (90, 120, 60)), text="a cat. a dog.", return_tensors="pt"
    )
    # BERT's ids, which Grounding DINO splits phrases on: [CLS] a cat . a dog . [SEP]
    assert inputs["input_ids"].tolist()[0][:1] + inputs["input_ids"].tolist()[0][-1:] == [101, 102]
    assert inputs["input_ids"].tolist()[0].count(1012) == 2
    found = processor.post_process_grounded_object_detection(
        model(**inputs), inputs["input_ids"], threshold=0.0, text_threshold=0.0
    )[0]
    assert len(found["scores"]) >= 1


def test_segments_into_clown_mask_and_object_masks(client: TestClient, workspace: Path):
    plate = write_image(workspace / "plate.png", SIZE)
    out = workspace / "renders" / "mattes.png"
    job = submit(
        client,
        {
            "model": "segment-anything",
            "prompt": "Cat, dog",
            "input_image_path": str(plate),
            "output_image_path": str(out),
            "box_threshold": 0,
            "text_threshold": 0,
        },
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"step": 2, "total": 2}
    result = job["result"]
    assert result["mode"] == "segmentation" and result["tiny_weights"] is True
    combined, *objects = result["images"]
    assert 1 <= len(objects) <= SEGMENT_MAX_OBJECTS
    assert combined["path"] == str(out) and combined["label"] is None
    with Image.open(out) as image:
        assert image.mode == "RGB" and image.size == SIZE
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3).tolist()}
    assert colours <= {(0, 0, 0), *PALETTE[: len(objects)]}
    meta = png_metadata(out)
    assert meta["box_threshold"] == 0 and meta["text_threshold"] == 0
    assert meta["prompt"] == "Cat, dog" and meta["model"] == "segment-anything"

    painted = np.zeros(SIZE[::-1], dtype=bool)
    scores = []
    for index, output in enumerate(objects):
        path = Path(output["path"])
        assert path == out.with_name(f"mattes_mask_{index}.png")
        assert (output["width"], output["height"]) == SIZE
        assert output["label"] and 0 < output["score"] <= 1
        scores.append(output["score"])
        with Image.open(path) as mask:
            assert mask.mode == "L" and mask.size == SIZE
            values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 255}
        painted |= values == 255
        meta = png_metadata(path)
        assert meta["label"] == output["label"] and meta["score"] == output["score"]
        assert client.get(output["url"]).content == path.read_bytes()
        assert Path(output["take_path"]).read_bytes() == path.read_bytes()
    assert scores == sorted(scores, reverse=True)
    # Where any object's mask is, the clown mask is coloured; elsewhere black.
    with Image.open(out) as image:
        coloured = np.asarray(image).any(axis=-1)
    assert np.array_equal(coloured, painted)
    # text_threshold 0: every prompt word counts for every object (special tokens dropped)
    assert {o["label"] for o in objects} == {"cat. dog"}


def test_models_list_shows_both_weights(client: TestClient):
    models = {m["name"]: m for m in client.get("/api/models").json()}
    weights = models["segment-anything"]["weights"]
    assert weights["repo"] == "facebook/sam-vit-huge" and weights["tiny"] is True
    assert weights["extra"] == [
        {
            "name": "grounding-dino",
            "repo": "IDEA-Research/grounding-dino-base",
            "source": "models_dir",
            "present": True,
            "tiny": True,
        }
    ]
    assert models["segment-anything"]["modes"] == ["segmentation"]


def test_nothing_found_fails_the_job(client: TestClient, workspace: Path, tmp_path: Path):
    plate = write_image(workspace / "plate.png", SIZE)
    job = submit(
        client,
        {
            "model": "segment-anything",
            "prompt": "a unicorn",
            "input_image_path": str(plate),
            "box_threshold": 1.0,
            "text_threshold": 1.0,
        },
    )
    assert job["status"] == "failed" and job["result"] is None
    error = job["error"]
    assert error["type"] == "nothing_found"
    assert "no objects found" in error["message"] and "'a unicorn'" in error["message"]
    assert "box_threshold 1.0" in error["message"] and "text_threshold 1.0" in error["message"]
    assert files_under(tmp_path / "data" / "outputs") == []


def test_detector_prompt():
    assert detector_prompt("Cat, dog") == "cat. dog."
    assert detector_prompt("a red car.") == "a red car."
    assert detector_prompt("person;\n tree. ") == "person. tree."


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"box_threshold": 1.5}, "box_threshold"),
        ({"text_threshold": -0.1}, "text_threshold"),
        ({"prompt": " . "}, "prompt"),
        ({"input_image_path": None}, "input_image_path"),
    ],
    ids=["box above 1", "text below 0", "no prompt", "no image"],
)
def test_rejected(client: TestClient, workspace: Path, tmp_path: Path, changes: dict, field: str):
    body = {
        "model": "segment-anything",
        "prompt": "cat",
        "input_image_path": str(write_image(workspace / "p.png")),
    } | changes
    before = files_under(tmp_path)
    response = client.post(
        "/api/images?wait=5", json={k: v for k, v in body.items() if v is not None}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and field in error["message"]
    assert_nothing_happened(client, tmp_path, before)
