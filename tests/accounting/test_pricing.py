"""Prices: integer micro-USD from the real usage, against genai-prices, with config overrides."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.accounting.pricing import MOCK_PRICE, PriceBook, Rates, cost_micro, rates_from_config
from sluicegate.calls import ModelRoute, Usage
from sluicegate.config import PriceConfig, Settings, load_settings
from sluicegate.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "examples" / "sluicegate.yaml"


def _settings(models: dict[str, Any], **extra: Any) -> Settings:
    providers = {
        "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1"},
        "mock": {"kind": "mock"},
    }
    return Settings(providers=providers, models=models, **extra)


def _genai_micro(model: str, usage: Usage) -> int:
    """genai-prices' own answer, in micro-USD rounded up."""
    price = calc_price(
        PriceUsage(
            input_tokens=usage.prompt_tokens,
            cache_read_tokens=usage.cached_tokens,
            output_tokens=usage.completion_tokens,
            output_reasoning_tokens=usage.reasoning_tokens,
        ),
        model_ref=model,
        provider_id="openai",
    ).total_price
    return math.ceil(Decimal(price) * 1_000_000)


USAGES = [
    Usage(1000, 200, 1200),
    Usage(1_000_000, 0, 1_000_000),
    Usage(0, 1_000_000, 1_000_000),
    Usage(5000, 300, 5300, cached_tokens=4096),  # most of the prompt from OpenAI's prompt cache
    Usage(2000, 1500, 3500, reasoning_tokens=1200),
    Usage(7, 3, 10),  # a fraction of a micro-dollar rounds up
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gpt-4.1", "o3-mini"])
@pytest.mark.parametrize("usage", USAGES, ids=repr)
def test_a_call_costs_what_genai_prices_says(model: str, usage: Usage) -> None:
    book = PriceBook.from_settings(_settings({model: {"provider": "openai"}}))
    route = ModelRoute(model, "openai", model)
    assert book.cost_micro(route, usage) == _genai_micro(model, usage)


def test_every_model_of_the_example_config_has_a_price() -> None:
    settings = load_settings(EXAMPLE)
    book = PriceBook.from_settings(settings)
    for name in settings.models:
        assert book.rates(name) is not None, name
    rates = book.rates("gpt-4o-mini")
    assert rates is not None and rates.source == "genai-prices"
    # $0.15, $0.075 and $0.60 per million tokens, in pico-USD per token
    assert (rates.input, rates.cached_input, rates.output) == (150_000, 75_000, 600_000)


def test_cached_tokens_cost_less_than_fresh_ones() -> None:
    book = PriceBook.from_settings(_settings({"gpt-4o": {"provider": "openai"}}))
    route = ModelRoute("gpt-4o", "openai", "gpt-4o")
    fresh = book.cost_micro(route, Usage(10_000, 0, 10_000))
    cached = book.cost_micro(route, Usage(10_000, 0, 10_000, cached_tokens=10_000))
    assert fresh == 25_000 and cached == 12_500  # $2.50 and $1.25 per million


def test_a_price_in_the_config_wins_over_genai_prices() -> None:
    price = {"input_per_mtok": "1", "output_per_mtok": "2", "reasoning_per_mtok": "3"}
    book = PriceBook.from_settings(_settings({"gpt-4o": {"provider": "openai", "price": price}}))
    route = ModelRoute("gpt-4o", "openai", "gpt-4o")
    # 1000 at $1/M + 100 at $2/M + 50 at $3/M = 1000 + 200 + 150 µUSD; cached input defaults to input
    usage = Usage(1000, 150, 1150, cached_tokens=500, reasoning_tokens=50)
    assert book.cost_micro(route, usage) == 1350
    assert book.rates("gpt-4o") == Rates(1_000_000, 1_000_000, 2_000_000, 3_000_000, "config")


def test_the_same_answer_asked_about_twice_costs_the_same_and_another_route_its_own() -> None:
    """The budget, the ledger and the cache ask about one answer in turn: the book answers the
    repeat without counting again, and a switch of route (a cheaper model) is counted afresh."""
    big_price = {"input_per_mtok": "1", "output_per_mtok": "2"}
    small_price = {"input_per_mtok": "0.1", "output_per_mtok": "0.2"}
    book = PriceBook.from_settings(
        _settings(
            {
                "big": {"provider": "openai", "price": big_price},
                "small": {"provider": "openai", "price": small_price},
            }
        )
    )
    big, small = ModelRoute("big", "openai", "big"), ModelRoute("small", "openai", "small")
    usage = Usage(1000, 100, 1100)
    assert book.cost_micro(big, usage) == book.cost_micro(big, usage) == 1200
    assert book.cost_micro(small, usage) == 120
    assert book.cost_micro(big, Usage(2000, 100, 2100)) == 2200
    assert book.cost_usd(small, usage) == 0.00012


def test_a_model_with_no_price_fails_start_up_naming_it() -> None:
    settings = _settings(
        {
            "my-llama": {"provider": "openai", "upstream_model": "llama-local-70b"},
            "gpt-4o": {"provider": "openai"},
            "other-private": {"provider": "openai"},
        }
    )
    with pytest.raises(ConfigError) as raised:
        PriceBook.from_settings(settings)
    message = str(raised.value)
    assert "my-llama (upstream llama-local-70b)" in message and "other-private" in message
    assert "gpt-4o," not in message and "pricing.default" in message


def test_a_default_price_covers_unknown_models_and_a_mock_has_its_own() -> None:
    settings = _settings(
        {"my-llama": {"provider": "openai"}, "mocked": {"provider": "mock"}},
        pricing={"default": {"input_per_mtok": "0.5", "output_per_mtok": "1.5"}},
    )
    book = PriceBook.from_settings(settings)
    mine = book.rates("my-llama")
    assert mine is not None and mine.source == "default" and mine.input == 500_000
    mocked = book.rates("mocked")
    assert mocked is not None and mocked.source == "default"  # the default wins over the mock's
    alone = PriceBook.from_settings(_settings({"mocked": {"provider": "mock"}}))
    assert alone.rates("mocked") == rates_from_config(MOCK_PRICE, "mock")


def test_no_usage_means_no_cost_and_unknown_routes_have_none() -> None:
    book = PriceBook.from_settings(_settings({"gpt-4o": {"provider": "openai"}}))
    assert book.cost_micro(ModelRoute("gpt-4o", "openai", "gpt-4o"), None) is None
    assert book.cost_micro(ModelRoute("nope", "openai", "nope"), Usage(1, 1, 2)) is None
    assert book.cost_usd(ModelRoute("gpt-4o", "openai", "gpt-4o"), Usage(1000, 0, 1000)) == 0.0025


def test_the_config_refuses_negative_prices() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        PriceConfig(input_per_mtok=Decimal(-1), output_per_mtok=Decimal(1))


@pytest.mark.parametrize(
    "field", ["input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "reasoning_per_mtok"]
)
def test_the_config_refuses_prices_no_ledger_integer_could_hold(field: str) -> None:
    """1e30 dollars a million tokens made every call of the model a 500 (its worst case
    overflowed the ledger's 64-bit integers); it is refused at start-up instead."""
    prices = {"input_per_mtok": Decimal(1), "output_per_mtok": Decimal(1), field: Decimal("1e30")}
    with pytest.raises(ValueError, match="less than or equal to 1000000"):
        PriceConfig(**prices)


def test_the_dearest_worst_case_the_fields_allow_fits_the_ledger() -> None:
    most = Decimal(1_000_000)
    book = PriceBook.from_settings(
        _settings(
            {"dear": {"provider": "openai", "price": {"input_per_mtok": most, "output_per_mtok": most}}}
        )
    )
    worst = book.cost_micro(ModelRoute("dear", "openai", "dear"), Usage(2_000_000, (2**31 - 1) * 128, 0))
    assert worst is not None and worst < 2**63


tokens = st.integers(min_value=0, max_value=10**9)
rates_strategy = st.builds(
    Rates,
    st.integers(1, 10**8),
    st.integers(0, 10**8),
    st.integers(1, 10**8),
    st.integers(0, 10**8),
    st.just("config"),
)


@given(rates_strategy, tokens, tokens, tokens, tokens)
def test_a_call_that_used_tokens_never_costs_zero_and_cost_grows_with_tokens(
    rates: Rates, prompt: int, completion: int, cached: int, reasoning: int
) -> None:
    usage = Usage(prompt, completion, prompt + completion, cached_tokens=cached, reasoning_tokens=reasoning)
    cost = cost_micro(rates, usage)
    assert cost >= 0
    fresh_input = prompt - min(cached, prompt)
    plain_output = completion - min(reasoning, completion)
    if fresh_input or plain_output:
        assert cost >= 1
    more = Usage(
        prompt + 1, completion, prompt + completion + 1, cached_tokens=cached, reasoning_tokens=reasoning
    )
    assert cost_micro(rates, more) >= cost


def test_usage_reads_cached_and_reasoning_tokens_from_openai_details() -> None:
    payload = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192, "accepted_prediction_tokens": 0},
    }
    assert Usage.from_payload(payload) == Usage(2006, 300, 2306, cached_tokens=1920, reasoning_tokens=192)
    # absent, null, negative or non-integer details count as none
    for details in (None, {}, {"cached_tokens": None}, {"cached_tokens": -3}, {"cached_tokens": "9"}):
        plain = {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": details}
        assert Usage.from_payload(plain) == Usage(5, 1, 6)
