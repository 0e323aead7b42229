"""Prices per model, from the ``genai-prices`` package (its data ships offline).

Each model's per-token rates are looked up once and kept, so pricing an answer is two
multiplications. A model the package does not know has no price (None), never a free one.
"""

from __future__ import annotations

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from ..calls import Usage

__all__ = ["PriceBook"]

_MILLION = 1_000_000


class PriceBook:
    """The cost of a call from its usage, in US dollars."""

    def __init__(self, provider_id: str | None = "openai") -> None:
        self._provider_id = provider_id
        self._rates: dict[str, tuple[float, float] | None] = {}

    def rates(self, model: str) -> tuple[float, float] | None:
        """Dollars per input token and per output token; None when the model has no known price."""
        if model in self._rates:
            return self._rates[model]
        try:
            per_input = calc_price(
                PriceUsage(input_tokens=_MILLION, output_tokens=0),
                model_ref=model,
                provider_id=self._provider_id,
            ).total_price
            per_output = calc_price(
                PriceUsage(input_tokens=0, output_tokens=_MILLION),
                model_ref=model,
                provider_id=self._provider_id,
            ).total_price
            rates: tuple[float, float] | None = (float(per_input) / _MILLION, float(per_output) / _MILLION)
        except LookupError:
            rates = None
        self._rates[model] = rates
        return rates

    def cost_usd(self, model: str, usage: Usage | None) -> float | None:
        """What ``usage`` of ``model`` cost; None when the usage or the model's price is unknown."""
        if usage is None:
            return None
        rates = self.rates(model)
        if rates is None:
            return None
        return usage.prompt_tokens * rates[0] + usage.completion_tokens * rates[1]
