"""Provider adapters (SPEC §14): calls through the official SDKs reserved,
metered and committed with no glue.

- :mod:`costwarden.integrations.openai` — ``guard(OpenAI | AsyncOpenAI, ...)``,
  ``usage_from_openai`` (extra ``costwarden[openai]``);
- :mod:`costwarden.integrations.anthropic` — ``guard(Anthropic | AsyncAnthropic, ...)``,
  ``usage_from_anthropic`` (extra ``costwarden[anthropic]``);
- :mod:`costwarden.integrations.litellm` — ``CostwardenHook``, a LiteLLM
  ``CustomLogger`` for the SDK / Router and the proxy (extra ``costwarden[litellm]``);
- :mod:`costwarden.integrations.price_feed` — LiteLLM's price list as costwarden
  pricing snapshots.

The SDKs are imported only by the module that needs them. docs/integrations.md
has the usage mapping tables and the sizing rule.
"""

from ._saga import NotGuarded, StreamAborted
from ._sizing import PROMPT_TOKENS, Limits, ModelLimits, SizingError

__all__ = ["PROMPT_TOKENS", "Limits", "ModelLimits", "NotGuarded", "SizingError", "StreamAborted"]
