"""A fake OpenAI-compatible chat model server, speaking the real wire protocol over HTTP.

Routes (under `/v1`, like api.openai.com, Ollama's and OpenRouter's compatible APIs):
`POST /v1/chat/completions` (plain JSON, or server-sent events when `stream` is true)
and `GET /v1/models`. A Bearer token is required (any non-empty one; `api_key` names
the one the tests configure, and a different one is refused with OpenAI's 401).

Answers are scripted per test: `answer(*replies)` queues them, one per completion
request, oldest first; when the queue is empty `default` is used. A reply is
  - a str: the assistant message's content;
  - a dict: sent as the content, JSON-encoded (what a model in JSON mode writes);
  - `ModelError(status, message)`: OpenAI's error body with that HTTP status;
  - a callable(request_json) -> any of the above, to answer from what the model saw.
`down(status)` makes every completion fail until `up()`. Every completion request is
kept in `completions` (the parsed JSON body), so a test can assert what the model saw.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify, request

from .server import FakeServer

MODEL = "fake-gpt"
VISION_MODEL = "fake-gpt-vision"


@dataclass(frozen=True)
class ModelError:
    status: int = 500
    message: str = "The server had an error while processing your request."
    type: str = "server_error"


Reply = "str | dict | ModelError | Callable[[dict], Any]"


class FakeOpenAi(FakeServer):
    def __init__(self, api_key: str = "sk-test-fake-openai"):
        super().__init__("fake-openai")
        self.api_key = api_key
        self.default: Any = {"text": "Hello from the fake model.", "escalate": False, "intent": "greeting",
                             "language": "en"}
        self._script: deque = deque()
        self._down: ModelError | None = None
        self._completions: list[dict] = []
        self._script_lock = threading.Lock()
        self.app.add_url_rule("/v1/chat/completions", "completions", self._completion, methods=["POST"])
        self.app.add_url_rule("/v1/models", "models", self._models, methods=["GET"])

    # -- scripting ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What goes into an OpenAI credential's Base URL."""
        return f"{self.url}/v1"

    def answer(self, *replies: Any) -> None:
        with self._script_lock:
            self._script.extend(replies)

    def down(self, status: int = 503, message: str = "The model is overloaded.") -> None:
        with self._script_lock:
            self._down = ModelError(status, message, "server_error")

    def up(self) -> None:
        with self._script_lock:
            self._down = None

    def reset(self) -> None:
        """Forget the script, the recorded requests and any outage (between tests)."""
        with self._script_lock:
            self._script.clear()
            self._down = None
            self._completions.clear()
        with self._lock:
            self._requests.clear()

    @property
    def completions(self) -> list[dict]:
        """The JSON body of every chat completion request so far, oldest first."""
        with self._script_lock:
            return list(self._completions)

    # -- the protocol -----------------------------------------------------------------------
    def _authorized(self) -> bool:
        return self.bearer_token() == self.api_key

    @staticmethod
    def _error(status: int, message: str, kind: str, code: str | None = None) -> Response:
        return jsonify({"error": {"message": message, "type": kind, "param": None, "code": code}}), status

    def _models(self):
        if not self._authorized():
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        now = int(time.time())
        return jsonify({"object": "list", "data": [
            {"id": name, "object": "model", "created": now, "owned_by": "baton-tests"}
            for name in (MODEL, VISION_MODEL)]})

    def _completion(self):
        if not self._authorized():
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return self._error(400, "'messages' and 'model' are required.", "invalid_request_error")
        with self._script_lock:
            self._completions.append(body)
            reply = self._down or (self._script.popleft() if self._script else self.default)
        if callable(reply) and not isinstance(reply, ModelError):
            reply = reply(body)
        if isinstance(reply, ModelError):
            return self._error(reply.status, reply.message, reply.type)
        content = reply if isinstance(reply, str) else json.dumps(reply)
        if body.get("stream"):
            return self._streamed(body, content)
        return jsonify(self._completion_object(body, content))

    @staticmethod
    def _usage(body: dict, content: str) -> dict:
        prompt = sum(len(json.dumps(m.get("content"))) // 4 for m in body["messages"])
        completion = max(1, len(content) // 4)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion_object(self, body: dict, content: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": body["model"], "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": self._usage(body, content)}

    def _streamed(self, body: dict, content: str) -> Response:
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> str:
            data = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                    "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""}, None)
            for start in range(0, len(content), 16):
                yield chunk({"content": content[start:start + 16]}, None)
            yield chunk({}, "stop", self._usage(body, content))
            yield "data: [DONE]\n\n"
        return Response(events(), 200, mimetype="text/event-stream")


def user_texts(completion: dict) -> list[str]:
    """The text of every user message the model was sent (content parts flattened)."""
    return [text for m in completion["messages"] if m.get("role") == "user" for text in _texts(m.get("content"))]


def all_texts(completion: dict) -> list[str]:
    return [text for m in completion["messages"] for text in _texts(m.get("content"))]


def images(completion: dict) -> list[str]:
    """The image URLs (often data: URLs) of every content part of type image_url."""
    return [part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part.get("image_url")
            for m in completion["messages"] if isinstance(m.get("content"), list)
            for part in m["content"] if part.get("type") == "image_url"]


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part.get("text", "") for part in content if part.get("type") == "text"]
    return []
