"""FP8 linear layers for the diffusion denoisers (``DD_PRECISION=fp8``; Ada, Hopper and later).

Each chosen ``nn.Linear`` of a denoiser is replaced, once after loading, by an ``FP8Linear``:
its weight quantised to float8_e4m3fn with a float32 scale per output row, its input
quantised per row (per token) as it comes, and the product taken by ``torch._scaled_mm``
(accumulated in float32, bf16 out, the bias added in the same kernel). Under
``torch.compile`` the input's quantisation fuses into one kernel before the matmul.

Which layers: the linear layers of the denoiser's repeated blocks (``_repeated_blocks``; the
whole denoiser where it names none), where nearly all of its matmul time is, except

- the adaptive norms' and embedders' (a path part with ``norm`` or ``emb``): one row per
  image or a few text tokens, no time to win, and they steer every token of the block;
- the denoiser's own entry and exit projections (its direct children);
- layers whose sizes the FP8 kernel can't take (both divisible by 16).
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
# Rows whose largest magnitude is below this are scaled as if it were this (no 0 / 0).
SMALLEST_RANGE = 1e-12
# torch._scaled_mm with per-row scales: CUDA compute capability 8.9 (Ada) and newer.
FP8_CAPABILITY = (8, 9)
SKIPPED_PARTS = ("norm", "emb")


def quantise_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D tensor as float8_e4m3fn rows and one float32 scale per row, shaped (rows, 1):
    ``values ≈ quantised.float() * scale``, each row's largest magnitude mapped to 448."""
    largest = values.abs().amax(dim=-1, keepdim=True).float().clamp(min=SMALLEST_RANGE)
    scale = largest / FP8_MAX
    quantised = (values.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return quantised, scale


def dequantise_rows(quantised: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 values ``quantise_rows`` stands for."""
    return quantised.float() * scale


def scaled_matmul(
    inputs: torch.Tensor,
    input_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``(inputs * input_scale) @ (weight * weight_scale.T).T + bias`` in bf16: FP8 rows
    (M, K) and (N, K), scales (M, 1) and (1, N) float32, bias (N,) bf16."""
    return torch._scaled_mm(
        inputs,
        weight.t(),  # column-major (K, N), as the kernel wants it
        scale_a=input_scale,
        scale_b=weight_scale,
        bias=bias,
        out_dtype=torch.bfloat16,
        use_fast_accum=True,
    )


class FP8Linear(nn.Module):
    """A Linear layer computing in FP8: the weight quantised once (a scale per output row),
    the input per row as it comes. Its FP8 weight and float32 scales are kept as integer
    views, so that a pipeline's dtype cast (``from_pipe``, ``.to(bf16)``) leaves them be;
    device moves apply as to any buffer."""

    weight_bits: torch.Tensor
    scale_bits: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight, scale = quantise_rows(linear.weight.detach())
        self.register_buffer("weight_bits", weight.view(torch.uint8))
        self.register_buffer("scale_bits", scale.reshape(1, -1).contiguous().view(torch.int32))
        bias = linear.bias
        self.bias = (
            None
            if bias is None
            else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)
        )

    @property
    def weight(self) -> torch.Tensor:
        """The FP8 weight, (out_features, in_features)."""
        return self.weight_bits.view(FP8)

    @property
    def weight_scale(self) -> torch.Tensor:
        """Each output row's float32 scale, (1, out_features)."""
        return self.scale_bits.view(torch.float32)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows, scale = quantise_rows(inputs.reshape(-1, self.in_features))
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        out = scaled_matmul(rows, scale, self.weight, self.weight_scale, bias)
        return out.reshape(*inputs.shape[:-1], self.out_features).to(inputs.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, fp8=e4m3fn (per-row scales)"
        )


def fp8_layers(denoiser: nn.Module) -> list[str]:
    """The qualified names of the denoiser's linear layers that FP8 takes (module doc)."""
    block_classes = set(getattr(denoiser, "_repeated_blocks", None) or ())
    blocks = [
        name
        for name, module in denoiser.named_modules()
        if name and type(module).__name__ in block_classes
    ]
    chosen = []
    for name, module in denoiser.named_modules():
        if not isinstance(module, nn.Linear) or "." not in name:
            continue
        if blocks and not any(name.startswith(block + ".") for block in blocks):
            continue
        if any(skipped in part for part in name.split(".") for skipped in SKIPPED_PARTS):
            continue
        if module.in_features % 16 or module.out_features % 16:
            continue
        chosen.append(name)
    return chosen


@torch.no_grad()
def use_fp8_linears(denoiser: nn.Module) -> int:
    """Replace the denoiser's chosen linear layers (``fp8_layers``) by FP8Linear, in place,
    one at a time (the bf16 weight of each freed as it goes); returns how many."""
    names = fp8_layers(denoiser)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = denoiser.get_submodule(parent_name)
        setattr(parent, child, FP8Linear(getattr(parent, child)))
    return len(names)


def uses_fp8(module: nn.Module) -> bool:
    """Whether any of the module's layers computes in FP8."""
    return any(isinstance(layer, FP8Linear) for layer in module.modules())


def fp8_capable(device: str) -> bool:
    """Whether ``device`` is a CUDA GPU with FP8 matmuls (compute capability 8.9 or newer)."""
    return device.startswith("cuda") and torch.cuda.get_device_capability(device) >= FP8_CAPABILITY
