"""The resident-model cache: least recently used out first, and a second try after OOM."""

from __future__ import annotations

import pytest
import torch

from api.common.models import ModelCache


def test_least_recently_used_is_evicted():
    cache = ModelCache(max_entries=2)
    cache.get("a", lambda: "A")
    cache.get("b", lambda: "B")
    assert cache.get("a", lambda: pytest.fail("a is resident")) == "A"
    cache.get("c", lambda: "C")
    assert cache.keys() == ["a", "c"]


def test_out_of_memory_while_loading_unloads_the_others_and_tries_again():
    cache = ModelCache(max_entries=4)
    cache.get("a", lambda: "A")
    cache.get("b", lambda: "B")
    attempts = []

    def load() -> str:
        attempts.append(len(cache.keys()))
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "C"

    assert cache.get("c", load) == "C"
    assert attempts == [2, 0]  # the second try ran with nothing else resident
    assert cache.keys() == ["c"]


def test_out_of_memory_with_nothing_to_unload_fails():
    cache = ModelCache(max_entries=4)

    def load() -> str:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        cache.get("a", load)
    assert cache.keys() == []
