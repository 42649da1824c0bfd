"""The images domain keeps the contract every domain's tests inherit (api/tests/contract.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.tests.conftest import image_request
from api.tests.contract import DomainContract


class TestImagesKeepTheContract(DomainContract):
    kind = "images"

    def quick(self, workspace: Path) -> dict[str, Any]:
        return image_request(workspace, "image_to_image", model="sd1.5")

    def slow(self, workspace: Path) -> dict[str, Any]:
        return {"model": "sd1.5", "prompt": "x", "num_inference_steps": 500} | {
            "max_width": 256,
            "max_height": 256,
        }

    def refused(self, workspace: Path) -> tuple[dict[str, Any], int, str]:
        missing = str(workspace / "no-such-plate.png")
        return {"model": "sd1.5", "input_image_path": missing}, 422, "input_image_path"
