"""The OpenAI SDK in three lines, in the demo (`costwarden demo`): the real ``openai``
SDK, guarded by costwarden.integrations.openai, talks to a local fake of the OpenAI
API on 127.0.0.1 (costwarden.integrations.testing) replaying recorded-shape
responses; nothing leaves the machine. A plain call shows the reservation, the
mapped usage and the committed charge; a streamed call the usage of its last
(``include_usage``) chunk. Without the ``openai`` extra the section says so and is
skipped."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..client import Client
from ..integrations.testing import (
    Reply,
    chat_completion,
    chat_text_stream,
    fake_provider,
    openai_usage,
)
from ..pricing import load_catalogue, read_catalogue, sample_catalogue_path

Echo = Callable[[str], None]

ORG, WS, MODEL = "pied-piper", "chat-app", "gpt-4o-mini"
HEADING = "== The OpenAI SDK in three lines =="
#: A long, cacheable system prompt (about 5 KB), as an assistant with a manual has.
SYSTEM = " ".join(
    f"Section {i}: the compression API takes a file, returns its Weissman score and the "
    "compressed bytes; answer in one sentence and cite the section."
    for i in range(1, 41)
)
QUESTION = "What does the compression API return?"
#: What the fake API reports for the plain call: 1,200 prompt tokens of which 1,024
#: were read from OpenAI's prompt cache, 42 completion tokens.
PLAIN_USAGE = openai_usage(1200, 42, cached=1024)
STREAM_WORDS = ["It ", "returns ", "the ", "Weissman ", "score ", "and ", "the ", "bytes."]
STREAM_USAGE = openai_usage(1210, 9, cached=1024)


@dataclass(frozen=True)
class OpenAIDemo:
    """What the section showed (for the tests); ``skipped`` without the openai extra."""

    skipped: bool
    held_micros: int = 0
    charged_micros: int = 0
    mapped: dict[str, int] | None = None
    stream_held_micros: int = 0
    stream_charged_micros: int = 0
    stream_mapped: dict[str, int] | None = None


def demo_section(dsn: str, echo: Echo = print) -> OpenAIDemo:
    echo("")
    echo(HEADING)
    if importlib.util.find_spec("openai") is None:
        echo("skipped: the openai SDK is not installed (pip install 'costwarden[openai]')")
        return OpenAIDemo(skipped=True)
    with Client(dsn, on_unavailable="closed") as cw, fake_provider() as fake:
        return _demo(cw, fake, echo)


def _fields(usage: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in usage.items())


def _demo(cw: Client, fake: Any, echo: Echo) -> OpenAIDemo:
    import openai

    from ..integrations.openai import guard, usage_from_openai

    load_catalogue(cw, read_catalogue(sample_catalogue_path()))
    cw.upsert_org(ORG)
    cw.upsert_workspace(ORG, WS)
    cw.set_budget(ORG, "workspace", WS, "day", 1_000_000)
    host = fake.url.removeprefix("http://")
    echo(f"The real openai SDK ({openai.__version__}) against a local fake of the OpenAI API")
    echo(f"on {host}, replaying recorded-shape responses (nothing leaves this machine):")
    echo("")
    echo("    from costwarden.integrations.openai import guard")
    echo(f'    client = guard(openai.OpenAI(), cw, org_id="{ORG}", workspace_id="{WS}")')
    echo(f'    reply = client.chat.completions.create(model="{MODEL}", messages=msgs,')
    echo("                                           max_tokens=200)")
    echo("")

    sdk = openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-demo-not-a-key", max_retries=0)
    client = guard(sdk, cw, org_id=ORG, workspace_id=WS)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]

    fake.add(Reply(body=chat_completion(PLAIN_USAGE)))
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=200)
    held = max(cw.reservations(ORG, limit=1000), key=lambda r: r.created_at)
    mapped = usage_from_openai(reply.usage)
    u = reply.usage
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    echo(f"reserve : {held.amount_micros:,} µ$ held before the request was sent")
    echo("          (sized offline: the request's bytes bound the prompt, max_tokens the output)")
    echo(
        f"usage   : prompt_tokens={u.prompt_tokens:,} (cached_tokens={cached:,} of them), "
        f"completion_tokens={u.completion_tokens:,}"
    )
    echo(f"mapped  : {_fields(mapped)} (no token counted twice)")
    echo(
        f"commit  : {held.charged_micros:,} µ$ charged ({held.status}); "
        f"{held.amount_micros - held.charged_micros:,} µ$ of the hold released"
    )

    fake.add(chat_text_stream(STREAM_WORDS, STREAM_USAGE))
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=200, stream=True
    )
    chunks = [c for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    session = stream.costwarden
    result = session.result
    assert result is not None and session.reservation is not None
    sent = fake.requests[-1][1].get("stream_options")
    echo("")
    echo(f"stream=True: the adapter added stream_options={json.dumps(sent)}; the reply:")
    echo(f'          "{text}"')
    echo(f"stream  : {len(chunks)} chunks; the last has no choices, only the usage:")
    echo(f"          {_fields(session.tracker.outcome()[0])}")
    exact = session.tracker.final is not None
    echo(
        f"commit  : {result.charged_micros:,} µ$ charged of {session.reservation.amount_micros:,}"
        f" held ({'exact' if exact else 'approximate'}), ledger entry #{result.entry_seq} of {ORG}"
    )
    return OpenAIDemo(
        skipped=False,
        held_micros=held.amount_micros,
        charged_micros=held.charged_micros,
        mapped=mapped,
        stream_held_micros=session.reservation.amount_micros,
        stream_charged_micros=result.charged_micros,
        stream_mapped=session.tracker.outcome()[0],
    )
