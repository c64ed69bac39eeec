"""costwarden.integrations.openai: the real openai SDK against a local fake API,
reserving, metering and committing on a real PostgreSQL (SPEC §0, §14)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import openai
import psycopg
import pydantic
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses import ResponseUsage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

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
from costwarden.integrations._sizing import MESSAGE_OVERHEAD, REQUEST_OVERHEAD, json_bytes
from costwarden.integrations.openai import guard, usage_from_openai
from costwarden.integrations.testing import FakeProvider, Reply, fake_provider, sse
from costwarden.integrations.testing import chat_chunk as chunk
from costwarden.integrations.testing import chat_completion as completion
from costwarden.integrations.testing import chat_text_stream as text_stream
from costwarden.integrations.testing import chat_usage_chunk as usage_chunk
from costwarden.integrations.testing import openai_usage as usage

Conn = psycopg.Connection[Any]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with fake_provider() as f:
        yield f


@pytest.fixture
def sdk(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def guarded(sdk: openai.OpenAI, client: costwarden.Client) -> Any:
    setup_costwarden(client)
    return guard(sdk, client, org_id=ORG, workspace_id=WS, user_id=None, limits=limits())


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello in Français: ça va?"},
]


# -- usage mapping: every row of the table in docs/integrations.md, on the SDK's own types


MAPPING_ROWS = [
    (  # plain
        CompletionUsage(prompt_tokens=120, completion_tokens=30, total_tokens=150),
        {"input_tokens": 120, "output_tokens": 30},
    ),
    (  # prompt_tokens includes the cached tokens
        CompletionUsage(
            prompt_tokens=2000,
            completion_tokens=10,
            total_tokens=2010,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=1536),
        ),
        {"input_tokens": 464, "cached_input_tokens": 1536, "output_tokens": 10},
    ),
    (  # completion_tokens includes the reasoning tokens
        CompletionUsage(
            prompt_tokens=50,
            completion_tokens=900,
            total_tokens=950,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=768),
        ),
        {"input_tokens": 50, "output_tokens": 132, "reasoning_tokens": 768},
    ),
    (  # audio in and out are inside prompt / completion tokens
        CompletionUsage(
            prompt_tokens=300,
            completion_tokens=200,
            total_tokens=500,
            prompt_tokens_details=PromptTokensDetails(audio_tokens=250, cached_tokens=0),
            completion_tokens_details=CompletionTokensDetails(audio_tokens=150),
        ),
        {
            "input_tokens": 50,
            "audio_input_tokens": 250,
            "output_tokens": 50,
            "audio_output_tokens": 150,
        },
    ),
    (  # cache writes are inside prompt tokens
        CompletionUsage(
            prompt_tokens=4000,
            completion_tokens=5,
            total_tokens=4005,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=1000, cache_write_tokens=2500),
        ),
        {
            "input_tokens": 500,
            "cached_input_tokens": 1000,
            "cache_write_tokens": 2500,
            "output_tokens": 5,
        },
    ),
    (  # Responses API: input_tokens includes cached and cache writes, output the reasoning
        ResponseUsage(
            input_tokens=1800,
            input_tokens_details=InputTokensDetails(cached_tokens=1024, cache_write_tokens=256),
            output_tokens=700,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=512),
            total_tokens=2500,
        ),
        {
            "input_tokens": 520,
            "cached_input_tokens": 1024,
            "cache_write_tokens": 256,
            "output_tokens": 188,
            "reasoning_tokens": 512,
        },
    ),
]


@pytest.mark.parametrize(("sdk_usage", "expected"), MAPPING_ROWS)
def test_usage_from_openai_maps_to_disjoint_units(sdk_usage: Any, expected: dict[str, int]) -> None:
    mapped = usage_from_openai(sdk_usage)
    assert mapped == expected
    # disjoint: the units add up to the provider's total, nothing counted twice
    assert sum(mapped.values()) == sdk_usage.total_tokens
    # a dict (a parsed JSON body) maps the same as the SDK object
    assert usage_from_openai(sdk_usage.model_dump()) == expected


def test_usage_from_a_response_parsed_by_the_sdk() -> None:
    u = usage(1000, 400, cached=600, reasoning=300)
    parsed = ChatCompletion.model_validate(completion(u))
    assert isinstance(parsed.usage, CompletionUsage)
    assert usage_from_openai(parsed.usage) == {
        "input_tokens": 400,
        "cached_input_tokens": 600,
        "output_tokens": 100,
        "reasoning_tokens": 300,
    }


# -- chat completions --------------------------------------------------------------------


def test_chat_completion_reserves_then_commits_the_mapped_usage(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(Reply(body=completion(usage(2000, 12, cached=1536))))
    resp = guarded.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=64
    )
    assert isinstance(resp, ChatCompletion) and resp.choices[0].message.content == "Hello!"
    (entry,) = ledger(admin_conn)
    assert entry["model"] == "openai/gpt-4o-mini"
    assert entry["usage"] == {"input_tokens": 464, "cached_input_tokens": 1536, "output_tokens": 12}
    # 464 x 0.15 + 1536 x 0.075 + 12 x 0.6 = 69.6 + 115.2 + 7.2 = 192 micros
    assert entry["amount_micros"] == 192 and entry["approximate"] is False
    ((status, held, charged),) = reservation_states(client)
    assert status == "committed" and charged == 192
    # the hold was the sizing bound: prompt bytes + overheads at the input price,
    # 64 output tokens at the output price
    prompt_bytes, _ = json_bytes([MESSAGES, []])
    bound = prompt_bytes + MESSAGE_OVERHEAD * 2 + REQUEST_OVERHEAD
    assert held == -(-(bound * 15 + 64 * 60) // 100)  # ceil(bound x 0.15 + 64 x 0.6)
    # the request went out unchanged
    ((path, body),) = fake.requests
    assert path == "/v1/chat/completions" and body["messages"] == MESSAGES


def test_the_catalogue_cap_sizes_output_when_the_request_has_none(
    guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    fake.add(Reply(body=completion(usage(20, 3))))
    guarded.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    ((_, held, _),) = reservation_states(client)
    assert held >= 16384 * 0.6  # the sample catalogue's max_output_tokens for gpt-4o-mini


def test_no_cap_anywhere_is_refused_before_sending(guarded: Any, fake: FakeProvider) -> None:
    with pytest.raises(SizingError, match="max_output_tokens"):
        guarded.chat.completions.create(model="some-new-model", messages=MESSAGES)
    assert fake.requests == []


def test_denied_reservation_raises_before_any_request(
    sdk: openai.OpenAI, client: costwarden.Client, fake: FakeProvider
) -> None:
    setup_costwarden(client, budget_micros=50)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits())
    with pytest.raises(BudgetExceeded) as err:
        g.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
    assert {r.code for r in err.value.reasons} == {"budget_exceeded"}
    assert fake.requests == []
    assert [s for s, _, _ in reservation_states(client)] == ["denied"]


def test_sdk_error_releases_and_reraises(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(Reply(status=500, body={"error": {"message": "overloaded", "type": "server_error"}}))
    with pytest.raises(openai.InternalServerError):
        guarded.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    assert [s for s, _, _ in reservation_states(client)] == ["released"]
    assert ledger(admin_conn) == []
    (st,) = client.budget_status(ORG, "workspace", WS)
    assert st.held == 0 and st.spent == 0


def test_tool_calls_are_sized_and_committed(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    call = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    fake.add(Reply(body=completion(usage(80, 18), call)))
    resp = guarded.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=tools, max_tokens=50
    )
    assert resp.choices[0].message.tool_calls[0].function.name == "get_weather"
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 80, "output_tokens": 18}
    with_tools = reservation_states(client)[0][1]
    fake.add(Reply(body=completion(usage(40, 2))))
    guarded.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
    without = reservation_states(client)[1][1]
    assert with_tools > without  # the tool schema and its overheads are reserved


def test_images_get_their_token_allowance(
    sdk: openai.OpenAI, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), image_tokens=1445)
    image = "data:image/png;base64," + "A" * 400_000  # the image data is not counted as text
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
    ]
    fake.add(Reply(body=completion(usage(1460, 9))))
    g.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": content}], max_tokens=20
    )
    ((_, held, _),) = reservation_states(client)
    prompt_bytes, images = json_bytes([[{"role": "user", "content": content}], []])
    assert images == 1 and prompt_bytes < 200
    bound = prompt_bytes + MESSAGE_OVERHEAD + REQUEST_OVERHEAD + 1445
    # gpt-4o: the priciest input unit is input_tokens / cache writes at 2.5, output at 10
    assert held == -(-(bound * 25 + 20 * 100) // 10)
    assert ledger(admin_conn)[0]["usage"] == {"input_tokens": 1460, "output_tokens": 9}


def test_reasoning_tokens_are_split_out(guarded: Any, fake: FakeProvider, admin_conn: Conn) -> None:
    fake.add(Reply(body=completion(usage(50, 900, reasoning=768))))
    guarded.chat.completions.create(model="o1", messages=MESSAGES, max_completion_tokens=2000)
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 50, "output_tokens": 132, "reasoning_tokens": 768}
    # o1: 50 x 15 + 132 x 60 + 768 x 60 = 54,750 micros
    assert entry["amount_micros"] == 54_750


def test_audio_tokens_are_split_out(guarded: Any, fake: FakeProvider, admin_conn: Conn) -> None:
    fake.add(Reply(body=completion(usage(300, 200, audio_in=250, audio_out=150))))
    guarded.chat.completions.create(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {
                            "data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=",
                            "format": "wav",
                        },
                    }
                ],
            }
        ],
        max_completion_tokens=400,
    )
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {
        "input_tokens": 50,
        "audio_input_tokens": 250,
        "output_tokens": 50,
        "audio_output_tokens": 150,
    }
    # 50 x 2.5 + 250 x 40 + 50 x 10 + 150 x 80 = 22,625 micros
    assert entry["amount_micros"] == 22_625


# -- chat completion streams --------------------------------------------------------------


def test_stream_asks_for_usage_and_commits_the_final_chunk(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(text_stream(["Hel", "lo", "!"], usage(2000, 3, cached=1024)))
    stream = guarded.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=32,
        stream=True,
        stream_options={"include_obfuscation": False},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello!"
    body = fake.requests[0][1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 976, "cached_input_tokens": 1024, "output_tokens": 3}
    assert entry["approximate"] is False
    assert stream.costwarden.result.charged_micros == entry["amount_micros"]


def test_streamed_tool_call_is_metered_and_committed(
    sdk: openai.OpenAI, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), meter_every=2)
    args = ['{"ci', 'ty":', '"Par', 'is"}']
    events: list[tuple[str | None, Any]] = [
        (
            None,
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                }
            ),
        )
    ]
    events += [
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]})) for a in args
    ]
    events += [(None, chunk({}, "tool_calls")), (None, usage_chunk(usage(90, 15)))]
    fake.add(sse(events, done_marker=True))
    with g.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=64,
        stream=True,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    ) as stream:
        pieces = [
            c.choices[0].delta.tool_calls[0].function.arguments
            for c in stream
            if c.choices and c.choices[0].delta.tool_calls
        ]
    assert "".join(p or "" for p in pieces) == '{"city":"Paris"}'
    (info,) = client.reservations(ORG)
    assert info.metered_micros > 0  # ticks were sent while the stream ran
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 90, "output_tokens": 15}
    assert entry["approximate"] is False


def test_stream_without_usage_commits_the_metered_estimate_as_approximate(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    fake.add(text_stream(["one ", "two ", "three"], None))
    stream = guarded.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=32, stream=True
    )
    assert len(list(stream)) == 5
    (entry,) = ledger(admin_conn)
    assert entry["approximate"] is True
    # the estimate: ceil(bytes / 4) per piece, "one " + "two " + "three" -> 1 + 1 + 2
    assert entry["usage"]["output_tokens"] == 4
    assert entry["usage"]["input_tokens"] > 0


def test_outage_mid_stream_commits_what_was_metered_and_reraises(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    reply = text_stream(["partial ", "answer"], None)
    reply.done_marker, reply.cut = False, True
    reply.events = reply.events[:-1]  # no finish chunk either: the connection drops
    fake.add(reply)
    stream = guarded.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=32, stream=True
    )
    seen = []
    with pytest.raises((openai.APIError, Exception)) as err:
        for c in stream:
            seen.append(c)
    assert not isinstance(err.value, AssertionError)
    assert len(seen) == 3
    (entry,) = ledger(admin_conn)
    assert entry["approximate"] is True and entry["usage"]["output_tokens"] == 4
    assert [s for s, _, _ in reservation_states(client)] == ["committed"]


def test_a_tick_that_says_abort_closes_the_stream_and_commits_the_partial_usage(
    sdk: openai.OpenAI, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    # gpt-4o: the reservation for max_tokens=8 fits the budget, but the provider streams far
    # more than the estimate the hold covers; extending the hold is refused -> abort
    setup_costwarden(client)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits(), meter_every=8)
    probe = g.chat.completions.create  # size one call to set a budget just above it
    fake.add(Reply(body=completion(usage(10, 1))))
    probe(model="gpt-4o", messages=MESSAGES, max_tokens=8)
    first_hold = reservation_states(client)[0][1]
    spent = ledger(admin_conn)[0]["amount_micros"]
    client.set_budget(ORG, "workspace", WS, "day", spent + first_hold + 5)
    words = [f"word{i:03d} " for i in range(200)]  # 8 bytes -> 2 estimated tokens each
    fake.add(text_stream(words, usage(10, 200)))
    stream = g.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=8, stream=True)
    got = []
    with pytest.raises(StreamAborted) as err:
        for c in stream:
            got.append(c)
    assert 0 < len(got) < 50  # stopped early, not read to the end
    assert stream.response.is_closed
    entries = ledger(admin_conn)
    assert len(entries) == 2 and entries[1]["approximate"] is True
    assert entries[1]["reservation_id"] == err.value.reservation_id
    assert err.value.commit is not None and err.value.commit.charged_micros > 0
    assert reservation_states(client)[1][0] == "committed"


# -- Responses API ------------------------------------------------------------------------


def response_body(u: dict[str, Any], text: str = "Hi there") -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1733000000,
        "status": "completed",
        "model": "gpt-4o-mini-2024-07-18",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": u,
    }


RESP_USAGE = {
    "input_tokens": 1800,
    "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 256},
    "output_tokens": 40,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 1840,
}


def test_responses_create_commits_mapped_usage(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    fake.add(Reply(body=response_body(RESP_USAGE)))
    resp = guarded.responses.create(
        model="gpt-4o-mini", instructions="Be brief.", input="Hello", max_output_tokens=100
    )
    assert resp.output_text == "Hi there"
    assert fake.requests[0][0] == "/v1/responses"
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {
        "input_tokens": 520,
        "cached_input_tokens": 1024,
        "cache_write_tokens": 256,
        "output_tokens": 40,
    }


def response_events(u: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """A streamed response: created, two text deltas, completed with the usage ``u``."""
    created = response_body(u) | {"status": "in_progress", "output": [], "usage": None}
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant"}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[tuple[str | None, Any]] = [
        (
            "response.created",
            {"type": "response.created", "response": created, "sequence_number": 0},
        ),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": item | {"content": []},
                "sequence_number": 1,
            },
        ),
        (
            "response.content_part.added",
            {
                "type": "response.content_part.added",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": part,
                "sequence_number": 2,
            },
        ),
    ]
    for i, piece in enumerate(["Hi", " there"]):
        events.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                    "sequence_number": i + 3,
                },
            )
        )
    events.append(
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": response_body(u),
                "sequence_number": 5,
            },
        )
    )
    return events


def test_responses_stream_commits_the_completed_event(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    events = response_events(RESP_USAGE)
    fake.add(sse(events))
    stream = guarded.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": "Hello"}],
        max_output_tokens=100,
        stream=True,
    )
    kinds = [e.type for e in stream]
    assert kinds[-1] == "response.completed" and kinds.count("response.output_text.delta") == 2
    (entry,) = ledger(admin_conn)
    assert entry["approximate"] is False and entry["usage"]["cached_input_tokens"] == 1024


# -- async, and everything else passes through --------------------------------------------


def test_async_client_non_streaming_and_streaming(
    dsn: str, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    fake.add(Reply(body=completion(usage(100, 7, cached=0))))
    fake.add(text_stream(["a", "b"], usage(100, 2)))
    fake.add(Reply(status=500, body={"error": {"message": "boom"}}))

    async def main() -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="sk", max_retries=0)
        async with costwarden.AsyncClient(dsn) as acw:
            g = guard(sdk, acw, org_id=ORG, workspace_id=WS, limits=limits())
            r = await g.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
            )
            stream = await g.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=16, stream=True
            )
            parts = [c.choices[0].delta.content async for c in stream if c.choices]
            with pytest.raises(openai.InternalServerError):
                await g.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
                )
            await sdk.close()
            return [r.choices[0].message.content or "", *[p or "" for p in parts]]

    assert asyncio.run(main()) == ["Hello!", "", "a", "b", ""]
    assert [e["usage"] for e in ledger(admin_conn)] == [
        {"input_tokens": 100, "output_tokens": 7},
        {"input_tokens": 100, "output_tokens": 2},
    ]
    assert [s for s, _, _ in reservation_states(client)] == ["committed", "committed", "released"]


def test_everything_else_passes_through(guarded: Any, sdk: openai.OpenAI) -> None:
    assert guarded.base_url == sdk.base_url
    assert guarded.api_key == "sk-test"
    assert guarded.models is sdk.models
    assert guarded.chat.completions.with_raw_response is not None
    other = guarded.with_options(timeout=5)
    assert other.costwarden is guarded.costwarden and other.timeout == 5


def test_the_fake_provider_example_in_the_docs_runs() -> None:
    """docs/integrations.md: the example of costwarden.integrations.testing, as written."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "integrations.md").read_text(encoding="utf-8")
    after = doc.split("Your own tests of guarded calls can use it the same way:", 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    assert "fake_provider()" in code
    exec(compile(code, "docs/integrations.md", "exec"), {})


# -- every method that sends a model request is guarded (or refused) ----------------------


class Greeting(pydantic.BaseModel):
    greeting: str


CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 16}
RESP = {"model": "gpt-4o-mini", "input": "Hello", "max_output_tokens": 16}


def entered(manager: Any) -> Any:
    with manager as stream:
        return stream


SYNC_CALLS: dict[str, Callable[[Any], Any]] = {
    "chat.completions.create": lambda g: g.chat.completions.create(**CHAT),
    "chat.completions.parse": lambda g: g.chat.completions.parse(**CHAT, response_format=Greeting),
    "chat.completions.stream": lambda g: entered(g.chat.completions.stream(**CHAT)),
    "chat.completions.with_raw_response.create": lambda g: (
        g.chat.completions.with_raw_response.create(**CHAT)
    ),
    "chat.completions.with_raw_response.parse": lambda g: (
        g.chat.completions.with_raw_response.parse(**CHAT, response_format=Greeting)
    ),
    "responses.create": lambda g: g.responses.create(**RESP),
    "responses.parse": lambda g: g.responses.parse(**RESP, text_format=Greeting),
    "responses.stream": lambda g: entered(g.responses.stream(**RESP)),
    "responses.with_raw_response.create": lambda g: g.responses.with_raw_response.create(**RESP),
    "responses.with_raw_response.parse": lambda g: g.responses.with_raw_response.parse(**RESP),
    "responses.compact": lambda g: g.responses.compact(model="gpt-4o-mini", input="Hello"),
    "responses.with_raw_response.compact": lambda g: g.responses.with_raw_response.compact(
        model="gpt-4o-mini", input="Hello"
    ),
    "beta.chat.completions.parse": lambda g: g.beta.chat.completions.parse(**CHAT),
    "beta.responses.create": lambda g: g.beta.responses.create(**RESP),
    "with_raw_response.chat.completions.create": lambda g: (
        g.with_raw_response.chat.completions.create(**CHAT)
    ),
    "chat.with_raw_response.completions.parse": lambda g: (
        g.chat.with_raw_response.completions.parse(**CHAT)
    ),
    "with_raw_response.responses.create": lambda g: g.with_raw_response.responses.create(**RESP),
    "beta.with_raw_response.responses.create": lambda g: g.beta.with_raw_response.responses.create(
        **RESP
    ),
    "with_options(...).responses.parse": lambda g: g.with_options(timeout=5).responses.parse(
        **RESP
    ),
    "copy(...).chat.completions.parse": lambda g: g.copy(timeout=5).chat.completions.parse(**CHAT),
}


@pytest.mark.parametrize("call", list(SYNC_CALLS))
def test_every_model_call_is_reserved_first_and_refused_over_the_limit(
    call: str, sdk: openai.OpenAI, client: costwarden.Client, fake: FakeProvider
) -> None:
    setup_costwarden(client, budget_micros=0)
    g = guard(sdk, client, org_id=ORG, workspace_id=WS, limits=limits())
    with pytest.raises(BudgetExceeded):
        SYNC_CALLS[call](g)
    assert fake.requests == []
    assert [s for s, _, _ in reservation_states(client)] == ["denied"]


ASYNC_CALLS: dict[str, Callable[[Any], Awaitable[Any]]] = {
    "chat.completions.parse": lambda g: g.chat.completions.parse(**CHAT, response_format=Greeting),
    "chat.completions.with_raw_response.create": lambda g: (
        g.chat.completions.with_raw_response.create(**CHAT)
    ),
    "responses.parse": lambda g: g.responses.parse(**RESP, text_format=Greeting),
    "responses.with_raw_response.create": lambda g: g.responses.with_raw_response.create(**RESP),
    "responses.compact": lambda g: g.responses.compact(model="gpt-4o-mini", input="Hello"),
    "beta.responses.create": lambda g: g.beta.responses.create(**RESP),
}


async def async_entered(manager: Any) -> Any:
    async with manager as stream:
        return stream


ASYNC_CALLS["chat.completions.stream"] = lambda g: async_entered(g.chat.completions.stream(**CHAT))
ASYNC_CALLS["responses.stream"] = lambda g: async_entered(g.responses.stream(**RESP))


@pytest.mark.parametrize("call", list(ASYNC_CALLS))
def test_every_async_model_call_is_reserved_first_and_refused_over_the_limit(
    call: str, dsn: str, client: costwarden.Client, fake: FakeProvider
) -> None:
    setup_costwarden(client, budget_micros=0)

    async def main() -> None:
        sdk = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="sk", max_retries=0)
        async with costwarden.AsyncClient(dsn) as acw:
            g = guard(sdk, acw, org_id=ORG, workspace_id=WS, limits=limits())
            with pytest.raises(BudgetExceeded):
                await ASYNC_CALLS[call](g)
        await sdk.close()

    asyncio.run(main())
    assert fake.requests == []
    assert [s for s, _, _ in reservation_states(client)] == ["denied"]


REFUSED: dict[str, Callable[[Any], Any]] = {
    "chat.completions.with_streaming_response.create": lambda g: (
        g.chat.completions.with_streaming_response.create(**CHAT)
    ),
    "chat.completions.with_streaming_response.parse": lambda g: (
        g.chat.completions.with_streaming_response.parse(**CHAT)
    ),
    "responses.with_streaming_response.create": lambda g: (
        g.responses.with_streaming_response.create(**RESP)
    ),
    "with_streaming_response.responses.compact": lambda g: (
        g.with_streaming_response.responses.compact(model="gpt-4o-mini", input="Hello")
    ),
    "chat.completions.with_raw_response.create(stream=True)": lambda g: (
        g.chat.completions.with_raw_response.create(**CHAT, stream=True)
    ),
    "responses.with_raw_response.create(stream=True)": lambda g: (
        g.responses.with_raw_response.create(**RESP, stream=True)
    ),
    "responses.parse(stream=True)": lambda g: g.responses.parse(**RESP, stream=True),
    "responses.connect": lambda g: g.responses.connect(),
    "responses.create(background=True)": lambda g: g.responses.create(**RESP, background=True),
    "responses.stream(background=True)": lambda g: entered(
        g.responses.stream(**RESP, background=True)
    ),
}


@pytest.mark.parametrize("call", list(REFUSED))
def test_what_cannot_be_committed_is_refused_before_sending(
    call: str, guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    with pytest.raises(NotGuarded) as err:
        REFUSED[call](guarded)
    named = "background" if "background" in call else call.split("(")[0].rsplit(".", 1)[-1]
    assert named in str(err.value) and "use " in str(err.value)
    assert fake.requests == [] and reservation_states(client) == []


def test_an_unknown_method_of_a_guarded_resource_is_not_passed_through(guarded: Any) -> None:
    with pytest.raises(AttributeError, match=r"chat\.completions\.create_and_poll is not known"):
        guarded.chat.completions.create_and_poll  # noqa: B018
    with pytest.raises(AttributeError, match=r"responses\.with_raw_response\.stream is not known"):
        guarded.responses.with_raw_response.stream  # noqa: B018
    # the methods that send no model request are the SDK's own
    assert guarded.chat.completions.retrieve.__self__ is guarded._inner.chat.completions
    assert guarded.responses.input_tokens is guarded._inner.responses.input_tokens


def test_chat_parse_commits_the_usage_and_returns_the_parsed_completion(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(Reply(body=completion(usage(400, 9, cached=256))))
    fake.add(Reply(body=completion(usage(400, 9))))
    msg = {"role": "assistant", "content": '{"greeting":"Bonjour"}', "refusal": None}
    fake.add(Reply(body=completion(usage(500, 12, cached=256), msg)))
    guarded.chat.completions.create(**CHAT)
    guarded.chat.completions.create(**CHAT, response_format={"type": "json_object"})
    parsed = guarded.chat.completions.parse(**CHAT, response_format=Greeting)
    assert parsed.choices[0].message.parsed == Greeting(greeting="Bonjour")
    sent = fake.requests[2][1]
    assert sent["response_format"]["json_schema"]["name"] == "Greeting"
    entry = ledger(admin_conn)[2]
    assert entry["usage"] == {"input_tokens": 244, "cached_input_tokens": 256, "output_tokens": 12}
    assert entry["approximate"] is False
    holds = [held for _, held, _ in reservation_states(client)]
    # the hold covers the JSON schema the SDK sends, not the type's name
    schema_bytes, _ = json_bytes(sent["response_format"])
    assert holds[2] - holds[0] >= -(-schema_bytes * 15 // 100)


def test_a_parsing_error_after_the_provider_billed_still_commits(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    body = completion(usage(300, 16))
    body["choices"][0]["finish_reason"] = "length"
    body["choices"][0]["message"]["content"] = '{"greeting": "Bonj'
    fake.add(Reply(body=body))
    with pytest.raises(openai.LengthFinishReasonError):
        guarded.chat.completions.parse(**CHAT, response_format=Greeting)
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 300, "output_tokens": 16}
    assert [s for s, _, _ in reservation_states(client)] == ["committed"]


def test_raw_response_create_commits_the_usage_of_its_body(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(Reply(body=completion(usage(2000, 12, cached=1536))))
    fake.add(Reply(body=response_body(RESP_USAGE)))
    raw = guarded.chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().choices[0].message.content == "Hello!"
    raw = guarded.with_raw_response.responses.create(**RESP)
    assert raw.parse().output_text == "Hi there"
    assert [e["usage"] for e in ledger(admin_conn)] == [
        {"input_tokens": 464, "cached_input_tokens": 1536, "output_tokens": 12},
        {
            "input_tokens": 520,
            "cached_input_tokens": 1024,
            "cache_write_tokens": 256,
            "output_tokens": 40,
        },
    ]
    assert [s for s, _, _ in reservation_states(client)] == ["committed", "committed"]


def test_a_raw_response_error_releases(
    guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    fake.add(Reply(status=429, body={"error": {"message": "slow down", "type": "rate_limit"}}))
    with pytest.raises(openai.RateLimitError):
        guarded.responses.with_raw_response.parse(**RESP)
    assert [s for s, _, _ in reservation_states(client)] == ["released"]


def test_chat_stream_helper_is_metered_and_commits_the_usage_chunk(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    fake.add(text_stream(["Bon", "jour"], usage(900, 2, cached=512)))
    manager = guarded.chat.completions.stream(**CHAT)
    assert fake.requests == []  # sent (and reserved) when entered
    with manager as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
    assert text == "Bonjour"
    assert fake.requests[0][1]["stream_options"] == {"include_usage": True}
    (entry,) = ledger(admin_conn)
    assert entry["usage"] == {"input_tokens": 388, "cached_input_tokens": 512, "output_tokens": 2}
    assert entry["approximate"] is False
    assert manager.costwarden.result.charged_micros == entry["amount_micros"]


def test_leaving_a_stream_helper_early_commits_what_was_read(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    fake.add(text_stream([f"word{i} " for i in range(50)], usage(900, 100)))
    with guarded.chat.completions.stream(**CHAT) as stream:
        for event in stream:
            if event.type == "content.delta" and event.delta:
                break
    (entry,) = ledger(admin_conn)
    assert entry["approximate"] is True and entry["usage"]["output_tokens"] >= 1
    assert [s for s, _, _ in reservation_states(client)] == ["committed"]


def test_responses_stream_helper_and_parse_commit(
    guarded: Any, fake: FakeProvider, admin_conn: Conn
) -> None:
    fake.add(sse(response_events(RESP_USAGE)))
    fake.add(Reply(body=response_body(RESP_USAGE, text='{"greeting":"Salut"}')))
    with guarded.responses.stream(**RESP) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hi there"
    parsed = guarded.responses.parse(**RESP, text_format=Greeting)
    assert parsed.output_parsed == Greeting(greeting="Salut")
    assert fake.requests[0][1]["stream"] is True
    assert fake.requests[1][1]["text"]["format"]["name"] == "Greeting"
    entries = ledger(admin_conn)
    assert [e["approximate"] for e in entries] == [False, False]
    assert all(e["usage"]["cached_input_tokens"] == 1024 for e in entries)


def test_compact_commits_its_usage(guarded: Any, fake: FakeProvider, admin_conn: Conn) -> None:
    fake.add(
        Reply(
            body={
                "id": "cmp_1",
                "object": "response.compaction",
                "created_at": 1733000000,
                "output": [],
                "usage": RESP_USAGE,
            }
        )
    )
    guarded.responses.compact(model="gpt-4o-mini", input="A long exchange to compact.")
    assert fake.requests[0][0] == "/v1/responses/compact"
    (entry,) = ledger(admin_conn)
    assert entry["usage"]["input_tokens"] == 520 and entry["approximate"] is False


def test_async_parse_raw_and_stream_helper_commit(
    dsn: str, client: costwarden.Client, fake: FakeProvider, admin_conn: Conn
) -> None:
    setup_costwarden(client)
    msg = {"role": "assistant", "content": '{"greeting":"Hallo"}', "refusal": None}
    fake.add(Reply(body=completion(usage(100, 7), msg)))
    fake.add(Reply(body=completion(usage(110, 8))))
    fake.add(text_stream(["a", "b"], usage(120, 2)))
    fake.add(sse(response_events(RESP_USAGE)))

    async def main() -> list[Any]:
        sdk = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="sk", max_retries=0)
        async with costwarden.AsyncClient(dsn) as acw:
            g = guard(sdk, acw, org_id=ORG, workspace_id=WS, limits=limits())
            parsed = await g.chat.completions.parse(**CHAT, response_format=Greeting)
            raw = await g.chat.completions.with_raw_response.create(**CHAT)
            async with g.chat.completions.stream(**CHAT) as stream:
                text = [e.delta async for e in stream if e.type == "content.delta"]
            async with g.responses.stream(**RESP) as events:
                final = await events.get_final_response()
        await sdk.close()
        return [parsed.choices[0].message.parsed, raw.parse().usage.prompt_tokens, text, final]

    parsed, prompt, text, final = asyncio.run(main())
    assert parsed == Greeting(greeting="Hallo") and prompt == 110 and "".join(text) == "ab"
    assert final.output_text == "Hi there"
    assert [e["usage"] for e in ledger(admin_conn)][:3] == [
        {"input_tokens": 100, "output_tokens": 7},
        {"input_tokens": 110, "output_tokens": 8},
        {"input_tokens": 120, "output_tokens": 2},
    ]
    assert [s for s, _, _ in reservation_states(client)] == ["committed"] * 4


# -- a prompt partly on OpenAI's side -----------------------------------------------------


SERVER_SIDE: dict[str, dict[str, Any]] = {
    "previous_response_id": {"input": "and then?", "previous_response_id": "resp_abc"},
    "conversation": {"input": "and then?", "conversation": "conv_abc"},
    "prompt": {"input": "x", "prompt": {"id": "pmpt_abc", "variables": {"city": "Paris"}}},
    "item_reference": {"input": [{"type": "item_reference", "id": "msg_abc"}]},
    "web_search tool": {"input": "news?", "tools": [{"type": "web_search"}]},
    "file_search tool": {
        "input": "find it",
        "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}],
    },
    "mcp tool": {
        "input": "x",
        "tools": [{"type": "mcp", "server_label": "s", "server_url": "https://mcp.example"}],
    },
    "code_interpreter tool": {
        "input": "x",
        "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
    },
    "input_file by id or URL": {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Summarize"},
                    {"type": "input_file", "file_id": "file-abc"},
                ],
            }
        ],
    },
}


@pytest.mark.parametrize("what", list(SERVER_SIDE))
def test_a_prompt_on_the_server_needs_an_explicit_bound(
    what: str, guarded: Any, fake: FakeProvider, client: costwarden.Client
) -> None:
    kwargs = {"model": "gpt-4o-mini", "max_output_tokens": 100, **SERVER_SIDE[what]}
    with pytest.raises(SizingError, match=f"{what}.*costwarden_prompt_tokens"):
        guarded.responses.create(**kwargs)
    with pytest.raises(SizingError, match=what):
        guarded.responses.stream(**kwargs).__enter__()
    assert fake.requests == [] and reservation_states(client) == []


def test_the_explicit_prompt_bound_sizes_the_reservation(
    guarded: Any, fake: FakeProvider, client: costwarden.Client, admin_conn: Conn
) -> None:
    # the provider bills the stored conversation: 120,000 prompt tokens for "and then?"
    billed = {
        "input_tokens": 120_000,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 100,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 120_100,
    }
    fake.add(Reply(body=response_body(billed)))
    guarded.responses.create(
        model="gpt-4o-mini",
        input="and then?",
        previous_response_id="resp_abc",
        max_output_tokens=100,
        costwarden_prompt_tokens=128_000,
    )
    assert "costwarden_prompt_tokens" not in fake.requests[0][1]
    ((status, held, charged),) = reservation_states(client)
    assert status == "committed" and charged == ledger(admin_conn)[0]["amount_micros"]
    assert held >= charged  # never too small
    assert held == -(-(128_000 * 15 + 100 * 60) // 100)  # the bound, at the input price
    with pytest.raises(SizingError, match="non-negative integer"):
        guarded.responses.create(**RESP, costwarden_prompt_tokens=-1)


def test_client_side_tools_and_inline_content_need_no_bound(
    guarded: Any, fake: FakeProvider
) -> None:
    fake.add(Reply(body=response_body(RESP_USAGE)))
    fake.add(Reply(body=completion(usage(20, 3))))
    guarded.responses.create(
        **RESP,
        tools=[{"type": "function", "name": "f", "parameters": {}}, {"type": "local_shell"}],
    )
    guarded.chat.completions.create(
        **CHAT, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]
    )
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"web_search_options": {}},
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
        {"messages": [*MESSAGES, {"role": "assistant", "audio": {"id": "audio_abc"}}]},
    ],
)
def test_chat_prompt_on_the_server_needs_an_explicit_bound(
    extra: dict[str, Any], guarded: Any, fake: FakeProvider
) -> None:
    with pytest.raises(SizingError, match="costwarden_prompt_tokens"):
        guarded.chat.completions.create(**{**CHAT, **extra})
    assert fake.requests == []
