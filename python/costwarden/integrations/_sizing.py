"""Reservation sizing without a network tokenizer, never too small (SPEC §14).

**Prompt.** Every tokenizer the providers use is byte-level: the text is
UTF-8 encoded and every token stands for one or more whole bytes of it (BPE
merges only ever join two adjacent units into one, starting from single
bytes; a merge never produces a token of zero bytes). So the tokens of a text
number at most its UTF-8 bytes. A tokenizer that first normalizes the text
(NFKC, as Claude's published tokenizer does) may lengthen it ("¼" becomes
"1⁄4"), so the bound is the larger of the raw and the NFKC-normalized byte
lengths. The request's content is bounded by the
UTF-8 bytes of its JSON form (every text the model reads is a JSON string in
it, and escaping only adds bytes), and the tokens the provider adds around it
(role markers, message separators, the tool-use preamble) are covered by
fixed overheads per message, per tool and per request. Images are not text:
each one gets a fixed allowance (``image_tokens``), and its data or URL is left
out of the byte count.

**Prompt on the provider's side.** A request can make the provider read more
than it carries: a stored conversation (OpenAI's ``previous_response_id``,
``conversation``, item references), a stored prompt, a file referenced by id or
URL, a server-side tool (web or file search, code execution, MCP) whose results
the model reads, in as many sampling turns as it needs. The request's bytes do
not bound that, so such a call is refused with :class:`SizingError` unless the
caller bounds the whole prompt with the per-call keyword ``costwarden_prompt_tokens``
(:data:`PROMPT_TOKENS`); the prompt bound is then the larger of it and the
request's own bound.

**Output.** The request's ``max_tokens`` / ``max_completion_tokens`` /
``max_output_tokens`` (times ``n`` choices), or the catalogue's documented
``max_output_tokens`` for the model. With neither, there is no bound and the
call is refused with :class:`SizingError` before anything is sent.

**Cost.** The prompt bound is reserved in the priciest input unit the model's
catalogue entry prices (input, cached, cache-write, audio in) and the output
bound in the priciest output unit (output, reasoning, audio out), so the
reservation's cost is not below the call's whatever split the provider bills.
"""

from __future__ import annotations

import functools
import json
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import CostwardenError
from ..pricing import Catalogue, read_catalogue, sample_catalogue_path

#: Tokens a provider adds per message (role and separator special tokens).
MESSAGE_OVERHEAD = 16
#: Tokens a provider adds per request (reply priming, the system frame).
REQUEST_OVERHEAD = 32
#: Tokens a provider adds per tool definition (its rendering of the schema).
TOOL_OVERHEAD = 64
#: Tokens of a provider's hidden tool-use system prompt when tools are given
#: (Anthropic documents up to 346 for Claude 3.5 models).
TOOLS_PREAMBLE = 512
#: A typical number of UTF-8 bytes per token, for metering estimates only.
BYTES_PER_TOKEN_ESTIMATE = 4

INPUT_UNITS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "audio_input_tokens")
OUTPUT_UNITS = ("output_tokens", "reasoning_tokens", "audio_output_tokens")

#: Content-part types that carry an image (OpenAI chat / Responses, Anthropic).
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})


#: The per-call keyword of a guarded SDK method that bounds the call's whole prompt,
#: in tokens; the adapters take it out of the call before it reaches the SDK.
PROMPT_TOKENS = "costwarden_prompt_tokens"


class SizingError(CostwardenError, ValueError):
    """A request cannot be sized: it gives no output cap and the catalogue has none, or
    part of its prompt is on the provider's side and no ``costwarden_prompt_tokens`` bounds it."""


@dataclass(frozen=True)
class ModelLimits:
    """What sizing needs to know about one model from the pricing catalogue."""

    max_output_tokens: int | None = None
    prices: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """Per-model limits, from a catalogue file (:meth:`from_catalogue`) or given."""

    models: Mapping[str, ModelLimits] = field(default_factory=dict)

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue, at: datetime | None = None) -> Limits:
        now = at or datetime.now(UTC)
        models: dict[str, ModelLimits] = {}
        for m in catalogue.models:
            current = [s for s in m.snapshots if s.effective_from <= now]
            latest = max(current, key=lambda s: s.effective_from) if current else None
            models[m.model] = ModelLimits(m.max_output_tokens, latest.prices if latest else {})
        return cls(models)

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> Limits:
        """The limits of a catalogue file (default: the sample catalogue)."""
        return cls.from_catalogue(read_catalogue(Path(path) if path else sample_catalogue_path()))

    def get(self, model: str) -> ModelLimits:
        return self.models.get(model, ModelLimits())


@functools.cache
def default_limits() -> Limits:
    """The limits of the sample catalogue, read once."""
    return Limits.from_file()


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def bound_bytes(text: str) -> int:
    """UTF-8 bytes of ``text``, or of its NFKC form when that is longer."""
    raw = utf8_len(text)
    if text.isascii():  # NFKC leaves ASCII as it is
        return raw
    return max(raw, utf8_len(unicodedata.normalize("NFKC", text)))


def _strip_images(value: Any, counter: list[int]) -> Any:
    """A JSON-able copy of ``value`` with image parts replaced by a marker (counted)."""
    if isinstance(value, Mapping):
        kind = value.get("type")
        if isinstance(kind, str) and kind in IMAGE_PART_TYPES:
            counter[0] += 1
            return {"type": kind}
        return {str(k): _strip_images(v, counter) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strip_images(v, counter) for v in value]
    if hasattr(value, "model_dump"):  # a pydantic param object
        return _strip_images(value.model_dump(), counter)
    return value


def json_bytes(value: Any) -> tuple[int, int]:
    """(UTF-8 bytes of the JSON form with images left out, number of images)."""
    counter = [0]
    stripped = _strip_images(value, counter)
    text = json.dumps(stripped, ensure_ascii=False, default=str, separators=(",", ":"))
    return bound_bytes(text), counter[0]


@dataclass(frozen=True)
class Plan:
    """How one call is reserved and metered."""

    model: str
    prompt_bound: int
    output_bound: int
    prompt_bytes: int
    images: int
    reserve_usage: dict[str, int]
    #: units added to every metered / committed usage (images where the model prices them)
    extra_units: dict[str, int]

    @property
    def input_estimate(self) -> int:
        """A typical (not bounding) prompt token count, for metering estimates."""
        return math.ceil(self.prompt_bytes / BYTES_PER_TOKEN_ESTIMATE)


def _priciest(units: Iterable[str], prices: Mapping[str, Decimal], default: str) -> str:
    priced = [(prices[u], u) for u in units if u in prices]
    return max(priced)[1] if priced else default


def plan_call(
    *,
    model: str,
    limits: ModelLimits,
    messages: Any,
    tools: Any = None,
    extra: Iterable[Any] = (),
    message_count: int,
    max_output: int | None,
    choices: int = 1,
    image_tokens: int,
    server_side: Iterable[str] = (),
    prompt_tokens: Any = None,
) -> Plan:
    """Size one call. ``messages``/``tools``/``extra`` are the request's content;
    ``server_side`` names what of the prompt the provider adds (stored state,
    server-side tools), which only ``prompt_tokens`` (the caller's bound on the whole
    prompt) can bound."""
    if prompt_tokens is not None and (
        not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool) or prompt_tokens < 0
    ):
        raise SizingError(f"{PROMPT_TOKENS} must be a non-negative integer, not {prompt_tokens!r}")
    on_server = list(dict.fromkeys(server_side))
    if on_server and prompt_tokens is None:
        raise SizingError(
            f"{model}: part of the prompt is on the provider's side ({', '.join(on_server)}), "
            "so the request's own bytes do not bound it and the call cannot be reserved "
            f"safely; pass {PROMPT_TOKENS}=N, the most prompt tokens the call can bill"
        )
    content_bytes, images = json_bytes([messages, list(extra)])
    tool_list = list(tools) if tools else []
    tool_bytes, tool_images = json_bytes(tool_list) if tool_list else (0, 0)
    images += tool_images
    prompt = (
        content_bytes
        + tool_bytes
        + MESSAGE_OVERHEAD * max(message_count, 1)
        + REQUEST_OVERHEAD
        + (TOOLS_PREAMBLE + TOOL_OVERHEAD * len(tool_list) if tool_list else 0)
    )
    bills_images = "images" in limits.prices
    if not bills_images:
        prompt += image_tokens * images
    if prompt_tokens is not None:
        prompt = max(prompt, prompt_tokens)
    cap = max_output if max_output is not None else limits.max_output_tokens
    if cap is None:
        raise SizingError(
            f"{model}: the request sets no max_tokens and the pricing catalogue gives no "
            "max_output_tokens for the model, so the call cannot be reserved safely"
        )
    output = int(cap) * max(int(choices), 1)
    in_unit = _priciest(INPUT_UNITS, limits.prices, "input_tokens")
    out_unit = _priciest(OUTPUT_UNITS, limits.prices, "output_tokens")
    extra_units = {"images": images} if bills_images and images else {}
    usage = {in_unit: prompt, out_unit: output, **extra_units}
    return Plan(model, prompt, output, content_bytes + tool_bytes, images, usage, extra_units)


def estimate_tokens(nbytes: int) -> int:
    """A metering estimate of the tokens of a streamed piece of ``nbytes`` bytes."""
    return max(1, math.ceil(nbytes / BYTES_PER_TOKEN_ESTIMATE)) if nbytes else 0
