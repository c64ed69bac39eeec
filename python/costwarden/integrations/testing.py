"""A local fake of the OpenAI and Anthropic HTTP APIs, to run the real SDKs offline.

:class:`FakeProvider` is a threaded ``http.server`` bound to 127.0.0.1 on a free
port. It replays scripted replies in order: a JSON body, an SSE stream (optionally
cut off mid-stream, as in a provider outage), or an error status; when no reply is
queued it sends its ``default`` reply (else a 599 error). Every request's path and
JSON body are recorded, so a caller can see what the SDK sent (or that nothing was
sent). Point an SDK at it with ``openai.OpenAI(base_url=fake.url + "/v1", ...)`` or
``anthropic.Anthropic(base_url=fake.url, ...)``.

The adapters' tests, the demo's "OpenAI SDK in three lines" and ``costwarden bench
adapters`` use it; so can an application's own tests of its guarded calls. The
``openai_*`` / ``chat_*`` helpers build recorded-shape chat completion bodies and
streams. Standard library only: importing this module imports no SDK.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeProvider",
    "Reply",
    "chat_chunk",
    "chat_completion",
    "chat_text_stream",
    "chat_usage_chunk",
    "fake_provider",
    "openai_usage",
    "sse",
]


@dataclass
class Reply:
    """One scripted reply: a JSON ``body``, or SSE ``events`` ``(event, data)``."""

    status: int = 200
    body: Any = None  # a JSON document
    events: list[tuple[str | None, Any]] = field(default_factory=list)  # SSE (event, data)
    done_marker: bool = False  # OpenAI's "data: [DONE]"
    cut: bool = False  # drop the connection after the events (no clean end)


def sse(events: list[tuple[str | None, Any]], done_marker: bool = False) -> Reply:
    return Reply(events=events, done_marker=done_marker)


class FakeProvider:
    """The fake API server; :meth:`start` it, :meth:`add` replies, :meth:`stop` it."""

    def __init__(self, default: Reply | None = None, *, record: bool = True) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[tuple[str, Any]] = []
        self.default = default
        self.record = record
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def _next(self) -> Reply:
        try:
            return self.replies.popleft()
        except IndexError:
            return self.default if self.default is not None else Reply(status=599)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in separate writes: without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK hold the body back ~40 ms
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                if fake.record:
                    fake.requests.append((self.path, json.loads(raw) if raw else None))
                reply = fake._next()
                if reply.events or reply.done_marker:
                    self._stream(reply)
                else:
                    self._json(reply)

            def _json(self, reply: Reply) -> None:
                body = json.dumps(
                    reply.body if reply.body is not None else {"error": {"message": "x"}}
                ).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for event, data in reply.events:
                    head = f"event: {event}\n" if event else ""
                    self._chunk(f"{head}data: {json.dumps(data)}\n\n".encode())
                if reply.cut:
                    self.close_connection = True
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                if reply.done_marker:
                    self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler

    def start(self) -> FakeProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fake_provider(default: Reply | None = None, *, record: bool = True) -> Iterator[FakeProvider]:
    """A started :class:`FakeProvider`, stopped on exit."""
    fake = FakeProvider(default, record=record).start()
    try:
        yield fake
    finally:
        fake.stop()


# -- recorded-shape OpenAI chat completions ----------------------------------------------

_CHAT_ID = "chatcmpl-1"
_CHAT_MODEL = "gpt-4o-mini-2024-07-18"
_CREATED = 1733000000


def openai_usage(
    prompt: int,
    completion: int,
    *,
    cached: int = 0,
    reasoning: int = 0,
    audio_in: int = 0,
    audio_out: int = 0,
) -> dict[str, Any]:
    """A chat completion's ``usage`` (``prompt_tokens`` includes the cached and audio
    tokens, ``completion_tokens`` the reasoning and audio ones, as OpenAI reports)."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio_in},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": audio_out,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(usage: dict[str, Any], message: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``chat.completion`` body with one choice (default: "Hello!")."""
    return {
        "id": _CHAT_ID,
        "object": "chat.completion",
        "created": _CREATED,
        "model": _CHAT_MODEL,
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": message or {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "tool_calls" if message and "tool_calls" in message else "stop",
            }
        ],
        "usage": usage,
    }


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice's ``delta``."""
    return {
        "id": _CHAT_ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": _CHAT_MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def chat_usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    """The last chunk of a stream sent with ``include_usage``: no choices, the usage."""
    return {
        "id": _CHAT_ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": _CHAT_MODEL,
        "choices": [],
        "usage": usage,
    }


def chat_text_stream(words: list[str], usage: dict[str, Any] | None) -> Reply:
    """A streamed chat completion of ``words``, then (when given) the usage chunk."""
    events: list[tuple[str | None, Any]] = [
        (None, chat_chunk({"role": "assistant", "content": ""}))
    ]
    events += [(None, chat_chunk({"content": w})) for w in words]
    events.append((None, chat_chunk({}, "stop")))
    if usage is not None:
        events.append((None, chat_usage_chunk(usage)))
    return sse(events, done_marker=True)
