"""costwarden.integrations.litellm: the hook inside real LiteLLM Router calls
(mock_response: nothing leaves the machine), on a real PostgreSQL (SPEC §14)."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import asyncio
from collections.abc import Iterator
from typing import Any

import litellm
import psycopg
import pytest
from litellm import Router
from litellm.proxy._types import UserAPIKeyAuth
from litellm.types.utils import Usage

import costwarden
from adapter_helpers import ORG, WS, ledger, reservation_states
from costwarden import BudgetExceeded
from costwarden.integrations import Limits, ModelLimits
from costwarden.integrations.litellm import (
    CallContext,
    CostwardenHook,
    SyncCallRefused,
    VirtualKeyRule,
    usage_from_litellm,
)
from costwarden.integrations.testing import Reply, chat_completion, fake_provider, openai_usage
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
            await hook.async_pre_call_hook(auth, None, {**data, "litellm_call_id": "c2"}, "x")
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
