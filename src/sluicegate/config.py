"""Settings: one YAML file plus ``SLUICEGATE_*`` environment overrides, validated once at start-up.

Every value object is frozen. Nothing here is read on the hot path except through the
`Gateway`, which resolves models and features into dictionaries when it is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .config_base import Frozen
from .config_cache import (
    ALL_TIERS,
    BrowserConfig,
    CacheConfig,
    CostTtlConfig,
    FeatureCache,
    MemoryTierConfig,
    RedisTierConfig,
    RemoteTierConfig,
    Scope,
    SqlTierConfig,
    Tier,
)
from .config_money import (
    AlertsConfig,
    BudgetsConfig,
    ControlsConfig,
    LedgerConfig,
    LimitsConfig,
    OrgBudget,
    PriceConfig,
    PricingConfig,
    RequestLimit,
    SpendBreakerConfig,
    TokenLimit,
)
from .config_resilience import (
    FALLBACK_CAUSES,
    BreakerConfig,
    DeploymentConfig,
    FallbackCause,
    ResilienceConfig,
    RetryConfig,
)
from .config_server import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from .config_upstream import Latency, MockBehaviour, ProviderConfig, Timeouts
from .errors import ConfigError

__all__ = [
    "ALL_TIERS",
    "FALLBACK_CAUSES",
    "AlertsConfig",
    "AuthConfig",
    "BreakerConfig",
    "BrowserConfig",
    "BudgetsConfig",
    "CacheConfig",
    "ControlsConfig",
    "CostTtlConfig",
    "DatabaseConfig",
    "DeploymentConfig",
    "FallbackCause",
    "FeatureCache",
    "FeatureConfig",
    "Latency",
    "LedgerConfig",
    "LimitsConfig",
    "MemoryTierConfig",
    "MockBehaviour",
    "ModelConfig",
    "OrgBudget",
    "PriceConfig",
    "PricingConfig",
    "ProviderConfig",
    "RedisConfig",
    "RedisTierConfig",
    "RemoteTierConfig",
    "RequestLimit",
    "ResilienceConfig",
    "RetryConfig",
    "Scope",
    "ServerConfig",
    "Settings",
    "SpendBreakerConfig",
    "SqlTierConfig",
    "Tier",
    "Timeouts",
    "TokenLimit",
    "load_settings",
]

CONFIG_ENV = "SLUICEGATE_CONFIG"
DEFAULT_CONFIG_FILE = "sluicegate.yaml"
DEFAULT_FEATURE = "default"
MOCK_MODEL = "sluicegate-mock"
# The OpenAI models the default config serves: from OpenAI when OPENAI_API_KEY is set,
# from the built-in mock otherwise.
DEFAULT_OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")


class ModelConfig(Frozen):
    """A model clients may name, and the provider that serves it."""

    provider: str
    upstream_model: str | None = Field(None, description="the provider's name (default: the same)")
    aliases: tuple[str, ...] = ()
    price: PriceConfig | None = Field(
        None, description="its price (default: genai-prices, then pricing.default)"
    )
    weight: float = Field(1.0, gt=0, description="the first deployment's share under weighted routing")
    deployments: tuple[DeploymentConfig, ...] = Field(
        (), description="more deployments of the same model, load-balanced with the first"
    )
    fallbacks: tuple[str, ...] = Field(
        (), description="other models to try, in order, when every deployment of this one failed"
    )
    serves: tuple[Literal["chat", "embeddings"], ...] | None = Field(
        None,
        min_length=1,
        description="the kinds of call it answers (default: embeddings if its name says so, else chat)",
    )

    def kinds(self, name: str) -> tuple[str, ...]:
        """The kinds of call the model ``name`` answers."""
        if self.serves is not None:
            return self.serves
        return ("embeddings",) if "embedding" in name else ("chat",)


class FeatureConfig(Frozen):
    """A named AI use case (``okr-template``, ``chat``, ``insights``)."""

    description: str = ""
    latency_target_ms: int | None = Field(None, ge=1)
    cache: FeatureCache = FeatureCache()
    deadline_s: float | None = Field(
        None, gt=0, description="the end-to-end deadline of its requests (default: resilience.deadline_s)"
    )
    fallback_answer: str | None = Field(
        None, description="a static answer served, marked as degraded, when every upstream option failed"
    )
    connect_timeout_s: float | None = Field(
        None, gt=0, description="connecting upstream (default: the provider's timeouts.connect)"
    )
    first_byte_timeout_s: float | None = Field(
        None,
        gt=0,
        description="the first byte and each gap in a stream (default: the provider's timeouts.first_byte)",
    )
    hedge: bool = Field(
        False, description="when the first byte is late, send the same request to the next deployment too"
    )
    hedge_after_ms: int | None = Field(
        None,
        ge=1,
        description="how late is late (default: the deployment's recent p95 time to first byte, "
        "at most half of latency_target_ms)",
    )


def default_catalog(
    environ: Mapping[str, str],
) -> tuple[dict[str, ProviderConfig], dict[str, ModelConfig]]:
    """The providers and models used when the config names none."""
    providers = {"mock": ProviderConfig(kind="mock")}
    target = "mock"
    if environ.get("OPENAI_API_KEY"):
        providers["openai"] = ProviderConfig(
            kind="openai", base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"
        )
        target = "openai"
    models = {MOCK_MODEL: ModelConfig(provider="mock", serves=("chat", "embeddings"))}
    models.update({name: ModelConfig(provider=target) for name in DEFAULT_OPENAI_MODELS})
    return providers, models


def default_features() -> dict[str, FeatureConfig]:
    """The brief's features, with its cache TTLs: templates 24 h, chat 1 h per user, insights
    6 h per org, and user preferences 7 days in the browser only."""
    return {
        "okr-template": FeatureConfig(
            description="OKR template generation",
            latency_target_ms=2000,
            cache=FeatureCache(ttl_s=86400, scope="org", cache_temperature=True),
        ),
        "chat": FeatureConfig(
            description="chat assistant",
            latency_target_ms=1500,
            cache=FeatureCache(ttl_s=3600, scope="user"),
        ),
        "insights": FeatureConfig(
            description="insights engine",
            latency_target_ms=5000,
            cache=FeatureCache(ttl_s=21600, scope="org", cache_temperature=True),
        ),
        "preferences": FeatureConfig(
            description="user preferences, kept in the browser only",
            cache=FeatureCache(ttl_s=604800, scope="user", tiers=("browser",), cost_aware=False),
        ),
    }


class Settings(BaseSettings):
    """Everything sluicegate is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="SLUICEGATE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path(".sluicegate")
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    auth: AuthConfig = AuthConfig()
    cache: CacheConfig = CacheConfig()
    browser: BrowserConfig = BrowserConfig()
    pricing: PricingConfig = PricingConfig()
    ledger: LedgerConfig = LedgerConfig()
    limits: LimitsConfig = LimitsConfig()
    controls: ControlsConfig = ControlsConfig()
    alerts: AlertsConfig = AlertsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    features: dict[str, FeatureConfig] = Field(default_factory=default_features)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _database_in_data_dir(cls, data: Any) -> Any:
        """Without a database URL, the SQLite file lives in ``data_dir`` with the rest."""
        if not isinstance(data, dict):
            return data
        database = data.get("database")
        if database is None or (isinstance(database, dict) and database.get("url") is None):
            folder = data.get("data_dir") or ".sluicegate"
            if not isinstance(folder, str | Path):
                return data  # the field's own check names it
            folder = Path(folder)
            url = f"sqlite+aiosqlite:///{folder / 'sluicegate.db'}"
            data = {**data, "database": {**(database or {}), "url": url}}
        return data

    @field_validator("features")
    @classmethod
    def _check_feature_names(cls, value: dict[str, FeatureConfig]) -> dict[str, FeatureConfig]:
        for name in value:
            # ASCII: a feature is named in an HTTP header (Latin-1) and in the RateLimit headers.
            plain = name.replace("-", "").replace("_", "")
            if not name or len(name) > 64 or not (plain.isascii() and plain.isalnum()):
                raise ValueError(f"feature name {name!r} must be 1-64 ASCII letters, digits, - or _")
            if name == "all":
                raise ValueError("feature name 'all' is reserved: cache statistics use it for the totals")
        return value

    @property
    def feature_names(self) -> frozenset[str]:
        """Every feature a request may name: the configured ones, and ``default``."""
        return frozenset(self.features) | {DEFAULT_FEATURE}

    @model_validator(mode="after")
    def _features_of_limits_and_budgets_exist(self) -> Settings:
        """A limit or budget of a feature no request can name would never apply: refuse it."""
        known = self.feature_names
        sources: tuple[tuple[str, Sequence[RequestLimit | TokenLimit | OrgBudget]], ...] = (
            ("limits.requests", self.limits.requests),
            ("limits.tokens", self.limits.tokens),
            ("budgets.orgs", self.budgets.orgs),
        )
        for where, items in sources:
            for index, item in enumerate(items):
                if item.feature is not None and item.feature not in known:
                    raise ValueError(
                        f"{where}[{index}].feature: unknown feature {item.feature!r} "
                        f"(configured: {', '.join(sorted(known))})"
                    )
        return self

    @model_validator(mode="after")
    def _fill_and_check_catalog(self) -> Settings:
        if not self.providers and not self.models:
            providers, models = default_catalog(os.environ)
            object.__setattr__(self, "providers", providers)
            object.__setattr__(self, "models", models)
        seen: dict[str, str] = {}
        for name, model in self.models.items():
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"models.{name}.provider: unknown provider {model.provider!r} (known: {known})"
                )
            for deployment in model.deployments:
                if deployment.provider not in self.providers:
                    raise ValueError(f"models.{name}.deployments: unknown provider {deployment.provider!r}")
            for fallback in model.fallbacks:
                if fallback == name or fallback not in self.models:
                    raise ValueError(f"models.{name}.fallbacks: {fallback!r} is not another configured model")
                theirs = self.models[fallback].kinds(fallback)
                if not set(model.kinds(name)) & set(theirs):
                    raise ValueError(
                        f"models.{name}.fallbacks: {fallback!r} serves {' and '.join(theirs)} only, and "
                        f"{name!r} serves {' and '.join(model.kinds(name))}: it could never answer for it "
                        "(set models.NAME.serves if a model's name misleads)"
                    )
            for public in (name, *model.aliases):
                if public in seen:
                    raise ValueError(
                        f"models.{name}: the name {public!r} is already used by models.{seen[public]}"
                    )
                seen[public] = name
        throttle = self.budgets.throttle_model
        if throttle is not None and throttle not in seen:
            raise ValueError(f"budgets.throttle_model: {throttle!r} is not a configured model or alias")
        return self


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        parts = [str(part) for part in item["loc"]]
        key = ".".join(parts)
        message = item["msg"].removeprefix("Value error, ")  # our own checks name their keys
        # A value the environment gave (the CLI's flags are passed to the workers that way).
        names = [f"SLUICEGATE_{'__'.join(parts[:n]).upper()}" for n in range(len(parts), 0, -1)]
        given = next((name for name in names if name in os.environ), None)
        where = f" (from ${given})" if given else ""
        lines.append(f"  {key}{where}: {message}" if key else f"  {message}")
    return "\n".join(lines)


_FEATURES_ENV = "SLUICEGATE_FEATURES__"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path``, ``$SLUICEGATE_CONFIG`` or ``./sluicegate.yaml``, then the environment.

    With no file at all, the embedded defaults apply. ``overrides`` are top-level keys that
    replace the file's (used by the CLI's flags); environment variables still win over both.
    """
    chosen = path or os.environ.get(CONFIG_ENV)
    if chosen is None and Path(DEFAULT_CONFIG_FILE).is_file():
        chosen = DEFAULT_CONFIG_FILE
    data: dict[str, Any] = {}
    source = "the environment"
    if chosen is not None:
        source = str(chosen)
        try:
            raw = yaml.safe_load(Path(chosen).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {chosen} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {chosen} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {chosen} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {chosen} is not valid YAML: {exc}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {chosen} must hold a mapping at the top level")
        data = raw
    data.update(overrides)
    if "features" not in data and any(name.upper().startswith(_FEATURES_ENV) for name in os.environ):
        # A variable changes one field of the default features, as it would the file's: without
        # them here, its feature alone would replace them all (and get every other field's default).
        data["features"] = {
            name: feature.model_dump(mode="json") for name, feature in default_features().items()
        }
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid SLUICEGATE_* environment variable: {exc}") from None
