"""The story `make demo` (`costwarden demo`) tells, on a live database, through the
public client API only. Not part of the library: ``import costwarden`` never loads it.

- :mod:`.story`: quotes, layered budgets, concurrent agents, shadow mode, a streaming
  call aborted by a meter tick, an expired reservation, spend per scope (sections 1-7);
- :mod:`.byok`, :mod:`.guardrails`, :mod:`.openai_sdk`, :mod:`.ledger`: the sections
  told after it, in the order of :data:`SECTIONS`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from . import byok, guardrails, ledger, openai_sdk
from .story import MAX_CALLS, DemoSummary, Echo, Section, run_story

__all__ = ["MAX_CALLS", "SECTIONS", "DemoSummary", "run_demo"]

#: The sections told after the story, in order: the ledger comes last, so that its
#: verification covers every entry the demo booked.
SECTIONS: tuple[tuple[str, Section], ...] = (
    ("byok", byok.demo_section),
    ("guardrails", guardrails.demo_section),
    ("openai_sdk", openai_sdk.demo_section),
    ("ledger", ledger.demo_section),
)


def run_demo(
    dsn: str, echo: Echo = print, *, hooks: bool = True, data_dir: Path | None = None
) -> DemoSummary:
    """The whole demo; ``hooks=False`` tells the story (sections 1-7) only.
    ``data_dir``: the embedded server's data directory in use (default:
    default_data_dir()); the BYOK section keeps its demo KEK beside it."""
    sections: tuple[tuple[str, Section], ...] = SECTIONS if hooks else ()
    if data_dir is not None:
        sections = tuple(
            (name, partial(byok.demo_section, data_dir=data_dir))
            if section is byok.demo_section
            else (name, section)
            for name, section in sections
        )
    return run_story(dsn, echo, sections=sections)
