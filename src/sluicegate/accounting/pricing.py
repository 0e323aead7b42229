"""Prices per model, in integer micro-USD, from the ``genai-prices`` package or the config.

A model's rates are worked out once, when the gateway is built: from its ``price`` in the
config, else from genai-prices (its data ships offline), else from ``pricing.default``. A model
that none of them prices is refused at start-up with its name, never priced at zero. Pricing a
call is then a few integer multiplications (`cost_micro`); only a model whose genai-prices price
depends on the call's size (tiers) is priced by genai-prices call by call.

Rates are kept in pico-USD per token, which is the price in USD per million tokens times 10⁶,
so that every price that has a cent's millionth in it stays exact. Costs round up to whole
micro-USD: a call that used tokens of a priced model never costs 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from genai_prices.types import TieredPrices

from ..calls import ModelRoute, Usage
from ..config import PriceConfig, Settings
from ..errors import ConfigError

__all__ = ["MOCK_PRICE", "PriceBook", "Rates", "cost_micro", "rates_from_config"]

_MILLION = 1_000_000
_PICO_PER_MICRO = 1_000_000
# What a model served by the mock provider costs when no price is known for its name: made up,
# the size of a small hosted model's (USD per million tokens), so that budgets can be tried
# against the mock. A mock's model that genai-prices knows costs what the real one would.
MOCK_PRICE = PriceConfig(input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"))


@dataclass(frozen=True, slots=True)
class Rates:
    """One model's prices in pico-USD per token, and where they came from."""

    input: int
    cached_input: int
    output: int
    reasoning: int
    source: str  # "config", "genai-prices", "default" or "mock"
    tiered: bool = False  # genai-prices prices it by tiers: each call goes through genai-prices


def _pico(usd_per_mtok: Decimal) -> int:
    return int((usd_per_mtok * _MILLION).to_integral_value(ROUND_HALF_UP))


def rates_from_config(price: PriceConfig, source: str) -> Rates:
    """The rates of a price given in USD per million tokens."""
    cached = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    reasoning = price.reasoning_per_mtok if price.reasoning_per_mtok is not None else price.output_per_mtok
    return Rates(
        _pico(price.input_per_mtok), _pico(cached), _pico(price.output_per_mtok), _pico(reasoning), source
    )


def cost_micro(rates: Rates, usage: Usage) -> int:
    """What ``usage`` cost at ``rates``, in micro-USD, rounded up (pure).

    As OpenAI reports usage, cached tokens are part of the prompt tokens and reasoning tokens
    part of the completion tokens; each part is billed at its own rate.
    """
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    cached, reasoning = usage.cached_tokens, usage.reasoning_tokens
    if cached or reasoning:
        cached = min(max(cached, 0), prompt)
        reasoning = min(max(reasoning, 0), completion)
        pico = (
            (prompt - cached) * rates.input
            + cached * rates.cached_input
            + (completion - reasoning) * rates.output
            + reasoning * rates.reasoning
        )
    else:
        pico = prompt * rates.input + completion * rates.output
    return -(-pico // _PICO_PER_MICRO) if pico > 0 else 0


def _genai_usd(model: str, provider_id: str | None, **tokens: int) -> Decimal:
    return Decimal(calc_price(PriceUsage(**tokens), model_ref=model, provider_id=provider_id).total_price)


def _genai_rates(model: str, provider_id: str | None) -> Rates | None:
    """The model's rates from genai-prices, or None when it does not know the model."""
    try:
        found = calc_price(PriceUsage(input_tokens=1), model_ref=model, provider_id=provider_id)
    except LookupError:
        return None
    tiered = any(isinstance(value, TieredPrices) for value in vars(found.model_price).values())
    per_input = _genai_usd(model, provider_id, input_tokens=_MILLION)
    cached = _genai_usd(model, provider_id, input_tokens=_MILLION, cache_read_tokens=_MILLION)
    per_output = _genai_usd(model, provider_id, output_tokens=_MILLION)
    reasoning = _genai_usd(model, provider_id, output_tokens=_MILLION, output_reasoning_tokens=_MILLION)
    return Rates(_pico(per_input), _pico(cached), _pico(per_output), _pico(reasoning), "genai-prices", tiered)


class PriceBook:
    """Every configured model's rates, worked out when the gateway is built."""

    def __init__(self, rates: Mapping[str, Rates], provider_id: str | None = "openai") -> None:
        self._rates = dict(rates)
        self._provider_id = provider_id
        self._last: tuple[Usage | None, ModelRoute | None, int] = (None, None, 0)  # see cost_micro

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceBook:
        """The rates of every model in ``settings``; `ConfigError` naming the models with none."""
        pricing = settings.pricing
        rates: dict[str, Rates] = {}
        missing: list[str] = []
        for name, model in settings.models.items():
            upstream = model.upstream_model or name
            provider = settings.providers.get(model.provider)
            found: Rates | None
            if model.price is not None:
                found = rates_from_config(model.price, "config")
            else:
                found = _genai_rates(upstream, pricing.provider_id)
            if found is None and pricing.default is not None:
                found = rates_from_config(pricing.default, "default")
            if found is None and provider is not None and provider.kind == "mock":
                found = rates_from_config(MOCK_PRICE, "mock")
            if found is None:
                missing.append(name if upstream == name else f"{name} (upstream {upstream})")
            else:
                rates[name] = found
        if missing:
            raise ConfigError(
                f"no price is known for the model(s) {', '.join(missing)}: give each a `price` "
                "(USD per million tokens) under `models`, or set `pricing.default`; "
                "sluicegate never treats a model as free"
            )
        return cls(rates, pricing.provider_id)

    def rates(self, model: str) -> Rates | None:
        """The rates of the configured model ``model`` (its name in the config)."""
        return self._rates.get(model)

    def cost_micro(self, route: ModelRoute, usage: Usage | None) -> int | None:
        """What ``usage`` of ``route``'s model cost in micro-USD; None when the usage is unknown.

        The budget, the ledger and the cache each ask about the same answer: the last one asked
        about (the same `Usage` object, which is frozen) is answered without counting again."""
        if usage is None:
            return None
        last = self._last
        if usage is last[0] and route is last[1]:
            return last[2]
        rates = self._rates.get(route.name)
        if rates is None:
            return None
        if rates.tiered:
            usd = _genai_usd(
                route.upstream_model,
                self._provider_id,
                input_tokens=usage.prompt_tokens,
                cache_read_tokens=min(usage.cached_tokens, usage.prompt_tokens),
                output_tokens=usage.completion_tokens,
                output_reasoning_tokens=min(usage.reasoning_tokens, usage.completion_tokens),
            )
            cost = math.ceil(usd * _MILLION)
        else:
            cost = cost_micro(rates, usage)
        self._last = (usage, route, cost)
        return cost

    def cost_usd(self, route: ModelRoute, usage: Usage | None) -> float | None:
        """The same in US dollars, for the cache's cost-aware TTL."""
        micro = self.cost_micro(route, usage)
        return None if micro is None else micro / _MILLION
