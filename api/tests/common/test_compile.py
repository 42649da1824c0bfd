"""Compiling for speed (DD_COMPILE), on the CPU: what the GPU tests can't afford to find
out late."""

from __future__ import annotations

import torch
from torch import nn
from torch._dynamo.utils import counters

from api.common.pipelines import CompileBudget, compile_whole


def test_more_models_compiled_whole_than_dynamo_s_default_limit():
    """Every module compiled whole shares nn.Module's Dynamo cache: past its default 8 graphs
    (four models' denoisers and VAE decoders at two sizes each), a ninth compile would fail
    its job under fullgraph. Ten modules, each compiled once, all run compiled."""
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    torch.manual_seed(0)
    # from the defaults (restored afterwards)
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        for width in range(8, 18):
            module = nn.Sequential(nn.Linear(width, width), nn.ReLU())
            inputs = torch.randn(2, width)
            with torch.no_grad():
                eager = module(inputs)
                compile_whole(module)
                torch.testing.assert_close(module(inputs), eager)
        assert counters["stats"]["unique_graphs"] - before == 10
    torch._dynamo.reset()


def test_a_model_s_compile_budget_outlives_its_load():
    """DD_COMPILE=full: a model compiles its first two sizes; a third runs eagerly. Loaded
    again (a new instance: Dynamo uses the graphs it made for the first), the model still
    has its first two sizes compiled and still doesn't stop to compile a fourth."""
    torch._dynamo.reset()

    def load() -> tuple[nn.Module, CompileBudget]:
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        compile_whole(module)
        return module, CompileBudget.of("budget-test", "cpu", "full")

    def call(loaded: tuple[nn.Module, CompileBudget], rows: int) -> int:
        module, budget = loaded
        before = counters["stats"]["unique_graphs"]
        with torch.no_grad(), budget.calling(plain=True):
            module(torch.randn(rows, 6))
        return counters["stats"]["unique_graphs"] - before

    try:
        first = load()
        assert [call(first, rows) for rows in (1, 2, 3, 1)] == [1, 1, 0, 0]
        again = load()
        assert again[1] is first[1] and again[0] is not first[0]
        assert [call(again, rows) for rows in (1, 2, 4)] == [0, 0, 0]
        assert CompileBudget.of("budget-test", "cuda:1", "full") is not first[1]
    finally:
        torch._dynamo.reset()
