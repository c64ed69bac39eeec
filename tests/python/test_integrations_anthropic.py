"""costwarden.integrations.anthropic: the real anthropic SDK against a local fake API,
reserving, metering and committing on a real PostgreSQL (SPEC §0, §14)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import psycopg
import pytest
from anthropic.types import Message, MessageDeltaUsage, Usage

import costwarden
from adapter_helpers import (
    ORG,
    WS,
    ledger,
    limits,
    reservation_states,
    setup_costwarden,
)
from costwarden import BudgetExceeded
from costwarden.integrations import SizingError, StreamAborted
from costwarden.integrations.anthropic import guard, usage_from_anthropic
from costwarden.integrations.testing import FakeProvider, Reply, fake_provider, sse

Conn = psycopg.Connection[Any]
MODEL = "claude-3-5-sonnet"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with fake_provider() as f:
        yield f


@pytest.fixture
def sdk(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0)


@pytest.fixture
def guarded(sdk: anthropic.Anthropic, client: costwarden.Client) -> Any:
    setup_costwarden(client)
    return guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits())


def usage(inp: int, out: int, read: int = 0, write: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }


def message(u: dict[str, Any], content: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-sonnet-20241022",
        "content": content or [{"type": "text", "text": "Bonjour!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": u,
    }


def stream_events(
    start: dict[str, Any], texts: list[str], final: dict[str, Any] | None
) -> list[tuple[str | None, Any]]:
    events: list[tuple[str | None, Any]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": message(start) | {"content": [], "stop_reason": None},
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in texts
    ]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if final is not None:
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": final,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
    return events


MESSAGES = [{"role": "user", "content": "Dis bonjour."}]
SYSTEM = [
    {"type": "text", "text": "Long shared context " * 50, "cache_control": {"type": "ephemeral"}}
]


MAPPING_ROWS = [
    (Usage(input_tokens=25, output_tokens=300), {"input_tokens": 25, "output_tokens": 300}),
    (  # input_tokens excludes the cache reads and writes: each maps to its own unit
        Usage(
            input_tokens=12,
            output_tokens=40,
            cache_read_input_tokens=1800,
            cache_creation_input_tokens=600,
        ),
        {
            "input_tokens": 12,
            "cached_input_tokens": 1800,
            "cache_write_tokens": 600,
            "output_tokens": 40,
        },
    ),
    (  # message_delta's cumulative usage
        MessageDeltaUsage(output_tokens=77, input_tokens=12, cache_read_input_tokens=1800),
        {"input_tokens": 12, "cached_input_tokens": 1800, "output_tokens": 77},
    ),
]


@pytest.mark.parametrize(("sdk_usage", "expected"), MAPPING_ROWS)
def test_usage_from_anthropic(sdk_usage: Any, expected: dict[str, int]) -> None:
    assert usage_from_anthropic(sdk_usage) == expected
    assert usage_from_anthropic(sdk_usage.model_dump()) == expected


def test_usage_from_a_message_parsed_by_the_sdk() -> None:
    parsed = Message.model_validate(message(usage(10, 20, read=300, write=40)))
    assert usage_from_anthropic(parsed.usage) == {
        "input_tokens": 10,
        "cached_input_tokens": 300,
        "cache_write_tokens": 40,
        "output_tokens": 20,
    }


def test_messages_create_commits_cache_reads_and_writes(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    fake.add(Reply(body=message(usage(12, 40, read=1800, write=600))))
    msg = guarded.messages.create(model=MODEL, system=SYSTEM, messages=MESSAGES, max_tokens=100)
    assert isinstance(msg, Message) and msg.content[0].text == "Bonjour!"
    assert fake.requests[0][0] == "/v1/messages"
    (entry,) = ledger(admin_conn)
    assert entry["model"] == "anthropic/claude-3-5-sonnet"
    assert entry["usage"] == {
        "input_tokens": 12,
        "cached_input_tokens": 1800,
        "cache_write_tokens": 600,
        "output_tokens": 40,
    }
    # 12 x 3 + 1800 x 0.3 + 600 x 3.75 + 40 x 15 = 36 + 540 + 2250 + 600 = 3426 micros
    assert entry["amount_micros"] == 3426 and entry["approximate"] is False


def test_tool_use_and_images(
    sdk: anthropic.Anthropic, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), image_tokens=1600)
    tools = [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}]
    content = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR" * 50_000},
        },
        {"type": "text", "text": "What is it?"},
    ]
    fake.add(
        Reply(
            body=message(
                usage(1700, 30),
                [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}}],
            )
        )
    )
    msg = g.messages.create(
        model=MODEL, tools=tools, max_tokens=64, messages=[{"role": "user", "content": content}]
    )
    assert msg.content[0].type == "tool_use"
    ((_, held, _),) = reservation_states(client)
    # the image data (250 kB) is not sized as text: the hold is the 1,600-token allowance
    # plus the text, overheads and tool preamble, far below 250k tokens
    assert 1600 * 3.75 < held < 4000 * 3.75 + 64 * 15
    assert ledger(admin_conn)[0]["usage"] == {"input_tokens": 1700, "output_tokens": 30}


def test_denied_before_any_request(
    sdk: anthropic.Anthropic, client: costwarden.Client, fake: FakeProvider
) -> None:
    setup_costwarden(client, budget_micros=10)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits())
    with pytest.raises(BudgetExceeded):
        g.messages.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    with (
        pytest.raises(BudgetExceeded),
        g.messages.stream(model=MODEL, messages=MESSAGES, max_tokens=100),
    ):
        pass
    assert fake.requests == []


WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
FILE_DOC = {
    "role": "user",
    "content": [
        {"type": "document", "source": {"type": "file", "file_id": "file_abc"}},
        {"type": "text", "text": "Summarize it."},
    ],
}


@pytest.mark.parametrize(
    ("what", "extra"),
    [
        ("web_search_20250305 tool", {"tools": [WEB_SEARCH]}),
        ("document by file id or URL", {"messages": [FILE_DOC]}),
        ("container", {"container": "container_abc"}),
    ],
)
def test_a_prompt_on_the_server_needs_an_explicit_bound(
    what: str,
    extra: dict[str, Any],
    guarded: Any,
    fake: FakeProvider,
    client: costwarden.Client,
) -> None:
    kwargs = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100, **extra}
    with pytest.raises(SizingError, match=f"{what}.*costwarden_prompt_tokens"):
        guarded.messages.create(**kwargs)
    with pytest.raises(SizingError, match=what):
        guarded.messages.stream(**kwargs)
    assert fake.requests == [] and reservation_states(client) == []


def test_the_explicit_prompt_bound_sizes_the_reservation(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    # web search results are read as input, in as many sampling turns as the model needs
    fake.add(Reply(body=message(usage(42_000, 300))))
    guarded.messages.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=400,
        tools=[WEB_SEARCH],
        costwarden_prompt_tokens=50_000,
    )
    assert "costwarden_prompt_tokens" not in fake.requests[0][1]
    ((status, held, charged),) = reservation_states(client)
    assert status == "committed" and charged == ledger(admin_conn)[0]["amount_micros"]
    assert held >= charged
    # the bound at the priciest input price (cache writes, 3.75), 400 output tokens at 15
    assert held == -(-(50_000 * 375 + 400 * 1500) // 100)


def test_client_side_tools_need_no_bound(guarded: Any, fake: FakeProvider) -> None:
    fake.add(Reply(body=message(usage(900, 20))))
    tools = [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"name": "lookup", "input_schema": {"type": "object"}},
    ]
    guarded.messages.create(model=MODEL, messages=MESSAGES, max_tokens=100, tools=tools)
    assert len(fake.requests) == 1


def test_sdk_error_releases_and_reraises(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(
        Reply(status=500, body={"type": "error", "error": {"type": "api_error", "message": "boom"}})
    )
    with pytest.raises(anthropic.InternalServerError):
        guarded.messages.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    assert [s for s, _, _ in reservation_states(client)] == ["released"]
    assert ledger(admin_conn) == []


def test_stream_true_commits_message_start_and_delta_usage(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    start = usage(12, 1, read=1800, write=600)
    fake.add(sse(stream_events(start, ["Bon", "jour"], {"output_tokens": 9})))
    events = list(
        guarded.messages.create(
            model=MODEL, system=SYSTEM, messages=MESSAGES, max_tokens=100, stream=True
        )
    )
    assert events[0].type == "message_start"
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {
        "input_tokens": 12,
        "cached_input_tokens": 1800,
        "cache_write_tokens": 600,
        "output_tokens": 9,
    }
    assert entry["approximate"] is False


def test_messages_stream_helper_is_metered_through_text_stream(
    sdk: anthropic.Anthropic, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), meter_every=2)
    texts = ["Bonjour ", "tout ", "le ", "monde"]
    fake.add(sse(stream_events(usage(12, 1), texts, {"output_tokens": 6})))
    with g.messages.stream(model=MODEL, messages=MESSAGES, max_tokens=100) as stream:
        assert "".join(stream.text_stream) == "Bonjour tout le monde"
        final = stream.get_final_message()
    assert final.usage.output_tokens == 6
    (info,) = client.reservations(ORG)
    assert info.status == "committed" and info.metered_micros > 0
    assert ledger(admin_conn)[0]["usage"] == {"input_tokens": 12, "output_tokens": 6}


def test_stream_without_message_delta_commits_approximate(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    fake.add(sse(stream_events(usage(30, 1, read=100), ["abcdefgh", "ijkl"], None)))
    list(guarded.messages.create(model=MODEL, messages=MESSAGES, max_tokens=100, stream=True))
    (entry,) = ledger(admin_conn)
    # the input side is exact from message_start; the output is the metered estimate
    assert entry["approximate"] is True
    assert entry["usage"] == {"input_tokens": 30, "cached_input_tokens": 100, "output_tokens": 3}


def test_abort_closes_the_stream_and_commits_partial_usage(
    sdk: anthropic.Anthropic, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), meter_every=4)
    fake.add(Reply(body=message(usage(10, 1))))
    g.messages.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    hold = reservation_states(client)[0][1]
    spent = ledger(admin_conn)[0]["amount_micros"]
    client.set_budget(ORG, "workspace", WS, "day", spent + hold + 20)
    fake.add(sse(stream_events(usage(10, 1), ["twelve bytes"] * 200, {"output_tokens": 600})))
    got = []
    with (
        pytest.raises(StreamAborted),
        g.messages.stream(model=MODEL, messages=MESSAGES, max_tokens=4) as stream,
    ):
        for text in stream.text_stream:
            got.append(text)
    assert 0 < len(got) < 50
    entries = ledger(admin_conn)
    assert len(entries) == 2 and entries[1]["approximate"] is True
    assert entries[1]["usage"]["input_tokens"] == 10
    assert reservation_states(client)[1][0] == "committed"


def test_async_create_and_stream(
    dsn: str, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    fake.add(Reply(body=message(usage(5, 6))))
    fake.add(sse(stream_events(usage(7, 1), ["a", "b"], {"output_tokens": 2})))
    fake.add(sse(stream_events(usage(8, 1), ["c"], {"output_tokens": 1})))

    async def main() -> str:
        sdk = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
        async with costwarden.AsyncClient(dsn) as acw:
            g = guard(sdk, acw, org_id=ORG, workspace_id=WS, limits=limits())
            m = await g.messages.create(model=MODEL, messages=MESSAGES, max_tokens=10)
            raw = await g.messages.create(
                model=MODEL, messages=MESSAGES, max_tokens=10, stream=True
            )
            kinds = [e.type async for e in raw]
            async with g.messages.stream(model=MODEL, messages=MESSAGES, max_tokens=10) as s:
                text = "".join([t async for t in s.text_stream])
            await sdk.close()
            return m.content[0].text + kinds[-1] + text

    assert asyncio.run(main()) == "Bonjour!message_stopc"
    assert [e["usage"] for e in ledger(admin_conn)] == [
        {"input_tokens": 5, "output_tokens": 6},
        {"input_tokens": 7, "output_tokens": 2},
        {"input_tokens": 8, "output_tokens": 1},
    ]


def test_everything_else_passes_through(guarded: Any, sdk: anthropic.Anthropic) -> None:
    assert guarded.models is sdk.models
    assert guarded.messages.batches is sdk.messages.batches
    assert guarded.with_options(timeout=3).timeout == 3
