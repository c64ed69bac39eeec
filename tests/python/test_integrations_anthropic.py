"""costwarden.integrations.anthropic: the real anthropic SDK against a local fake API,
reserving, metering and committing on a real PostgreSQL (SPEC §0, §14)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import psycopg
import pydantic
import pytest
from anthropic.types import Message, MessageDeltaUsage, Usage
from anthropic.types.beta import BetaMessageDeltaUsage, BetaUsage

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
from costwarden.integrations import NotGuarded, SizingError, StreamAborted
from costwarden.integrations._sizing import json_bytes
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
    assert guarded.beta.models is sdk.beta.models
    assert guarded.messages.batches.retrieve.__self__ is sdk.messages.batches
    assert guarded.with_options(timeout=3).timeout == 3


# -- every method of messages and beta.messages ---------------------------------------------


class Greeting(pydantic.BaseModel):
    greeting: str


CALL = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}


def entered(manager: Any) -> Any:
    with manager as stream:
        return stream


async def async_entered(manager: Any) -> Any:
    async with manager as stream:
        return stream


SYNC_CALLS: dict[str, Callable[[Any], Any]] = {
    "messages.parse": lambda g: g.messages.parse(**CALL, output_format=Greeting),
    "messages.with_raw_response.create": lambda g: g.messages.with_raw_response.create(**CALL),
    "with_raw_response.messages.create": lambda g: g.with_raw_response.messages.create(**CALL),
    "beta.messages.create": lambda g: g.beta.messages.create(**CALL),
    "beta.messages.create(stream=True)": lambda g: g.beta.messages.create(**CALL, stream=True),
    "beta.messages.parse": lambda g: g.beta.messages.parse(**CALL, output_format=Greeting),
    "beta.messages.stream": lambda g: entered(g.beta.messages.stream(**CALL)),
    "beta.messages.with_raw_response.create": lambda g: g.beta.messages.with_raw_response.create(
        **CALL
    ),
    "beta.messages.with_raw_response.parse": lambda g: g.beta.messages.with_raw_response.parse(
        **CALL, output_format=Greeting
    ),
    "with_raw_response.beta.messages.create": lambda g: g.with_raw_response.beta.messages.create(
        **CALL
    ),
    "beta.with_raw_response.messages.parse": lambda g: g.beta.with_raw_response.messages.parse(
        **CALL
    ),
    "copy(...).messages.create": lambda g: g.copy(timeout=5).messages.create(**CALL),
    "with_options(...).beta.messages.stream": lambda g: entered(
        g.with_options(timeout=5).beta.messages.stream(**CALL)
    ),
}


@pytest.mark.parametrize("call", list(SYNC_CALLS))
def test_every_model_call_is_reserved_first_and_refused_over_the_limit(
    call: str, sdk: anthropic.Anthropic, client: costwarden.Client, fake: FakeProvider
) -> None:
    setup_costwarden(client, budget_micros=0)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits())
    with pytest.raises(BudgetExceeded):
        SYNC_CALLS[call](g)
    assert fake.requests == []
    assert [s for s, _, _ in reservation_states(client)] == ["denied"]


ASYNC_CALLS: dict[str, Callable[[Any], Awaitable[Any]]] = {
    "messages.parse": lambda g: g.messages.parse(**CALL, output_format=Greeting),
    "messages.with_raw_response.create": lambda g: g.messages.with_raw_response.create(**CALL),
    "beta.messages.create": lambda g: g.beta.messages.create(**CALL),
    "beta.messages.parse": lambda g: g.beta.messages.parse(**CALL, output_format=Greeting),
    "beta.messages.stream": lambda g: async_entered(g.beta.messages.stream(**CALL)),
    "beta.messages.with_raw_response.parse": lambda g: g.beta.messages.with_raw_response.parse(
        **CALL
    ),
}


@pytest.mark.parametrize("call", list(ASYNC_CALLS))
def test_every_async_model_call_is_reserved_first_and_refused_over_the_limit(
    call: str, dsn: str, client: costwarden.Client, fake: FakeProvider
) -> None:
    setup_costwarden(client, budget_micros=0)

    async def main() -> None:
        sdk = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
        async with costwarden.AsyncClient(dsn) as acw:
            g = guard(sdk, acw, org_id=ORG, workspace_id=WS, limits=limits())
            with pytest.raises(BudgetExceeded):
                await ASYNC_CALLS[call](g)
        await sdk.close()

    asyncio.run(main())
    assert fake.requests == []
    assert [s for s, _, _ in reservation_states(client)] == ["denied"]


ADVISOR = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-1"}

#: what cannot be committed, and the words its NotGuarded names it by
REFUSED: dict[str, tuple[Callable[[Any], Any], str]] = {
    "messages.with_streaming_response.create": (
        lambda g: g.messages.with_streaming_response.create(**CALL),
        "with_streaming_response.create",
    ),
    "beta.messages.with_streaming_response.create": (
        lambda g: g.with_streaming_response.beta.messages.create(**CALL),
        "with_streaming_response.create",
    ),
    "messages.with_raw_response.create(stream=True)": (
        lambda g: g.messages.with_raw_response.create(**CALL, stream=True),
        "create(stream=True)",
    ),
    "messages.batches.create": (
        lambda g: g.messages.batches.create(requests=[{"custom_id": "1", "params": CALL}]),
        "billed after the call returns",
    ),
    "messages.with_raw_response.batches.create": (
        lambda g: g.messages.with_raw_response.batches.create(requests=[]),
        "batches.create",
    ),
    "messages.batches.with_raw_response.create": (
        lambda g: g.messages.batches.with_raw_response.create(requests=[]),
        "batches.create",
    ),
    "beta.messages.batches.create": (
        lambda g: g.beta.messages.batches.create(requests=[]),
        "beta.messages.batches.create",
    ),
    "beta.messages.tool_runner": (
        lambda g: g.beta.messages.tool_runner(**CALL, tools=[]),
        "unguarded client",
    ),
    "beta.messages.thread": (
        lambda g: g.beta.messages.thread(model=MODEL, max_tokens=16),
        "unguarded client",
    ),
    "beta.messages.create(fallbacks=...)": (
        lambda g: g.beta.messages.create(**CALL, fallbacks="default"),
        "fallback model",
    ),
    "beta.messages.stream with the advisor tool": (
        lambda g: g.beta.messages.stream(**CALL, tools=[ADVISOR]),
        "advisor tool",
    ),
    'messages.create(speed="fast")': (
        lambda g: g.messages.create(**CALL, speed="fast"),
        "premium",
    ),
}


@pytest.mark.parametrize("call", list(REFUSED))
def test_what_cannot_be_committed_is_refused_before_sending(
    call: str, guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    send, named = REFUSED[call]
    with pytest.raises(NotGuarded, match=r"is not guarded|with ") as err:
        send(guarded)
    assert named in str(err.value)
    assert fake.requests == [] and reservation_states(client) == []


def test_an_unknown_method_of_messages_is_not_passed_through(
    guarded: Any, sdk: anthropic.Anthropic, fake: FakeProvider, client: costwarden.Client
) -> None:
    with pytest.raises(AttributeError, match=r"messages\.create_and_poll is not known"):
        guarded.messages.create_and_poll  # noqa: B018
    with pytest.raises(AttributeError, match=r"beta\.messages\.with_raw_response\.stream is"):
        guarded.beta.messages.with_raw_response.stream  # noqa: B018
    with pytest.raises(AttributeError, match=r"messages\.batches\.submit is not known"):
        guarded.messages.batches.submit  # noqa: B018
    # count_tokens is free: it is the SDK's own and reserves nothing
    assert guarded.messages.count_tokens.__self__ is sdk.messages
    fake.add(Reply(body={"input_tokens": 14}))
    assert guarded.beta.messages.count_tokens(model=MODEL, messages=MESSAGES).input_tokens == 14
    assert reservation_states(client) == []


def test_parse_commits_the_usage_and_returns_the_parsed_message(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(Reply(body=message(usage(40, 9))))
    reply = [{"type": "text", "text": '{"greeting": "Bonjour"}'}]
    fake.add(Reply(body=message(usage(300, 11, read=64), reply)))
    fake.add(Reply(body=message(usage(310, 12), reply)))
    guarded.messages.create(**CALL)
    parsed = guarded.messages.parse(**CALL, output_format=Greeting)
    assert parsed.parsed_output == Greeting(greeting="Bonjour")
    beta = guarded.beta.messages.parse(**CALL, output_format=Greeting)
    assert beta.parsed_output == Greeting(greeting="Bonjour")
    sent = fake.requests[1][1]
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert [e["usage"] for e in ledger(admin_conn)][1:] == [
        {"input_tokens": 300, "cached_input_tokens": 64, "output_tokens": 11},
        {"input_tokens": 310, "output_tokens": 12},
    ]
    holds = [held for _, held, _ in reservation_states(client)]
    # the hold covers the JSON schema the SDK sends, not the type's name (cache writes:
    # 3.75 per million, the priciest input unit)
    schema_bytes, _ = json_bytes(sent["output_config"]["format"])
    assert holds[1] - holds[0] >= schema_bytes * 375 // 100
    assert [s for s, _, _ in reservation_states(client)] == ["committed"] * 3


def test_a_parsing_error_after_the_provider_billed_still_commits(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    cut = [{"type": "text", "text": '{"greeting": "Bonj'}]
    fake.add(Reply(body=message(usage(300, 16), cut) | {"stop_reason": "max_tokens"}))
    with pytest.raises(pydantic.ValidationError):
        guarded.messages.parse(**CALL, output_format=Greeting)
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 300, "output_tokens": 16}
    assert [s for s, _, _ in reservation_states(client)] == ["committed"]


def test_raw_response_create_commits_the_usage_of_its_body(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(Reply(body=message(usage(12, 40, read=1800, write=600))))
    fake.add(Reply(body=message(usage(20, 5))))
    raw = guarded.messages.with_raw_response.create(**CALL)
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().content[0].text == "Bonjour!"
    raw = guarded.beta.messages.with_raw_response.create(**CALL)
    assert raw.parse().usage.output_tokens == 5
    assert [e["usage"] for e in ledger(admin_conn)] == [
        {
            "input_tokens": 12,
            "cached_input_tokens": 1800,
            "cache_write_tokens": 600,
            "output_tokens": 40,
        },
        {"input_tokens": 20, "output_tokens": 5},
    ]
    assert [s for s, _, _ in reservation_states(client)] == ["committed", "committed"]


def test_a_raw_response_error_releases(
    guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    fake.add(
        Reply(status=429, body={"type": "error", "error": {"type": "rate_limit", "message": "x"}})
    )
    with pytest.raises(anthropic.RateLimitError):
        guarded.beta.messages.with_raw_response.parse(**CALL)
    assert [s for s, _, _ in reservation_states(client)] == ["released"]


def test_beta_stream_helper_is_metered_and_commits(
    sdk: anthropic.Anthropic, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), meter_every=2)
    fake.add(
        sse(
            stream_events(usage(12, 1), ["Bonjour ", "tout ", "le ", "monde"], {"output_tokens": 6})
        )
    )
    manager = g.beta.messages.stream(**CALL)
    assert fake.requests == []  # sent (and reserved) when entered
    with manager as stream:
        assert "".join(stream.text_stream) == "Bonjour tout le monde"
    assert fake.requests[0][1]["stream"] is True
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 12, "output_tokens": 6}
    assert manager.costwarden.result.charged_micros == entry["amount_micros"]
    (info,) = client.reservations(ORG)
    assert info.status == "committed" and info.metered_micros > 0


COMPACTED_USAGE = {
    "input_tokens": 23_000,
    "output_tokens": 1_000,
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 180_000,
            "output_tokens": 3_500,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 23_000,
            "output_tokens": 1_000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    ],
}


def test_compaction_iterations_are_added_to_the_usage(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    expected = {"input_tokens": 203_000, "output_tokens": 4_500}
    assert usage_from_anthropic(BetaUsage.model_validate(COMPACTED_USAGE)) == expected
    delta = BetaMessageDeltaUsage.model_validate(COMPACTED_USAGE)
    assert usage_from_anthropic(delta) == expected
    # a compaction is an extra sampling step on Anthropic's side: it needs a bound
    edits = {"edits": [{"type": "compact_20260112"}]}
    with pytest.raises(SizingError, match="compact_20260112 context edit"):
        guarded.beta.messages.create(**CALL, context_management=edits)
    fake.add(Reply(body=message(COMPACTED_USAGE)))
    fake.add(sse(stream_events(usage(23_000, 1), ["ok"], COMPACTED_USAGE)))
    bounded = {**CALL, "context_management": edits, "costwarden_prompt_tokens": 250_000}
    guarded.beta.messages.create(**bounded)
    with guarded.beta.messages.stream(**bounded) as stream:
        stream.until_done()
    assert [e["usage"] for e in ledger(admin_conn)] == [expected, expected]


BETA_SERVER_SIDE: dict[str, dict[str, Any]] = {
    "thread continued from previous_message_id": {
        "thread": {"type": "continue", "previous_message_id": "msg_abc"}
    },
    "mcp_servers": {"mcp_servers": [{"type": "url", "name": "s", "url": "https://mcp.example"}]},
    "compaction": {"compaction": {"type": "summarize"}},
    "mcp_toolset tool": {"tools": [{"type": "mcp_toolset", "mcp_server_name": "s"}]},
}


@pytest.mark.parametrize("what", list(BETA_SERVER_SIDE))
def test_a_beta_prompt_on_the_server_needs_an_explicit_bound(
    what: str, guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    kwargs = {**CALL, **BETA_SERVER_SIDE[what]}
    with pytest.raises(SizingError, match=f"{what}.*costwarden_prompt_tokens"):
        guarded.beta.messages.create(**kwargs)
    with pytest.raises(SizingError, match=what):
        guarded.beta.messages.stream(**kwargs)
    assert fake.requests == [] and reservation_states(client) == []
    fake.add(Reply(body=message(usage(9_000, 20))))
    guarded.beta.messages.create(**kwargs, costwarden_prompt_tokens=10_000)
    assert "costwarden_prompt_tokens" not in fake.requests[0][1]
    ((status, held, charged),) = reservation_states(client)
    assert status == "committed" and held >= 10_000 * 375 // 100 >= charged


def test_beta_tool_objects_are_sized_as_sent(
    guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    @anthropic.beta_tool
    def lookup(query: str) -> str:
        """Look a word up in the very long and detailed glossary of the project."""
        return query

    fake.add(Reply(body=message(usage(40, 9))))
    fake.add(Reply(body=message(usage(40, 9))))
    guarded.beta.messages.create(**CALL, tools=[{"name": "x", "input_schema": {}}])
    guarded.beta.messages.create(**CALL, tools=[lookup])
    sent = fake.requests[1][1]["tools"]
    assert sent == [lookup.to_dict()]
    holds = [held for _, held, _ in reservation_states(client)]
    tool_bytes, _ = json_bytes(sent)
    assert holds[1] - holds[0] >= (tool_bytes - 40) * 375 // 100


def test_async_parse_raw_and_beta_stream_commit(
    dsn: str, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    fake.add(
        Reply(body=message(usage(100, 7), [{"type": "text", "text": '{"greeting": "Hallo"}'}]))
    )
    fake.add(Reply(body=message(usage(110, 8))))
    fake.add(sse(stream_events(usage(120, 1), ["a", "b"], {"output_tokens": 2})))

    async def main() -> list[Any]:
        sdk = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
        async with costwarden.AsyncClient(dsn) as acw:
            g = guard(sdk, acw, org_id=ORG, workspace_id=WS, limits=limits())
            parsed = await g.messages.parse(**CALL, output_format=Greeting)
            raw = await g.beta.messages.with_raw_response.create(**CALL)
            async with g.beta.messages.stream(**CALL) as stream:
                text = [t async for t in stream.text_stream]
        await sdk.close()
        return [parsed.parsed_output, (await raw.parse()).usage.input_tokens, text]

    parsed, prompt, text = asyncio.run(main())
    assert parsed == Greeting(greeting="Hallo") and prompt == 110 and "".join(text) == "ab"
    assert [e["usage"] for e in ledger(admin_conn)] == [
        {"input_tokens": 100, "output_tokens": 7},
        {"input_tokens": 110, "output_tokens": 8},
        {"input_tokens": 120, "output_tokens": 2},
    ]
    assert [s for s, _, _ in reservation_states(client)] == ["committed"] * 3
