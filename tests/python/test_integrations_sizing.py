"""Reservation sizing (SPEC §14): the prompt bound is never below the true token count.

The true counts come from real tokenizers that work offline: OpenAI's o200k_base
and cl100k_base (tiktoken, with the encoding files LiteLLM ships in its package)
and the Claude tokenizer LiteLLM ships (Hugging Face ``tokenizers``)."""

from __future__ import annotations

import importlib.util
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from costwarden.integrations import Limits, ModelLimits, SizingError
from costwarden.integrations._sizing import bound_bytes, plan_call

_spec = importlib.util.find_spec("litellm")
assert _spec is not None and _spec.origin is not None
BUNDLED = Path(_spec.origin).parent / "litellm_core_utils" / "tokenizers"
os.environ["TIKTOKEN_CACHE_DIR"] = str(BUNDLED)  # the shipped encoding files: no download

import tiktoken  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

ENCODINGS = [tiktoken.get_encoding("o200k_base"), tiktoken.get_encoding("cl100k_base")]
CLAUDE = Tokenizer.from_file(str(BUNDLED / "anthropic_tokenizer.json"))

text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=400
)
messages = st.lists(
    st.tuples(st.sampled_from(["system", "user", "assistant"]), text), min_size=1, max_size=6
)


def true_tokens(encode: Any, msgs: list[tuple[str, str]]) -> int:
    """OpenAI's documented chat framing: 3 tokens per message, the role, and 3 to
    prime the reply, plus the content's tokens."""
    return 3 + sum(3 + len(encode(role)) + len(encode(content)) for role, content in msgs)


def plan(msgs: list[tuple[str, str]], tools: Any = None) -> Any:
    payload = [{"role": r, "content": c} for r, c in msgs]
    return plan_call(
        model="openai/m",
        limits=ModelLimits(100, {}),
        messages=payload,
        tools=tools,
        message_count=len(payload),
        max_output=None,
        image_tokens=0,
    )


@settings(max_examples=200, deadline=None)
@given(s=text)
@example(s="\ua7f2")
def test_a_token_is_never_fewer_than_one_byte(s: str) -> None:
    nbytes = len(s.encode("utf-8"))
    for enc in ENCODINGS:
        tokens = enc.encode_ordinary(s)
        assert len(tokens) <= nbytes
        # every token stands for at least one byte of the text
        assert all(len(enc.decode_single_token_bytes(t)) >= 1 for t in tokens)
    # Claude's tokenizer normalizes (NFKC) first, which can lengthen the text: the
    # bound is taken on the longer of the two forms. Its Unicode tables are not
    # Python's: U+A7F2 (Unicode 14) is 'C' to unicodedata and passes the tokenizer
    # unchanged, as its three bytes
    normalized = len(unicodedata.normalize("NFKC", s).encode("utf-8"))
    assert len(CLAUDE.encode(s, add_special_tokens=False).ids) <= max(nbytes, normalized)
    assert bound_bytes(s) >= max(nbytes, normalized)


@settings(max_examples=200, deadline=None)
@given(msgs=messages)
def test_the_prompt_bound_covers_the_true_prompt_tokens(msgs: list[tuple[str, str]]) -> None:
    p = plan(msgs)
    for enc in ENCODINGS:
        assert p.prompt_bound >= true_tokens(enc.encode_ordinary, msgs)
    claude = true_tokens(lambda s: CLAUDE.encode(s, add_special_tokens=False).ids, msgs)
    assert p.prompt_bound >= claude
    assert p.reserve_usage == {"input_tokens": p.prompt_bound, "output_tokens": 100}


@settings(max_examples=50, deadline=None)
@given(msgs=messages, name=st.from_regex(r"[a-z_]{1,30}", fullmatch=True), desc=text)
def test_tools_are_covered(msgs: list[tuple[str, str]], name: str, desc: str) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": name, "description": desc, "parameters": {"type": "object"}},
        }
    ]
    enc = ENCODINGS[0]
    rendered = f"namespace functions {{\n// {desc}\ntype {name} = () => any;\n}}"
    assert plan(msgs, tools).prompt_bound >= true_tokens(enc.encode_ordinary, msgs) + len(
        enc.encode_ordinary(rendered)
    )


def test_output_cap_request_then_catalogue_then_refusal() -> None:
    limits = Limits({"openai/m": ModelLimits(4096, {})})
    kw: dict[str, Any] = {
        "model": "openai/m",
        "messages": [],
        "message_count": 0,
        "image_tokens": 0,
    }
    assert plan_call(limits=limits.get("openai/m"), max_output=50, **kw).output_bound == 50
    assert plan_call(limits=limits.get("openai/m"), max_output=None, **kw).output_bound == 4096
    assert (
        plan_call(limits=limits.get("openai/m"), max_output=50, choices=3, **kw).output_bound == 150
    )
    with pytest.raises(SizingError):
        plan_call(limits=limits.get("openai/other"), max_output=None, **kw)


def test_a_prompt_on_the_server_is_sized_only_from_the_callers_bound() -> None:
    kw: dict[str, Any] = {
        "model": "openai/m",
        "limits": ModelLimits(4096, {}),
        "messages": ["x" * 1000],
        "message_count": 1,
        "max_output": 10,
        "image_tokens": 0,
    }
    own = plan_call(**kw).prompt_bound
    with pytest.raises(SizingError, match="previous_response_id, web_search tool"):
        plan_call(**kw, server_side=["previous_response_id", "web_search tool"])
    on_server = {**kw, "server_side": ["previous_response_id"]}
    assert plan_call(**on_server, prompt_tokens=90_000).prompt_bound == 90_000
    # never below what the request's own content bounds
    assert plan_call(**on_server, prompt_tokens=5).prompt_bound == own
    assert plan_call(**kw, prompt_tokens=90_000).prompt_bound == 90_000
    for bad in (-1, 1.5, "100", True):
        with pytest.raises(SizingError, match="costwarden_prompt_tokens"):
            plan_call(**kw, prompt_tokens=bad)


def test_the_priciest_units_carry_the_bound() -> None:
    prices = {
        "input_tokens": 1,
        "cache_write_tokens": 2,
        "audio_input_tokens": 8,
        "output_tokens": 4,
        "audio_output_tokens": 16,
    }
    p = plan_call(
        model="openai/a",
        limits=ModelLimits(10, prices),
        messages=["hi"],
        message_count=1,
        max_output=None,
        image_tokens=0,
    )
    assert set(p.reserve_usage) == {"audio_input_tokens", "audio_output_tokens"}


def test_the_sample_catalogue_gives_every_token_model_a_cap() -> None:
    limits = Limits.from_file()
    token_models = [m for m, lim in limits.models.items() if "output_tokens" in lim.prices]
    assert token_models and all(limits.get(m).max_output_tokens for m in token_models)


def test_catalogue_max_output_tokens_is_validated() -> None:
    from costwarden.pricing import CatalogueError, parse_catalogue

    head = "[[model]]\nmodel = 'x/y'\nmax_output_tokens = {}\n"
    price = "[[model.price]]\neffective_from = '2024-01-01T00:00:00Z'\ninput_tokens = '1'\n"
    assert parse_catalogue(head.format(64) + price).models[0].max_output_tokens == 64
    for bad in ("0", "-1", "'64'", "true", "1.5"):
        with pytest.raises(CatalogueError, match="max_output_tokens"):
            parse_catalogue(head.format(bad) + price)
