"""Compiling for speed (DD_COMPILE), on the CPU: what the GPU tests can't afford to find
out late."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from api.common.pipelines import compile_whole


def test_more_models_compiled_whole_than_dynamo_s_default_limit(monkeypatch: pytest.MonkeyPatch):
    """Every module compiled whole shares nn.Module's Dynamo cache: past its default 8 graphs
    (four models' denoisers and VAE decoders at two sizes each), a ninth compile would fail
    its job under fullgraph. Ten modules, each compiled once, all run compiled."""
    config = torch._dynamo.config
    monkeypatch.setattr(config, "recompile_limit", 8)  # the default, restored afterwards
    monkeypatch.setattr(config, "accumulated_recompile_limit", 256)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    torch.manual_seed(0)
    try:
        for width in range(8, 18):
            module = nn.Sequential(nn.Linear(width, width), nn.ReLU())
            inputs = torch.randn(2, width)
            with torch.no_grad():
                eager = module(inputs)
                compile_whole(module)
                torch.testing.assert_close(module(inputs), eager)
        assert counters["stats"]["unique_graphs"] - before == 10
    finally:
        torch._dynamo.reset()
