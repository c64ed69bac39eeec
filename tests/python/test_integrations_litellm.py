"""costwarden.integrations.litellm: the hook inside real LiteLLM Router calls
(mock_response: nothing leaves the machine), on a real PostgreSQL (SPEC §14)."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import asyncio
from collections.abc import Iterator
from typing import Any

import litellm
import litellm.constants
import psycopg
import pytest
from litellm import Router
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth
from litellm.types.utils import CallTypes, Usage

import costwarden
from adapter_helpers import ORG, WS, ledger, reservation_states
from costwarden import BudgetExceeded
from costwarden.integrations import Limits, ModelLimits, NotGuarded, SizingError
from costwarden.integrations.litellm import (
    CallContext,
    CostwardenHook,
    SyncCallRefused,
    VirtualKeyRule,
    usage_from_litellm,
)
from costwarden.integrations.testing import (
    Reply,
    chat_completion,
    chat_text_stream,
    fake_provider,
    openai_usage,
)
from costwarden.pricing import load_catalogue, parse_catalogue

Conn = psycopg.Connection[Any]

#: A test model: 20 output tokens cost exactly $0.25 (input is free), and LiteLLM's
#: mock response always reports 20 completion tokens: every admitted call costs $0.25.
CATALOGUE = """
[[model]]
model = "openai/cw-test-model"
max_output_tokens = 20
[[model.price]]
effective_from = "2024-01-01T00:00:00Z"
input_tokens = "0"
output_tokens = "0.0125"
"""
PARAMS = {
    "model": "openai/cw-test-model",
    "api_key": "sk-test",
    "mock_response": "Hello from the mock.",
    "input_cost_per_token": 0,
    "output_cost_per_token": 0.0125,
}
MESSAGES = [{"role": "user", "content": "hello"}]
LIMITS = Limits({"openai/cw-test-model": ModelLimits(20, {"input_tokens": 0, "output_tokens": 1})})
CALLS = 128
BUDGET = 1_000_000  # $1: four calls of $0.25


@pytest.fixture(autouse=True)
def clean_litellm_callbacks() -> Iterator[None]:
    """LiteLLM keeps callbacks in module-level lists: restore them after each test."""
    names = [
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
        "input_callback",
    ]
    saved = {n: list(getattr(litellm, n, [])) for n in names}
    yield
    for n, v in saved.items():
        setattr(litellm, n, v)


def setup(client: costwarden.Client, budget: int | None = BUDGET) -> None:
    load_catalogue(client, parse_catalogue(CATALOGUE, "test"))
    client.upsert_org(ORG)
    client.upsert_workspace(ORG, WS)
    client.upsert_user(ORG, "u1")
    if budget is not None:
        client.set_budget(ORG, "workspace", WS, "day", budget)


async def storm(router: Router, n: int) -> list[str]:
    async def one() -> str:
        try:
            await router.acompletion(
                model="m",
                messages=MESSAGES,
                max_tokens=20,
                metadata={"org_id": ORG, "workspace_id": WS, "user_id": "u1"},
            )
            return "admitted"
        except BudgetExceeded:
            return "refused"
        except Exception as exc:  # LiteLLM's own budget refusal
            return f"{type(exc).__name__}: {exc}"

    results = await asyncio.gather(*[one() for _ in range(n)])
    await asyncio.sleep(0.5)  # LiteLLM runs success callbacks as background tasks
    return results


def test_128_concurrent_router_calls_against_a_budget_that_fits_4(
    dsn: str, client: costwarden.Client, admin_conn: Conn
) -> None:
    setup(client)

    async def with_hook() -> tuple[list[str], int]:
        async with costwarden.AsyncClient(dsn, pool_size=8) as acw:
            hook = CostwardenHook(acw, limits=LIMITS)
            litellm.callbacks = [hook]
            router = Router(
                model_list=[{"model_name": "m", "litellm_params": PARAMS}], num_retries=0
            )
            results = await storm(router, CALLS)
            for _ in range(50):  # commits are background tasks: wait until all landed
                if not hook._held:
                    break
                await asyncio.sleep(0.1)
            return results, len(hook._held)

    results, left = asyncio.run(with_hook())
    admitted = results.count("admitted")
    (st,) = client.budget_status(ORG, "workspace", WS)
    over = max(st.spent - BUDGET, 0)
    entries = ledger(admin_conn)

    # LiteLLM's own budget, in the same run: a Router deployment with max_budget $1
    litellm.callbacks = []

    async def litellm_budget() -> list[str]:
        router = Router(
            model_list=[
                {
                    "model_name": "m",
                    "litellm_params": {**PARAMS, "max_budget": 1.0, "budget_duration": "1d"},
                }
            ],
            num_retries=0,
        )
        return await storm(router, CALLS)

    own = asyncio.run(litellm_budget())
    own_admitted = own.count("admitted")
    own_spend = own_admitted * 250_000
    print(
        f"\nLiteLLM Router, {CALLS} concurrent calls, $1 budget fitting 4 calls of $0.25:"
        f"\n  costwarden hook : {admitted} admitted, {over} micro-USD over the budget"
        f"\n  LiteLLM max_budget: {own_admitted} admitted, {own_spend - BUDGET} micro-USD over "
        f"({(own_spend - BUDGET) * 100 // BUDGET} % over)"
    )
    assert admitted == 4, set(results)
    assert admitted == 4 and results.count("refused") == CALLS - 4
    assert left == 0 and over == 0 and st.spent == BUDGET and st.held == 0
    assert len(entries) == 4
    assert all(
        e["usage"] == {"output_tokens": 20, "input_tokens": e["usage"]["input_tokens"]}
        for e in entries
    )
    states = [s for s, _, _ in reservation_states(client)]
    assert states.count("committed") == 4 and states.count("denied") == CALLS - 4
    assert own_admitted > 4  # LiteLLM's own budget lets the concurrent calls through


def test_failure_event_releases(dsn: str, client: costwarden.Client, admin_conn: Conn) -> None:
    setup(client)

    async def main() -> None:
        async with costwarden.AsyncClient(dsn) as acw:
            hook = CostwardenHook(acw, limits=LIMITS)
            litellm.callbacks = [hook]
            router = Router(
                model_list=[{"model_name": "m", "litellm_params": PARAMS}], num_retries=0
            )
            with pytest.raises(Exception, match="boom"):
                await router.acompletion(
                    model="m",
                    messages=MESSAGES,
                    max_tokens=20,
                    mock_response=Exception("boom"),
                    metadata={"org_id": ORG, "workspace_id": WS},
                )
            for _ in range(50):
                if not hook._held:
                    break
                await asyncio.sleep(0.1)

    asyncio.run(main())
    assert [s for s, _, _ in reservation_states(client)] == ["released"]
    assert ledger(admin_conn) == []


def test_sync_client_and_missing_context(client: costwarden.Client) -> None:
    setup(client)
    client.upsert_key(ORG, "k1", workspace_id=WS)
    hook = CostwardenHook(client, limits=LIMITS)
    litellm.callbacks = [hook]
    router = Router(model_list=[{"model_name": "m", "litellm_params": PARAMS}], num_retries=0)

    async def main() -> None:
        await router.acompletion(
            model="m",
            messages=MESSAGES,
            max_tokens=20,
            metadata={"org_id": ORG, "workspace_id": WS, "key_id": "k1"},
        )
        with pytest.raises(ValueError, match="org_id and workspace_id"):
            await router.acompletion(model="m", messages=MESSAGES, max_tokens=20)
        for _ in range(50):
            if not hook._held:
                break
            await asyncio.sleep(0.1)

    asyncio.run(main())
    (info, *_) = client.reservations(ORG)
    assert info.status == "committed" and info.key_id == "k1" and info.charged_micros == 250_000


def test_proxy_pre_call_hook_maps_the_virtual_key(client: costwarden.Client) -> None:
    setup(client, budget=300_000)
    client.upsert_user(ORG, "alice")
    client.upsert_key(ORG, "team-key", workspace_id=WS, user_id="alice")
    hook = CostwardenHook(client, limits=LIMITS, key_rule=VirtualKeyRule(default_org=ORG))
    auth = UserAPIKeyAuth(token="hashed", key_alias="team-key", team_id=WS, user_id="alice")
    data = {
        "model": "openai/cw-test-model",
        "messages": MESSAGES,
        "max_tokens": 20,
        "litellm_call_id": "call-1",
    }

    async def main() -> None:
        out = await hook.async_pre_call_hook(auth, None, dict(data), "acompletion")
        assert out["model"] == "openai/cw-test-model"
        with pytest.raises(BudgetExceeded):  # a second $0.25 does not fit $0.30
            await hook.async_pre_call_hook(
                auth, None, {**data, "litellm_call_id": "c2"}, "completion"
            )
        await hook.async_post_call_failure_hook(data, RuntimeError("x"), auth)

    asyncio.run(main())
    rows = sorted(client.reservations(ORG), key=lambda r: r.created_at)
    assert [(r.status, r.workspace_id, r.user_id, r.key_id) for r in rows] == [
        ("released", WS, "alice", "team-key"),
        ("denied", WS, "alice", "team-key"),
    ]


def test_virtual_key_rule_and_context() -> None:
    rule = VirtualKeyRule(workspace_from="team_alias", key_from="token", default_org="acme")
    auth = UserAPIKeyAuth(token="t0k", team_alias="research", user_id="bob")
    assert rule.context(auth) == CallContext("acme", "research", "bob", "t0k")
    with pytest.raises(ValueError, match="team_alias"):
        rule.context(UserAPIKeyAuth(token="t"))


def test_usage_from_litellm_usage_objects() -> None:
    u = Usage(
        prompt_tokens=2500,
        completion_tokens=40,
        total_tokens=2540,
        prompt_tokens_details={"cached_tokens": 1800},
        cache_creation_input_tokens=600,
    )
    assert usage_from_litellm(u) == {
        "input_tokens": 100,
        "cached_input_tokens": 1800,
        "cache_write_tokens": 600,
        "output_tokens": 40,
    }


def test_sync_calls_are_stopped_before_they_are_sent(
    client: costwarden.Client, admin_conn: Conn
) -> None:
    """LiteLLM runs no hook that can refuse a synchronous call: rather than letting it
    through unreserved and unrecorded, the hook stops it before its request."""
    setup(client)
    hook = CostwardenHook(client, limits=LIMITS)
    litellm.callbacks = [hook]
    router = Router(model_list=[{"model_name": "m", "litellm_params": PARAMS}], num_retries=0)
    meta = {"org_id": ORG, "workspace_id": WS}
    mock = {"model": PARAMS["model"], "mock_response": "Hello", "messages": MESSAGES}
    calls = {
        "completion": lambda: litellm.completion(**mock, max_tokens=20, metadata=meta),
        "completion(stream=True)": lambda: list(
            litellm.completion(**mock, max_tokens=20, stream=True, metadata=meta)
        ),
        "Router.completion": lambda: router.completion(
            model="m", messages=MESSAGES, max_tokens=20, metadata=meta
        ),
    }
    for name, call in calls.items():
        with pytest.raises(SyncCallRefused, match="acompletion") as err:
            call()
        assert err.value.call_type == "completion", name
    assert reservation_states(client) == [] and ledger(admin_conn) == []

    async def main() -> None:  # the async path, same hook, same process: reserved and committed
        await router.acompletion(model="m", messages=MESSAGES, max_tokens=20, metadata=meta)
        for _ in range(50):
            if not hook._held:
                break
            await asyncio.sleep(0.1)

    asyncio.run(main())
    assert [s for s, _, _ in reservation_states(client)] == ["committed"]
    assert len(ledger(admin_conn)) == 1


def test_sync_calls_over_http_send_nothing(client: costwarden.Client) -> None:
    """The same with real requests (to the local fake API): none leaves LiteLLM."""
    setup(client)
    litellm.callbacks = [CostwardenHook(client, limits=LIMITS)]
    meta = {"org_id": ORG, "workspace_id": WS}
    with fake_provider(Reply(body=chat_completion(openai_usage(10, 20)))) as fake:
        http = {"model": PARAMS["model"], "api_key": "sk-test", "api_base": fake.url + "/v1"}
        with pytest.raises(SyncCallRefused):
            litellm.completion(**http, messages=MESSAGES, max_tokens=20, metadata=meta)
        with pytest.raises(SyncCallRefused, match=r"\(responses\)"):
            litellm.responses(**http, input="hello", max_output_tokens=20, metadata=meta)
        assert fake.requests == []
    assert reservation_states(client) == []


# -- every call type sized from what it sends ------------------------------------------------

#: Test models whose every token costs: 1 micro-USD an input token, 2 an output token, so
#: that a hold shows how many tokens of each were reserved.
SIZED_CATALOGUE = """
[[model]]
model = "openai/cw-sized"
max_output_tokens = 64
[[model.price]]
effective_from = "2024-01-01T00:00:00Z"
input_tokens = "0.000001"
output_tokens = "0.000002"

[[model]]
model = "openai/cw-sized-2"
max_output_tokens = 64
[[model.price]]
effective_from = "2024-01-01T00:00:00Z"
input_tokens = "0.000001"
output_tokens = "0.000002"

[[model]]
model = "openai/cw-embed"
[[model.price]]
effective_from = "2024-01-01T00:00:00Z"
input_tokens = "0.000001"

[[model]]
model = "anthropic/cw-claude"
max_output_tokens = 64
[[model.price]]
effective_from = "2024-01-01T00:00:00Z"
input_tokens = "0.000001"
output_tokens = "0.000002"
"""
SIZED_LIMITS = Limits.from_catalogue(parse_catalogue(SIZED_CATALOGUE, "sized"))
META = {"org_id": ORG, "workspace_id": WS}
LONG = "Lorem ipsum dolor sit amet, ça va? " * 40  # 1,440 UTF-8 bytes


def setup_sized(client: costwarden.Client) -> None:
    load_catalogue(client, parse_catalogue(SIZED_CATALOGUE, "sized"))
    setup(client)


def responses_body(inp: int, out: int) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1733000000,
        "status": "completed",
        "model": "cw-sized",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": inp,
            "output_tokens": out,
            "total_tokens": inp + out,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


TEXT_BODY = {
    "id": "cmpl_1",
    "object": "text_completion",
    "created": 1733000000,
    "model": "cw-sized",
    "choices": [{"text": "Once", "index": 0, "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 300, "completion_tokens": 7, "total_tokens": 307},
}
EMBED_BODY = {
    "object": "list",
    "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(2)],
    "model": "cw-embed",
    "usage": {"prompt_tokens": 330, "total_tokens": 330},
}
ANTHROPIC_BODY = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "cw-claude",
    "content": [{"type": "text", "text": "Hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 350, "output_tokens": 5},
}


async def settled(hook: CostwardenHook) -> None:
    """Wait for LiteLLM's background success / failure callbacks to settle every hold."""
    for _ in range(50):
        if not hook._held:
            return
        await asyncio.sleep(0.1)


def test_each_call_type_is_reserved_for_the_fields_it_sends(
    dsn: str, client: costwarden.Client, admin_conn: Conn
) -> None:
    """aresponses sizes its input and instructions, atext_completion its prompt,
    aembedding its input (and no output), anthropic messages their system prompt too:
    each hold covers the bytes the request carries, at least a token a byte."""
    setup_sized(client)
    with fake_provider() as fake:
        fake.add(
            Reply(body=responses_body(320, 9)),
            Reply(body=TEXT_BODY),
            Reply(body=EMBED_BODY),
            Reply(body=ANTHROPIC_BODY),
        )
        http = {"api_key": "sk-test", "api_base": fake.url + "/v1", "metadata": META}

        async def main() -> None:
            async with costwarden.AsyncClient(dsn) as acw:
                hook = CostwardenHook(acw, limits=SIZED_LIMITS)
                litellm.callbacks = [hook]
                await litellm.aresponses(
                    model="openai/cw-sized",
                    input=LONG,
                    instructions=LONG,
                    max_output_tokens=10,
                    **http,
                )
                await litellm.atext_completion(
                    model="openai/cw-sized", prompt=[LONG, LONG], max_tokens=10, best_of=3, **http
                )
                await litellm.aembedding(model="openai/cw-embed", input=[LONG, "short"], **http)
                await litellm.anthropic.messages.acreate(
                    model="anthropic/cw-claude",
                    system=LONG,
                    messages=[{"role": "user", "content": LONG}],
                    max_tokens=10,
                    api_key="sk-test",
                    api_base=fake.url,
                    metadata=META,
                )
                await settled(hook)

        asyncio.run(main())
        assert [path for path, _ in fake.requests] == [
            "/v1/responses",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/messages",
        ]
    rows = sorted(client.reservations(ORG), key=lambda r: r.created_at)
    held = [r.amount_micros for r in rows]
    nbytes = len(LONG.encode())
    assert held[0] >= 2 * nbytes + 10 * 2  # input and instructions; 10 output tokens
    assert held[1] >= 2 * nbytes + 3 * 10 * 2  # two prompts; best_of 3 completions
    assert nbytes + 5 <= held[2] < 2 * nbytes  # the inputs, and no output at all
    assert held[3] >= 2 * nbytes + 10 * 2  # system and message
    assert [r.status for r in rows] == ["committed"] * 4
    assert [e["usage"] for e in ledger(admin_conn)] == [
        {"input_tokens": 320, "output_tokens": 9},
        {"input_tokens": 300, "output_tokens": 7},
        {"input_tokens": 330},
        {"input_tokens": 350, "output_tokens": 5},
    ]


def test_a_responses_prompt_on_the_server_needs_a_bound_in_the_metadata(
    dsn: str, client: costwarden.Client
) -> None:
    setup_sized(client)
    with fake_provider() as fake:
        fake.add(Reply(body=responses_body(4_000, 9)))
        http = {"api_key": "sk-test", "api_base": fake.url + "/v1"}
        call = {"model": "openai/cw-sized", "input": "and then?", "max_output_tokens": 10}

        async def main() -> None:
            async with costwarden.AsyncClient(dsn) as acw:
                hook = CostwardenHook(acw, limits=SIZED_LIMITS)
                litellm.callbacks = [hook]
                with pytest.raises(SizingError, match="previous_response_id"):
                    await litellm.aresponses(
                        **call, previous_response_id="resp_0", metadata=META, **http
                    )
                assert fake.requests == []
                # the bound as a string: the Responses API forwards metadata to OpenAI
                meta = {**META, "costwarden_prompt_tokens": "5000"}
                await litellm.aresponses(
                    **call, previous_response_id="resp_0", metadata=meta, **http
                )
                await settled(hook)

        asyncio.run(main())
        assert len(fake.requests) == 1
    ((status, held, charged),) = reservation_states(client)
    assert status == "committed" and held >= 5_000 + 10 * 2 and charged == 4_000 + 9 * 2


class SlowFailureLogger(CustomLogger):
    """A logging callback ahead of the hook that takes its time over a failure, as a
    remote logging service does: the hook hears of the failure late."""

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await asyncio.sleep(0.5)


def test_a_fallback_attempt_holds_its_own_reservation(
    dsn: str, client: costwarden.Client, admin_conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream cut mid-way continues on a fallback deployment (LiteLLM's mid-stream
    fallback), under the same litellm_call_id. LiteLLM waits for the cut attempt's failure
    logging only so long (MID_STREAM_FAILURE_LOG_WAIT_SECONDS, made short here) before it
    sends the fallback, so the hook hears of the failure after the fallback started: the
    fallback must still be reserved (for its own model) and committed, and the cut
    attempt's hold released."""
    setup_sized(client)
    monkeypatch.setattr(litellm.constants, "MID_STREAM_FAILURE_LOG_WAIT_SECONDS", 0.05)
    with fake_provider() as fake:
        cut = chat_text_stream(["Hello", " there", " friend"], None)
        cut.events, cut.cut, cut.done_marker = cut.events[:3], True, False
        fake.add(cut, chat_text_stream([" friend", "."], openai_usage(40, 6)))
        base = {"api_key": "sk-test", "api_base": fake.url + "/v1"}
        prefill = {"supports_assistant_prefill": True}

        async def main() -> str:
            async with costwarden.AsyncClient(dsn) as acw:
                hook = CostwardenHook(acw, limits=SIZED_LIMITS)
                litellm.callbacks = [SlowFailureLogger(), hook]
                router = Router(
                    model_list=[
                        {
                            "model_name": "m",
                            "litellm_params": {"model": "openai/cw-sized", **base},
                            "model_info": prefill,
                        },
                        {
                            "model_name": "m2",
                            "litellm_params": {"model": "openai/cw-sized-2", **base},
                            "model_info": prefill,
                        },
                    ],
                    fallbacks=[{"m": ["m2"]}],
                    num_retries=0,
                    enable_mid_stream_fallback_continuation=True,
                )
                stream = await router.acompletion(
                    model="m",
                    messages=MESSAGES,
                    max_tokens=20,
                    stream=True,
                    metadata=META,
                    litellm_call_id="one-call",  # as the proxy gives every request one
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
                await asyncio.sleep(1.0)  # the slow failure logging
                await settled(hook)
                assert hook._held == {}
                return text

        assert asyncio.run(main()) == "Hello there friend."
        assert len(fake.requests) == 2
    rows = sorted(client.reservations(ORG), key=lambda r: r.created_at)
    assert [(r.model, r.status) for r in rows] == [
        ("openai/cw-sized", "released"),
        ("openai/cw-sized-2", "committed"),
    ]
    (entry,) = ledger(admin_conn)
    assert entry["model"] == "openai/cw-sized-2"
    assert entry["usage"] == {"input_tokens": 40, "output_tokens": 6}


def test_outcomes_settle_the_right_attempt_whatever_their_order(client: costwarden.Client) -> None:
    """The proxy's reservation is taken by the request's first attempt; each later attempt
    (a retry, a fallback) reserves its own. A failure releases the oldest attempt's hold,
    a success commits the latest's, in whichever order LiteLLM reports them; the proxy's
    final failure hook releases whatever is left."""
    setup_sized(client)
    hook = CostwardenHook(client, limits=SIZED_LIMITS)
    auth = UserAPIKeyAuth(token="t")
    data = {"model": "openai/cw-sized", "messages": MESSAGES, "max_tokens": 10, "metadata": META}
    one, two = {**data, "litellm_call_id": "req-1"}, {**data, "litellm_call_id": "req-2"}
    second = {**one, "model": "openai/cw-sized-2"}
    usage = Usage(prompt_tokens=30, completion_tokens=4, total_tokens=34)
    response = litellm.ModelResponse(usage=usage)

    async def main() -> None:
        # req-1: proxy hook, attempt 1, attempt 2 (a fallback), then attempt 2's success
        # is heard before attempt 1's failure
        await hook.async_pre_call_hook(auth, None, dict(one), "acompletion")
        await hook.async_pre_call_deployment_hook(dict(one), CallTypes.acompletion)
        await hook.async_pre_call_deployment_hook(dict(second), CallTypes.acompletion)
        await hook.async_log_success_event(dict(second), response, None, None)
        await hook.async_log_failure_event(dict(one), None, None, None)
        # req-2: attempt 1, attempt 2 (a retry); attempt 1's failure heard after attempt 2
        # started, then the request fails for good
        await hook.async_pre_call_hook(auth, None, dict(two), "acompletion")
        await hook.async_pre_call_deployment_hook(dict(two), CallTypes.acompletion)
        await hook.async_pre_call_deployment_hook(dict(two), CallTypes.acompletion)
        await hook.async_log_failure_event(dict(two), None, None, None)
        await hook.async_post_call_failure_hook(dict(two), RuntimeError("x"), auth)

    asyncio.run(main())
    assert hook._held == {}
    rows = sorted(client.reservations(ORG), key=lambda r: r.created_at)
    assert [(r.model, r.status) for r in rows] == [
        ("openai/cw-sized", "released"),  # req-1, the proxy's, taken by attempt 1
        ("openai/cw-sized-2", "committed"),  # req-1, attempt 2
        ("openai/cw-sized", "released"),  # req-2, attempt 1
        ("openai/cw-sized", "released"),  # req-2, attempt 2
    ]
    assert rows[1].charged_micros == 30 + 4 * 2


def test_call_types_it_cannot_size_are_stopped_and_free_ones_pass(
    client: costwarden.Client,
) -> None:
    setup_sized(client)
    hook = CostwardenHook(client, limits=SIZED_LIMITS)
    image = {"model": "openai/dall-e-3", "prompt": "a cat", "metadata": META}

    async def main() -> None:
        for call_type in (CallTypes.aimage_generation, CallTypes.aspeech, None):
            with pytest.raises(NotGuarded, match="cannot size a LiteLLM"):
                await hook.async_pre_call_deployment_hook(dict(image), call_type)
        with pytest.raises(NotGuarded, match="cannot size a LiteLLM pass_through_endpoint"):
            await hook.async_pre_call_hook(None, None, dict(image), "pass_through_endpoint")
        for call_type in (CallTypes.afile_list, CallTypes.aget_responses, CallTypes.amoderation):
            assert await hook.async_pre_call_deployment_hook({"metadata": {}}, call_type) is None
        assert await hook.async_pre_call_hook(None, None, {}, "aretrieve_batch") == {}

    asyncio.run(main())
    assert reservation_states(client) == []
