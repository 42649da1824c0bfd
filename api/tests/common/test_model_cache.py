"""The resident-model cache: least recently used out first, and a second try after OOM."""

from __future__ import annotations

import threading

import pytest
import torch

from api.common.models import CacheKey, ModelCache, Weights
from api.tests.conftest import app_state


def test_least_recently_used_is_evicted():
    cache = ModelCache(max_entries=2)
    cache.get(CacheKey("a"), lambda: "A")
    cache.get(CacheKey("b"), lambda: "B")
    assert cache.get(CacheKey("a"), lambda: pytest.fail("a is resident")) == "A"
    cache.get(CacheKey("c"), lambda: "C")
    assert cache.keys() == [CacheKey("a"), CacheKey("c")]


def test_out_of_memory_while_loading_unloads_the_others_and_tries_again():
    cache = ModelCache(max_entries=4)
    cache.get(CacheKey("a"), lambda: "A")
    cache.get(CacheKey("b"), lambda: "B")
    attempts = []

    def load() -> str:
        attempts.append(len(cache.keys()))
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "C"

    assert cache.get(CacheKey("c"), load) == "C"
    assert attempts == [2, 0]  # the second try ran with nothing else resident
    assert cache.keys() == [CacheKey("c")]


def test_out_of_memory_with_nothing_to_unload_fails():
    cache = ModelCache(max_entries=4)

    def load() -> str:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        cache.get(CacheKey("a"), load)
    assert cache.keys() == []


def test_a_load_holds_no_lock_readers_need():
    cache = ModelCache(max_entries=4)
    cache.get(CacheKey("a"), lambda: "A")
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> str:
        loading.set()
        release.wait(30)
        return "B"

    loader = threading.Thread(target=cache.get, args=(CacheKey("b"), slow_load))
    loader.start()
    try:
        assert loading.wait(10)
        assert cache.keys() == [CacheKey("a")]  # answers while "b" loads
        assert cache.get(CacheKey("a"), lambda: pytest.fail("a is resident")) == "A"
    finally:
        release.set()
        loader.join(10)
    assert cache.keys() == [CacheKey("a"), CacheKey("b")]


def test_health_and_models_answer_while_a_model_loads(client):
    cache = app_state(client).services.model_cache("cpu")
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> str:
        loading.set()
        release.wait(30)
        return "loaded"

    loader = threading.Thread(target=cache.get, args=(CacheKey("a-slow-model"), slow_load))
    loader.start()
    try:
        assert loading.wait(10)
        assert client.get("/health").status_code == 200
        assert client.get("/api/models").status_code == 200
    finally:
        release.set()
        loader.join(10)
    assert CacheKey("a-slow-model") in cache.keys()


def test_two_devices_loading_at_once_build_whole_models(tiny_models):
    """diffusers and transformers patch torch process-wide while they build a model: two
    loads at once (two runners) must not see each other's meta tensors or skipped inits."""
    import torch

    from api.common.pipelines import Speed
    from api.images.models.diffusion import LoadedModel, load_model
    from api.images.registry import IMAGE_MODELS

    loaded: dict[str, LoadedModel] = {}
    errors: list[BaseException] = []

    def load(name: str) -> None:
        model = IMAGE_MODELS[name]
        weights = Weights("models_dir", str(tiny_models / name), tiny=True)
        try:
            loaded[name] = ModelCache(2).get(
                CacheKey(name),
                lambda: load_model(model, weights, "cpu", False, Speed(), torch.float32),
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=load, args=(name,)) for name in ("sdxl", "sd3", "flux-schnell")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for name, loaded_model in loaded.items():
        for component in loaded_model.base.components.values():
            for tensor in getattr(component, "state_dict", dict)().values():
                assert not tensor.is_meta, name
