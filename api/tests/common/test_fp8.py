"""DD_PRECISION=fp8: the FP8 linear layers' arithmetic (torch._scaled_mm runs on the CPU
too), which layers of a denoiser take it, the refusal to start without an FP8 GPU, and the
precision each result records. On the GPU: api/tests/images/test_gpu_fp8.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from api.common.fp8 import (
    FP8,
    FP8_MAX,
    FP8Linear,
    dequantise_rows,
    fp8_layers,
    quantise_rows,
    use_fp8_linears,
    uses_fp8,
)
from api.common.pipelines import precision_of
from api.common.settings import SettingsError
from api.main import create_app
from api.tests.common.test_settings_and_cli import python_m_api
from api.tests.conftest import image_request, png_metadata, run_job


def rows(count: int, width: int, seed: int = 0) -> torch.Tensor:
    """Rows of very different ranges (1e-3 to 1e3), as activations of different tokens."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(count, width, generator=generator)
    return values * torch.logspace(-3, 3, count)[:, None]


def test_rows_quantise_with_a_scale_each_and_come_back_within_fp8_rounding():
    values = rows(8, 64)
    quantised, scale = quantise_rows(values)
    assert quantised.dtype == FP8 and quantised.shape == (8, 64)
    assert scale.dtype == torch.float32 and scale.shape == (8, 1)
    # each row's largest magnitude is FP8's largest: the whole range of every row is used
    assert torch.equal(quantised.float().abs().amax(dim=1), torch.full((8,), FP8_MAX))
    back = dequantise_rows(quantised, scale)
    # e4m3 keeps 3 mantissa bits: a value is off by at most 1/16 of itself, plus the
    # subnormals' step (2^-9 of the scale) near zero
    bound = values.abs() / 16 + scale * 2**-9
    assert torch.all((back - values).abs() <= bound * (1 + 1e-6))
    # relative to each row's range, the error stays small
    relative = (back - values).norm(dim=1) / values.norm(dim=1)
    assert torch.all(relative < 0.05), relative


def test_a_zero_row_stays_zero():
    values = torch.zeros(3, 32)
    values[1] = torch.linspace(-1, 1, 32)
    quantised, scale = quantise_rows(values)
    assert torch.isfinite(scale).all()
    back = dequantise_rows(quantised, scale)
    assert torch.equal(back[0], torch.zeros(32)) and torch.equal(back[2], torch.zeros(32))


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_is_the_linear_of_its_quantised_parts(bias: bool):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        if bias:
            linear.bias.uniform_(-2, 2)  # large enough that a lost bias shows
    layer = FP8Linear(linear)
    inputs = rows(2 * 5, 64, seed=1).reshape(2, 5, 64).to(torch.bfloat16)
    out = layer(inputs)
    assert out.shape == (2, 5, 48) and out.dtype == torch.bfloat16
    # exactly the product of the dequantised input and weight (bf16 out)
    x, x_scale = quantise_rows(inputs.reshape(-1, 64))
    expected = (
        dequantise_rows(x, x_scale) @ dequantise_rows(layer.weight, layer.weight_scale.t()).t()
    )
    if bias:
        expected = expected + linear.bias.float()
    torch.testing.assert_close(out.reshape(-1, 48).float(), expected, rtol=1e-2, atol=1e-2)
    # and close to the bf16 layer it replaces
    reference = linear(inputs).float()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.08, error


def test_fp8_linear_compiles_whole_as_the_server_compiles_blocks():
    """fullgraph=True, as compile_repeated_blocks asks: no graph break, the eager result."""
    torch.manual_seed(0)
    block = nn.Sequential(
        FP8Linear(nn.Linear(64, 128).to(torch.bfloat16)),
        nn.GELU(),
        FP8Linear(nn.Linear(128, 64).to(torch.bfloat16)),
    )
    inputs = torch.randn(2, 10, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        eager = block(inputs)
        block.compile(fullgraph=True)
        compiled = block(inputs)
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)


def test_dtype_casts_leave_the_fp8_weights_be():
    """A pipeline's from_pipe(dtype=...) casts every module: FP8 weights must survive it."""
    torch.manual_seed(0)
    layer = FP8Linear(nn.Linear(32, 32).to(torch.bfloat16))
    inputs = torch.randn(4, 32, dtype=torch.bfloat16)
    before = layer(inputs)
    layer.to(torch.float32).to(torch.bfloat16)
    assert layer.weight.dtype == FP8 and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer(inputs), before)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.Module()
        self.norm1.linear = nn.Linear(32, 96)  # an adaptive norm's: one row per image
        self.to_q = nn.Linear(32, 32)
        self.ff = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32))
        self.odd = nn.Linear(32, 40)  # 40 is no multiple of 16: the kernel can't

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.to_q(x))


class Denoiser(nn.Module):
    _repeated_blocks = ["Block"]

    def __init__(self) -> None:
        super().__init__()
        self.proj_in = nn.Linear(32, 32)  # entry and exit projections: kept
        self.time_embed = nn.Sequential(nn.Linear(32, 32))
        self.blocks = nn.ModuleList([Block(), Block()])
        self.proj_out = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for block in self.blocks:
            x = block(x)
        return self.proj_out(x)


def test_the_blocks_linear_layers_take_fp8_not_norms_embedders_or_ends(
    monkeypatch: pytest.MonkeyPatch,
):
    chosen = [f"blocks.{i}.{name}" for i in (0, 1) for name in ("to_q", "ff.0", "ff.2")]
    assert fp8_layers(Denoiser()) == chosen
    # a denoiser naming no repeated blocks: all of it, by the same rules
    monkeypatch.setattr(Denoiser, "_repeated_blocks", [])
    assert fp8_layers(Denoiser()) == chosen


def test_a_tiny_flux_transformer_runs_in_fp8_close_to_bf16(tiny_models: Path):
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(
        tiny_models / "flux-schnell", subfolder="transformer", dtype=torch.bfloat16
    )
    inputs = flux_inputs(transformer)
    with torch.no_grad():
        reference = transformer(**inputs).sample.float()
    chosen = fp8_layers(transformer)
    assert not uses_fp8(transformer)
    assert use_fp8_linears(transformer) == len(chosen) > 0
    names = [name for name, m in transformer.named_modules() if isinstance(m, FP8Linear)]
    assert names == chosen
    assert not any("norm" in name or "emb" in name for name in names)
    with torch.no_grad():
        out = transformer(**inputs).sample.float()
    assert out.shape == reference.shape and torch.isfinite(out).all()
    error = (out - reference).norm() / reference.norm()
    assert 0 < error < 0.2, error

    class Pipe:  # what precision_of reads: the pipeline's denoiser
        pass

    pipe = Pipe()
    pipe.transformer = transformer  # type: ignore[attr-defined]
    assert precision_of(pipe) == "fp8"


def flux_inputs(transformer: Any) -> dict[str, torch.Tensor]:
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    tokens, text = 16, 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(torch.bfloat16)

    return {
        "hidden_states": randn(1, tokens, config.in_channels),
        "encoder_hidden_states": randn(1, text, config.joint_attention_dim),
        "pooled_projections": randn(1, config.pooled_projection_dim),
        "timestep": torch.tensor([0.5], dtype=torch.bfloat16),
        "img_ids": torch.zeros(tokens, 3),
        "txt_ids": torch.zeros(text, 3),
    }


def test_fp8_without_an_fp8_gpu_refuses_to_start(make_settings):
    with pytest.raises(SettingsError, match="DD_PRECISION: fp8 needs CUDA GPUs") as raised:
        create_app(make_settings(precision="fp8"), devices=["cpu"])
    assert "cpu (no FP8 matmuls)" in str(raised.value)
    assert "DD_PRECISION=auto" in str(raised.value)


def test_serve_and_worker_with_fp8_on_the_cpu_stop_with_the_reason(tmp_path: Path):
    env = os.environ | {
        "DD_DATA_DIR": str(tmp_path / "data"),
        "DD_DEVICE": "cpu",
        "DD_PRECISION": "fp8",
    }
    served = python_m_api("serve", env=env)
    assert served.returncode == 2
    assert "DD_PRECISION: fp8 needs CUDA GPUs of compute capability 8.9" in served.stderr
    worker = python_m_api(
        "worker", "--device", "cpu", env=env | {"DD_BROKER_URL": "redis://127.0.0.1:6379/5"}
    )
    assert worker.returncode == 2
    assert "DD_PRECISION: fp8 needs CUDA GPUs" in worker.stderr


def test_results_and_outputs_record_the_precision(client: TestClient, workspace: Path):
    out = workspace / "sh010.png"
    job = run_job(
        client,
        image_request(workspace, "text_to_image", model="flux-schnell", output_image_path=str(out)),
    )
    assert job["result"]["precision"] == "fp32"  # the CPU computes in float32
    assert png_metadata(out)["precision"] == "fp32"
