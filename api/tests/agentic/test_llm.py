"""The agent's LLMs by name: what ``openai:`` and ``local:`` mean, a bad DD_AGENT_MODEL
stopping the server at start-up, and where ``local:`` finds this server's /v1."""

from __future__ import annotations

import pytest

from api.agentic.llm import LLM, endpoint, own_v1, parse_llm
from api.common.services import Services
from api.common.settings import SettingsError
from api.main import create_app


def test_names():
    assert parse_llm("openai:gpt-4o-mini") == LLM("openai", "gpt-4o-mini")
    assert parse_llm("openai:Qwen/Qwen2.5-7B-Instruct").name == "Qwen/Qwen2.5-7B-Instruct"
    assert parse_llm("local:qwen-2.5-vl").spec == "local:qwen-2.5-vl"
    for spec, words in (
        ("gpt-4o-mini", "names no provider"),
        ("openai:", "names no provider"),
        ("opneai:gpt-4o", "did you mean 'openai'"),
        ("local:qwen-2.5", "did you mean 'qwen-2.5-vl'"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_llm(spec)


def test_a_bad_default_model_stops_the_server_at_start_up(make_settings):
    with pytest.raises(SettingsError, match="DD_AGENT_MODEL: 'claude' names no provider"):
        create_app(make_settings(agent_model="claude"), devices=["cpu"])


def test_where_the_llm_is_asked(make_settings):
    settings = make_settings(host="0.0.0.0", port=5123, api_keys=["k1", "k2"], allow_no_auth=False)
    local = endpoint(LLM("local", "qwen-2.5-vl"), Services.from_settings(settings))
    assert (local.base_url, local.api_key) == ("http://127.0.0.1:5123/v1", "k1")
    assert own_v1("::1", 80) == "http://[::1]:80/v1"
    assert own_v1("gpu-box.studio", 5000) == "http://gpu-box.studio:5000/v1"
    proxied = make_settings(agent_local_base_url="https://dd.studio/v1")
    assert endpoint(LLM("local", "qwen-2.5-vl"), Services.from_settings(proxied)).base_url == (
        "https://dd.studio/v1"
    )
    openai = make_settings(openai_api_key="sk-1", openai_base_url=None)
    at_openai = endpoint(LLM("openai", "gpt-4o-mini"), Services.from_settings(openai))
    assert (at_openai.base_url, at_openai.api_key) == ("https://api.openai.com/v1", "sk-1")
