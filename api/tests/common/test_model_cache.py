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


def test_loaded_memory_bounds_the_cache_by_bytes():
    """DD_MAX_LOADED_MEMORY: the least recently used go until the new model's bytes fit."""
    cache = ModelCache(max_entries=10, max_bytes=100)
    cache.get(CacheKey("a"), lambda: "A", needed_bytes=40)
    cache.get(CacheKey("b"), lambda: "B", needed_bytes=40)
    cache.get(CacheKey("a"), lambda: pytest.fail("a is resident"))
    cache.get(CacheKey("c"), lambda: "C", needed_bytes=50)  # 130 > 100: b (oldest) goes
    assert cache.keys() == [CacheKey("a"), CacheKey("c")]
    assert cache.resident_bytes() == 90
    cache.get(CacheKey("d"), lambda: "D", needed_bytes=100)  # only d fits
    assert cache.keys() == [CacheKey("d")]


class Parkable:
    """A model that can move its weights to host RAM and back (as images' LoadedModel)."""

    def __init__(self, name: str) -> None:
        self.name, self.where, self.released = name, "gpu", False

    def park(self) -> None:
        self.where = "ram"

    def unpark(self, device: str) -> None:
        self.where = device

    def release(self) -> None:
        self.released = True


def test_unloaded_models_are_kept_in_ram_and_come_back_without_a_load():
    """DD_UNLOADED_MODELS_RAM: an evicted model is parked, and the next request for it moves
    it back instead of loading it again; the RAM budget drops the oldest parked first."""
    budget = {"bytes": 100}
    cache = ModelCache(max_entries=1, park_bytes=lambda parked: budget["bytes"])
    a, b, c = Parkable("a"), Parkable("b"), Parkable("c")
    cache.get(CacheKey("a"), lambda: a, needed_bytes=60)
    cache.get(CacheKey("b"), lambda: b, needed_bytes=30)
    assert (cache.keys(), cache.parked(), a.where) == ([CacheKey("b")], [CacheKey("a")], "ram")
    back: Parkable = cache.get(CacheKey("a"), lambda: pytest.fail("a is in RAM"), needed_bytes=60)
    assert back is a and a.where == "cpu" and not a.released
    assert cache.parked() == [CacheKey("b")]
    cache.get(CacheKey("c"), lambda: c, needed_bytes=50)  # a (60) parks: b (30) + a = 90
    assert cache.parked() == [CacheKey("b"), CacheKey("a")]
    cache.get(CacheKey("b"), lambda: pytest.fail("b is in RAM"), needed_bytes=30)
    # c (50) parks next to a (60): 110 > 100, so a, the oldest parked, is released
    assert cache.parked() == [CacheKey("c")] and a.released and not c.released
    budget["bytes"] = 0  # no RAM to spare: evicted models are released
    cache.get(CacheKey("a2"), lambda: Parkable("a2"), needed_bytes=10)
    assert b.released and cache.parked() == [CacheKey("c")]


def test_models_loaded_for_cpu_offload_are_not_parked():
    """A model with no bytes on the GPU (optimize_low_vram) has nothing to move to RAM."""
    cache = ModelCache(max_entries=1, park_bytes=lambda parked: 10**12)
    a = Parkable("a")
    cache.get(CacheKey("a", offloaded=True), lambda: a, needed_bytes=0)
    cache.get(CacheKey("b"), lambda: Parkable("b"), needed_bytes=10)
    assert cache.parked() == [] and a.released


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        ("40GB", 0, 40 * 2**30),
        ("512MiB", 0, 512 * 2**20),
        ("60%", 1000, 600),
        ("0", 9, 0),
        ("1.5 gb", 0, int(1.5 * 2**30)),
        ("150%", 1000, 1000),
    ],
)
def test_memory_settings_read_bytes_and_shares(value, total, expected):
    from api.common.settings import memory_bytes

    assert memory_bytes(value, total) == expected


@pytest.mark.parametrize("name", ["DD_MAX_LOADED_MEMORY", "DD_UNLOADED_MODELS_RAM"])
def test_a_bad_memory_setting_stops_the_start_naming_it(name, monkeypatch):
    from api.common.settings import SettingsError, load_settings
    from api.domains import Settings

    monkeypatch.setenv(name, "lots")
    with pytest.raises(SettingsError, match=name):
        load_settings(Settings)
