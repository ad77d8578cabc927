"""Prices: what a request costs by its model, adapter and tier (gateway.usage sums them).

`TAILOR_PRICES` names prices per 1K prompt and completion tokens for base models, for
"adapter" (every adapter) and for "TENANT/ADAPTER"; batch requests pay
`TAILOR_BATCH_PRICE_FACTOR` of the price.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.config import Settings

INTERACTIVE, BATCH = "interactive", "batch"  # the tiers
ADAPTER_DEFAULT = "adapter"  # the price key that covers every adapter without an override


# --------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    """Price per 1K tokens."""

    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k) / 1000


FREE = Price()


@dataclass(frozen=True)
class PriceBook:
    """Prices by key: a base model name, "adapter", or "<tenant>/<adapter>".

    An adapter is priced by its override, else "adapter", else the price of the base model
    its version was registered for: adapter traffic runs on that base's engines, so
    configuring only the base models must not make adapters free, nor bill an adapter of a
    small base at a large one's price. Anything unpriced costs 0.
    """

    prices: Mapping[str, Price] = field(default_factory=dict)
    base_model: str = ""  # the default base
    batch_factor: float = 1.0  # what a batch request pays of the price
    # The configured base whose price a version recording base `name` pays (rows from before
    # several bases, or naming a base no longer configured, pay the default base's).
    base_of: Callable[[str | None], str] | None = None

    def price(self, tenant: str, model: str, adapter: str | None, version_base: str | None = None) -> Price:
        if adapter is None:
            return self.prices.get(model, FREE)
        base = self.base_of(version_base) if self.base_of is not None else self.base_model
        for key in (f"{tenant}/{adapter}", ADAPTER_DEFAULT, base):
            if key in self.prices:
                return self.prices[key]
        return FREE

    def cost(
        self,
        tenant: str,
        model: str,
        adapter: str | None,
        tier: str,
        prompt: int,
        completion: int,
        version_base: str | None = None,
    ) -> float:
        full = self.price(tenant, model, adapter, version_base).cost(prompt, completion)
        return full * self.batch_factor if tier == BATCH else full


def parse_prices(raw: Mapping[str, Mapping[str, float]]) -> dict[str, Price]:
    """`{KEY: {"prompt": x, "completion": y}}` to Prices; a missing side is free.

    Unknown or negative fields raise ValueError: a typo ("promt") would otherwise bill 0.
    """
    out: dict[str, Price] = {}
    for key, entry in raw.items():
        unknown = set(entry) - {"prompt", "completion"}
        if unknown:
            raise ValueError(f"prices[{key!r}]: unknown field(s) {sorted(unknown)}; use 'prompt' and 'completion'")
        prompt, completion = float(entry.get("prompt", 0.0)), float(entry.get("completion", 0.0))
        if prompt < 0 or completion < 0 or not (math.isfinite(prompt) and math.isfinite(completion)):
            raise ValueError(f"prices[{key!r}]: prices must be finite and >= 0")
        out[key] = Price(prompt, completion)
    return out


def prices_from_settings(settings: Settings) -> PriceBook:
    return PriceBook(
        prices=parse_prices(settings.prices),
        base_model=settings.base_model_name,
        batch_factor=settings.batch_price_factor,
        base_of=lambda recorded: settings.recorded_base(recorded).name,
    )
