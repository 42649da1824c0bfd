"""A small real HTTP server speaking OpenAI's chat completions API as the ``openai`` SDK
(under pydantic-ai) calls it, for tests: point ``OPENAI_BASE_URL`` at ``FakeLLM.base_url``.

``POST /v1/chat/completions`` (non-streaming; ``stream: true`` is refused, so a test notices
if the agent ever streams) checks the request as OpenAI documents it (a model, messages with
known roles, each ``tool`` message answering an earlier assistant tool call by its id,
function tools with a JSON schema) and answers as a storyboard LLM would: first a call to
every ``describe_*`` tool not yet answered, then the ``final_result`` tool with a breakdown
(one more shot per user message: a revision adds one). Its usage counts are the request's
messages' and the answer's sizes in characters. Every request is recorded.

``error`` (status, body) makes it answer that instead; ``answer`` replaces the breakdown's
arguments; ``hold`` cleared makes requests wait until it is set (``arrived`` says one came).
Every call needs ``Authorization: Bearer <KEY>`` (else OpenAI's 401)."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from api.tests.agentic.breakdowns import breakdown

KEY = "sk-test-agent"
ROLES = {"system", "developer", "user", "assistant", "tool"}


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict[str, Any]] = []  # the request bodies, in order
        self.headers_seen: list[dict[str, str]] = []
        self.error: tuple[int, dict[str, Any]] | None = None
        self.answer: dict[str, Any] | None = None  # final_result's arguments, if not the default
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # what it answered, summed

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone before its answer (a cancelled run) is no failure of the fake."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serving() -> Iterator[FakeLLM]:
    server = FakeLLM()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.hold.set()
        server.shutdown()
        server.server_close()


def problem(body: dict[str, Any]) -> str | None:
    """What OpenAI would refuse in a chat completions request, or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    called: set[str] = set()
    for index, message in enumerate(messages):
        if message.get("role") not in ROLES:
            return f"messages[{index}].role: invalid {message.get('role')!r}"
        for call in message.get("tool_calls") or []:
            if call.get("type") != "function" or "name" not in call.get("function", {}):
                return f"messages[{index}].tool_calls: each needs a function and its name"
            json.loads(call["function"].get("arguments", "{}"))
            called.add(call["id"])
        if message["role"] == "tool" and message.get("tool_call_id") not in called:
            return (
                f"messages[{index}]: a message with role 'tool' must be a response to a "
                "preceding message with 'tool_calls'"
            )
    for tool in body.get("tools") or []:
        function = tool.get("function", {})
        if tool.get("type") != "function" or not function.get("name"):
            return "tools: each needs type 'function' and a name"
        if function.get("parameters", {}).get("type") != "object":
            return f"tools: {function['name']}'s parameters must be a JSON schema object"
    if body.get("stream"):
        return "this fake answers without streaming only"
    return None


def storyboard(body: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """The assistant's message: tool calls for references not yet described, then the
    breakdown (as the final_result tool's call, or as JSON text when no tool is offered)."""
    tools = [tool["function"]["name"] for tool in body.get("tools") or []]
    answered = {
        call["function"]["name"]
        for message in body["messages"]
        for call in message.get("tool_calls") or []
    }
    wanted = [name for name in tools if name.startswith("describe_") and name not in answered]
    if wanted:
        return {"role": "assistant", "content": None, "tool_calls": [call(n, {}) for n in wanted]}
    users = sum(message["role"] == "user" for message in body["messages"])
    arguments = answer if answer is not None else breakdown(shots=users + 1)
    if "final_result" in tools:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("final_result", arguments)],
        }
    return {"role": "assistant", "content": json.dumps(arguments)}


def chat_completion(
    body: dict[str, Any],
    authorization: str | None,
    key: str,
    answer: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """OpenAI's answer to a chat completions request: (status, body)."""
    if authorization != f"Bearer {key}":
        return 401, {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    refused = problem(body)
    if refused:
        return 400, {"error": {"message": refused, "type": "invalid_request_error"}}
    message = storyboard(body, answer)
    usage = {
        "prompt_tokens": len(json.dumps(body["messages"])),
        "completion_tokens": len(json.dumps(message)),
    }
    return 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                "logprobs": None,
            }
        ],
        "usage": usage | {"total_tokens": sum(usage.values())},
    }


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(data)
        self.server.received.append(body)
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        self.server.arrived.set()
        self.server.hold.wait(30)
        if self.path != "/v1/chat/completions":
            return self._answer(404, {"error": {"message": f"no route {self.path}"}})
        if self.server.error is not None and self.headers.get("Authorization") == f"Bearer {KEY}":
            return self._answer(*self.server.error)
        status, answer = chat_completion(
            body, self.headers.get("Authorization"), KEY, self.server.answer
        )
        for name in self.server.usage:
            self.server.usage[name] += answer.get("usage", {}).get(name, 0)
        self._answer(status, answer)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
