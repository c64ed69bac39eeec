"""fn_cost_quote (SPEC §3, §0, §5): exact arithmetic, usage validation, unpriced models,
billing mode and credits."""

from __future__ import annotations

import json
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import costwarden
from cwtest import Seeded, expect_sqlstate, table_snapshot

Conn = psycopg.Connection[Any]

INTEGER_UNITS = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "images",
    "characters",
    "pages",
    "requests",
)
TOKEN_UNITS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")
UNITS = (*INTEGER_UNITS, "audio_seconds")

QUOTE = (
    "select amount_micros, tokens, pricing_snapshot_id, billing_mode, credits "
    "from costwarden.fn_cost_quote(p_org_id => %s, p_workspace_id => %s, p_model => %s, "
    "p_usage => %s::jsonb)"
)


def jtext(obj: dict[str, Any]) -> str:
    """JSON text with Decimals written as exact literals."""
    return (
        "{"
        + ", ".join(
            f"{json.dumps(k)}: {format(v, 'f') if isinstance(v, Decimal) else json.dumps(v)}"
            for k, v in obj.items()
        )
        + "}"
    )


def oracle(prices: dict[str, Decimal], usage: dict[str, Any]) -> int:
    """SPEC §0: ceil(sum(units * price) * 1e6), rounded up once."""
    with localcontext() as ctx:
        ctx.prec = 200
        total = sum((Decimal(v) * prices.get(k, Decimal(0)) for k, v in usage.items()), Decimal(0))
        return int((total * 1_000_000).to_integral_value(rounding=ROUND_CEILING))


def quote(conn: Conn, org: str, ws: str, model: str, usage: str | None) -> tuple[Any, ...]:
    row = conn.execute(QUOTE, (org, ws, model, usage)).fetchone()
    assert row is not None
    return tuple(row)


# -- exact arithmetic -------------------------------------------------------------------------


def _decimal(max_scale: int, max_int_digits: int) -> st.SearchStrategy[Decimal]:
    """Exact decimals with up to ``max_scale`` fractional digits, below 10**max_int_digits."""
    return st.integers(0, max_scale).flatmap(
        lambda s: st.integers(0, 10 ** (s + max_int_digits)).map(lambda n: Decimal(n).scaleb(-s))
    )


prices_st = st.dictionaries(st.sampled_from(UNITS), _decimal(12, 2), min_size=1)


@st.composite
def priced_usage(draw: st.DrawFn) -> tuple[dict[str, Decimal], dict[str, Any]]:
    prices = draw(prices_st)
    usage: dict[str, Any] = {}
    for unit in draw(st.lists(st.sampled_from(sorted(prices)), unique=True)):
        if unit == "audio_seconds":
            usage[unit] = draw(_decimal(6, 6))
        else:
            usage[unit] = draw(st.integers(0, 10**9))
    # a unit without a price is fine when it was not used
    for unit in draw(st.lists(st.sampled_from(UNITS), unique=True, max_size=2)):
        if unit not in prices:
            usage[unit] = 0
    return prices, usage


@pytest.fixture
def prop_model(admin_conn: Conn, seeded: Seeded) -> str:
    admin_conn.execute("select costwarden.fn_model_upsert('prop/model', true)")
    return "prop/model"


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=priced_usage())
def test_quote_matches_decimal_oracle(
    admin_conn: Conn,
    seeded: Seeded,
    prop_model: str,
    case: tuple[dict[str, Decimal], dict[str, Any]],
) -> None:
    prices, usage = case
    with admin_conn.transaction(force_rollback=True):
        sid = admin_conn.execute(
            "select costwarden.fn_pricing_set(%s, %s::jsonb, '2024-01-01')",
            (prop_model, jtext(prices)),
        ).fetchone()
        amount, tokens, snapshot, mode, credits = quote(
            admin_conn, seeded.org, seeded.ws_platform, prop_model, jtext(usage)
        )
    expected = oracle(prices, usage)
    assert amount == expected, (prices, usage)
    assert tokens == sum(int(v) for k, v in usage.items() if k in TOKEN_UNITS)
    assert sid is not None and snapshot == sid[0]
    assert mode == "platform_managed"
    # default credit_rate_usd 0.01: credits = amount / 1e6 / 0.01
    assert credits == (Decimal(expected) / 10_000).quantize(Decimal("0.000001"))


def test_rounding_up_happens_once(admin_conn: Conn, seeded: Seeded, prop_model: str) -> None:
    admin_conn.execute(
        "select costwarden.fn_pricing_set(%s, "
        '\'{"input_tokens": 0.0000001, "output_tokens": 0.0000001, "images": 0.0000001}\', '
        "'2024-01-01')",
        (prop_model,),
    )
    org, ws = seeded.org, seeded.ws_platform
    # 3 x 0.1 micro = 0.3 micro -> 1 micro, not 3 x ceil(0.1) = 3
    assert quote(admin_conn, org, ws, prop_model, '{"input_tokens": 3}')[0] == 1
    assert quote(admin_conn, org, ws, prop_model, '{"input_tokens": 1, "output_tokens": 1}')[0] == 1
    assert quote(admin_conn, org, ws, prop_model, '{"input_tokens": 10}')[0] == 1
    assert quote(admin_conn, org, ws, prop_model, '{"input_tokens": 11}')[0] == 2
    assert quote(admin_conn, org, ws, prop_model, '{"images": 5, "output_tokens": 5}')[0] == 1
    assert quote(admin_conn, org, ws, prop_model, '{"input_tokens": 0}')[0] == 0
    assert quote(admin_conn, org, ws, prop_model, "{}")[:2] == (0, 0)


def test_exact_cases(client: costwarden.Client, seeded: Seeded) -> None:
    org = seeded.org
    q = client.quote(org, seeded.ws_platform, seeded.platform_model, {"input_tokens": 3})
    assert (q.amount_micros, q.tokens) == (8, 3)  # 7.5 micros -> 8
    q = client.quote(
        org,
        seeded.ws_platform,
        seeded.platform_model,
        {"input_tokens": 1000, "cached_input_tokens": 2000, "output_tokens": 500},
    )
    assert (q.amount_micros, q.tokens) == (2500 + 2500 + 5000, 3500)
    assert q.pricing_snapshot_id == seeded.snapshot_ids[seeded.platform_model]
    assert q.credits == Decimal("1.000000")
    q = client.quote(
        org,
        seeded.ws_vendor,
        seeded.realtime_model,
        {"input_tokens": 10, "output_tokens": 10, "audio_seconds": 1},
    )
    assert (q.amount_micros, q.tokens) == (50 + 200 + 1000, 20)
    # non-token units count toward cost only
    q = client.quote(org, seeded.ws_vendor, seeded.realtime_model, {"audio_seconds": 0.5})
    assert (q.amount_micros, q.tokens) == (500, 0)


def test_fractional_audio_seconds_are_exact(admin_conn: Conn, seeded: Seeded) -> None:
    org, ws, model = seeded.org, seeded.ws_vendor, seeded.realtime_model
    # 0.001 USD per second
    assert quote(admin_conn, org, ws, model, '{"audio_seconds": 0.0001}')[0] == 1  # 0.1 micro
    assert quote(admin_conn, org, ws, model, '{"audio_seconds": 1.234567}')[0] == 1235
    assert quote(admin_conn, org, ws, model, '{"audio_seconds": 1.0000000001}')[0] == 1001
    assert quote(admin_conn, org, ws, model, '{"audio_seconds": 3600}')[0] == 3_600_000


def test_integral_values_written_as_decimals_are_integers(admin_conn: Conn, seeded: Seeded) -> None:
    org, ws, model = seeded.org, seeded.ws_platform, seeded.platform_model
    assert quote(admin_conn, org, ws, model, '{"input_tokens": 4.0}')[:2] == (10, 4)
    assert quote(admin_conn, org, ws, model, '{"input_tokens": 4e2}')[:2] == (1000, 400)
    assert quote(admin_conn, org, ws, model, '{"input_tokens": -0}')[:2] == (0, 0)


def test_cost_beyond_bigint_is_cw004(admin_conn: Conn, seeded: Seeded) -> None:
    expect_sqlstate(
        admin_conn,
        "CW004",
        QUOTE,
        (
            seeded.org,
            seeded.ws_platform,
            seeded.platform_model,
            '{"input_tokens": 9223372036854775807}',
        ),
        match="p_usage",
    )
    expect_sqlstate(
        admin_conn,
        "CW004",
        QUOTE,
        (
            seeded.org,
            seeded.ws_platform,
            seeded.platform_model,
            '{"input_tokens": 9223372036854775807, "output_tokens": 9223372036854775807}',
        ),
        match="p_usage",
    )


# -- bad usage --------------------------------------------------------------------------------

BAD_USAGE: list[tuple[str | None, str]] = [
    ('{"tokens": 1}', "p_usage: unknown usage unit"),
    ('{"input_tokens": 1, "Input_Tokens": 1}', "p_usage: unknown usage unit"),
    ('{"input_tokens": -1}', "p_usage.input_tokens must not be negative"),
    ('{"audio_seconds": -0.5}', "p_usage.audio_seconds must not be negative"),
    ('{"input_tokens": "5"}', "p_usage.input_tokens must be a number"),
    ('{"input_tokens": true}', "p_usage.input_tokens must be a number"),
    ('{"input_tokens": [5]}', "p_usage.input_tokens must be a number"),
    ('{"input_tokens": {"n": 5}}', "p_usage.input_tokens must be a number"),
    ('{"input_tokens": null}', "p_usage.input_tokens must be a number"),
    ('{"input_tokens": 1.5}', "p_usage.input_tokens must be an integer"),
    ('{"images": 0.000001}', "p_usage.images must be an integer"),
    ('{"output_tokens": 1e-400}', "p_usage.output_tokens must be an integer"),
    ('{"input_tokens": 9223372036854775808}', "p_usage.input_tokens is out of range"),
    ('{"audio_seconds": 1e19}', "p_usage.audio_seconds is out of range"),
    ('{"input_tokens": 1e400}', "p_usage.input_tokens is out of range"),
    (
        '{"input_tokens": 9223372036854775807, "output_tokens": 1}',
        "p_usage: token count is out of range",
    ),
    ("null", "p_usage must be a JSON object"),
    ("[]", "p_usage must be a JSON object"),
    ('[{"input_tokens": 1}]', "p_usage must be a JSON object"),
    ('"input_tokens"', "p_usage must be a JSON object"),
    ("5", "p_usage must be a JSON object"),
    ("true", "p_usage must be a JSON object"),
    (None, "p_usage must be a JSON object"),
]


def test_every_bad_usage_is_cw004(admin_conn: Conn, seeded: Seeded) -> None:
    before = table_snapshot(admin_conn)
    for usage, says in BAD_USAGE:
        for model, ws in (
            (seeded.platform_model, seeded.ws_platform),
            (seeded.realtime_model, seeded.ws_vendor),
            (seeded.unpriced_model, seeded.ws_empty),  # validation comes before pricing
        ):
            expect_sqlstate(admin_conn, "CW004", QUOTE, (seeded.org, ws, model, usage), match=says)
    assert table_snapshot(admin_conn) == before


def test_bad_usage_through_the_client(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.InvalidArgument, match=r"p_usage\.input_tokens"):
        client.quote(seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": -1})
    with pytest.raises(costwarden.InvalidArgument, match="p_usage"):
        client.quote(seeded.org, seeded.ws_platform, seeded.platform_model, None)  # type: ignore[arg-type]


def test_non_finite_usage_through_the_client(client: costwarden.Client, seeded: Seeded) -> None:
    for value in (float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity")):
        with pytest.raises(costwarden.InvalidArgument, match="input_tokens"):
            client.quote(
                seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": value}
            )


def test_bad_identifiers(admin_conn: Conn, seeded: Seeded) -> None:
    u = '{"input_tokens": 1}'
    m, ws = seeded.platform_model, seeded.ws_platform
    expect_sqlstate(admin_conn, "CW004", QUOTE, (None, ws, m, u), match="p_org_id is required")
    expect_sqlstate(admin_conn, "CW004", QUOTE, ("acme", None, m, u), match="p_workspace_id")
    expect_sqlstate(admin_conn, "CW004", QUOTE, ("acme", ws, None, u), match="p_model is required")
    expect_sqlstate(admin_conn, "CW002", QUOTE, ("nope", ws, m, u), match="p_org_id")
    expect_sqlstate(admin_conn, "CW002", QUOTE, ("acme", "nope", m, u), match="p_workspace_id")
    expect_sqlstate(admin_conn, "CW002", QUOTE, ("globex", ws, m, u), match="p_workspace_id")
    expect_sqlstate(admin_conn, "CW002", QUOTE, ("acme", ws, "x/nope", u), match="p_model")


# -- unpriced ---------------------------------------------------------------------------------


def test_unpriced_model_is_cw006(
    client: costwarden.Client, admin_conn: Conn, seeded: Seeded
) -> None:
    with pytest.raises(costwarden.UnpricedModel, match="p_model") as info:
        client.quote(seeded.org, seeded.ws_empty, seeded.unpriced_model, {"input_tokens": 1})
    assert info.value.hint and "unpriced_policy" in info.value.hint
    expect_sqlstate(
        admin_conn, "CW006", QUOTE, (seeded.org, seeded.ws_empty, seeded.unpriced_model, "{}")
    )
    # a model whose only snapshot is in the future is unpriced now
    admin_conn.execute(
        "select costwarden.fn_pricing_set(%s, '{\"input_tokens\": 1}', now() + interval '1 day')",
        (seeded.unpriced_model,),
    )
    expect_sqlstate(
        admin_conn, "CW006", QUOTE, (seeded.org, seeded.ws_empty, seeded.unpriced_model, "{}")
    )


def test_used_unit_without_price_is_cw006(client: costwarden.Client, seeded: Seeded) -> None:
    with pytest.raises(costwarden.UnpricedModel, match="audio_seconds"):
        client.quote(
            seeded.org,
            seeded.ws_platform,
            seeded.platform_model,
            {"input_tokens": 1, "audio_seconds": 2},
        )
    # unused (zero) it is fine
    q = client.quote(
        seeded.org,
        seeded.ws_platform,
        seeded.platform_model,
        {"input_tokens": 2, "audio_seconds": 0},
    )
    assert q.amount_micros == 5


def test_unpriced_policy_free(client: costwarden.Client, seeded: Seeded) -> None:
    client.set_setting("unpriced_policy", "free")
    q = client.quote(
        seeded.org, seeded.ws_empty, seeded.unpriced_model, {"input_tokens": 10**6, "images": 3}
    )
    assert (q.amount_micros, q.tokens, q.pricing_snapshot_id) == (0, 10**6, None)
    assert q.credits == 0
    # a used unit without a price costs nothing; the priced ones are charged
    q = client.quote(
        seeded.org,
        seeded.ws_platform,
        seeded.platform_model,
        {"input_tokens": 1000, "audio_seconds": 2},
    )
    assert q.amount_micros == 2500
    assert q.pricing_snapshot_id == seeded.snapshot_ids[seeded.platform_model]


# -- billing mode (SPEC §5) -------------------------------------------------------------------


def _mode(client: costwarden.Client, ws: str, model: str) -> tuple[str, str, str]:
    bm = client.billing_mode("acme", ws)
    q = client.quote("acme", ws, model, {"input_tokens": 1})
    assert q.billing_mode == bm.billing_mode
    return q.billing_mode, bm.source, bm.billing_mode


def test_billing_mode_rules(client: costwarden.Client, seeded: Seeded) -> None:
    pm, vm = seeded.platform_model, seeded.vendor_model
    for proxy in (True, False):
        client.set_setting("platform_proxy_configured", proxy)
        default = "platform_managed" if proxy else "byok"
        # rule 2: a platform-servable model is platform_managed where the proxy exists
        assert _mode(client, seeded.ws_platform, pm)[:2] == (default, "model")
        # rule 3: a vendor model is byok, whatever the proxy
        assert _mode(client, seeded.ws_vendor, vm)[:2] == ("byok", "model")
        # rule 4: no model -> the deployment default
        assert _mode(client, seeded.ws_empty, pm)[:2] == (default, "deploy_default")
        # rule 1: an explicit override wins over everything
        for ws in (seeded.ws_platform, seeded.ws_vendor, seeded.ws_empty):
            for override in ("platform_managed", "byok", "disabled"):
                client.upsert_workspace("acme", ws, billing_override=override)
                assert _mode(client, ws, pm)[:2] == (override, "override")
            client.upsert_workspace("acme", ws, billing_override="none")
    # the quoted model does not change the workspace's mode: the workspace's model does
    client.set_setting("platform_proxy_configured", True)
    assert _mode(client, seeded.ws_vendor, pm)[0] == "byok"
    assert _mode(client, seeded.ws_platform, vm)[0] == "platform_managed"


# -- credits ----------------------------------------------------------------------------------


def test_credits_use_the_org_rate_else_the_runtime_setting(
    client: costwarden.Client, seeded: Seeded
) -> None:
    usage = {"input_tokens": 1000, "output_tokens": 500}  # 7500 micros
    acme = client.quote(seeded.org, seeded.ws_platform, seeded.platform_model, usage)
    globex = client.quote(seeded.other_org, seeded.other_ws, seeded.platform_model, usage)
    assert acme.amount_micros == globex.amount_micros == 7500
    assert acme.credits == Decimal("0.75")  # 0.0075 USD / 0.01
    assert globex.credits == Decimal("7.5")  # org setting 0.001 overrides
    client.set_setting("credit_rate_usd", 0.03)
    acme = client.quote(seeded.org, seeded.ws_platform, seeded.platform_model, usage)
    globex = client.quote(seeded.other_org, seeded.other_ws, seeded.platform_model, usage)
    assert acme.credits == (Decimal("0.0075") / Decimal("0.03")).quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_UP
    )
    assert globex.credits == Decimal("7.5")
    # removing the org setting falls back to the runtime setting
    client.upsert_org(seeded.other_org, {"credit_rate_usd": None})
    globex = client.quote(seeded.other_org, seeded.other_ws, seeded.platform_model, usage)
    assert globex.credits == acme.credits


def test_quote_writes_nothing(admin_conn: Conn, client: costwarden.Client, seeded: Seeded) -> None:
    before = table_snapshot(admin_conn)
    client.quote(seeded.org, seeded.ws_platform, seeded.platform_model, {"input_tokens": 5})
    assert table_snapshot(admin_conn) == before
