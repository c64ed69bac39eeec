"""A local fake of the OpenAI and Anthropic HTTP APIs for the adapter tests.

A threaded ``http.server`` bound to 127.0.0.1 on a free port replays scripted
responses in order: a JSON body, an SSE stream (optionally cut off mid-stream,
as in a provider outage), or an error status. Every request's path and JSON
body are recorded, so a test can assert what the SDK sent (or that nothing
was sent). The real ``openai`` / ``anthropic`` SDK clients talk to it over HTTP.
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


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a JSON document
    events: list[tuple[str | None, Any]] = field(default_factory=list)  # SSE (event, data)
    done_marker: bool = False  # OpenAI's "data: [DONE]"
    cut: bool = False  # drop the connection after the events (no clean end)


def sse(events: list[tuple[str | None, Any]], done_marker: bool = False) -> Reply:
    return Reply(events=events, done_marker=done_marker)


class FakeProvider:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[tuple[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append((self.path, json.loads(raw) if raw else None))
                reply = fake.replies.popleft() if fake.replies else Reply(status=599)
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
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider().start()
    try:
        yield fake
    finally:
        fake.stop()


# -- costwarden side of the adapter tests ---------------------------------------------------

ORG, WS = "acme", "ws-ai"

#: A test-only catalogue entry: an audio chat model pricing every audio unit.
AUDIO_CATALOGUE = """
[[model]]
model = "openai/gpt-4o-audio-preview"
max_output_tokens = 16384
[[model.price]]
effective_from = "2024-12-17T00:00:00Z"
input_tokens = "0.0000025"
cached_input_tokens = "0.00000125"
cache_write_tokens = "0.0000025"
output_tokens = "0.00001"
audio_input_tokens = "0.00004"
audio_output_tokens = "0.00008"
"""


def setup_costwarden(client: Any, budget_micros: int | None = 10_000_000) -> None:
    """The sample catalogue (+ the audio model), one org and workspace, a daily budget."""
    from costwarden.pricing import (
        load_catalogue,
        parse_catalogue,
        read_catalogue,
        sample_catalogue_path,
    )

    load_catalogue(client, read_catalogue(sample_catalogue_path()))
    load_catalogue(client, parse_catalogue(AUDIO_CATALOGUE, "audio"))
    client.upsert_org(ORG)
    client.upsert_workspace(ORG, WS)
    if budget_micros is not None:
        client.set_budget(ORG, "workspace", WS, "day", budget_micros)


def limits() -> Any:
    """The adapters' limits for the catalogue of :func:`setup_costwarden`."""
    from costwarden.integrations import Limits
    from costwarden.pricing import parse_catalogue, read_catalogue, sample_catalogue_path

    sample = read_catalogue(sample_catalogue_path())
    audio = parse_catalogue(AUDIO_CATALOGUE, "audio")
    return Limits({**Limits.from_catalogue(sample).models, **Limits.from_catalogue(audio).models})


def ledger(conn: Any) -> list[dict[str, Any]]:
    """Every charge entry, oldest first: reservation, model, usage, amount, approximate."""
    rows = conn.execute(
        "select reservation_id, model, usage, amount_micros, approximate from costwarden._ledger"
        " where entry_type = 'charge' order by seq"
    ).fetchall()
    keys = ("reservation_id", "model", "usage", "amount_micros", "approximate")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def reservation_states(client: Any) -> list[tuple[str, int, int]]:
    """(status, amount_micros, charged_micros) of every reservation, oldest first."""
    rows = sorted(client.reservations(ORG, limit=1000), key=lambda r: r.created_at)
    return [(r.status, r.amount_micros, r.charged_micros) for r in rows]
