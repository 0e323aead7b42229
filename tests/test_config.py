"""Tests for sluicegate.config: defaults, YAML loading, environment overrides and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sluicegate.config import (
    DEFAULT_OPENAI_MODELS,
    FeatureConfig,
    Latency,
    ServerConfig,
    Settings,
    default_features,
    load_settings,
)
from sluicegate.errors import ConfigError

MOCK_CATALOG = """\
providers:
  local:
    kind: mock
models:
  m:
    provider: local
"""


def write(name: str, text: str) -> Path:
    """Write ``text`` to ``name`` in the current (temporary) folder."""
    path = Path(name)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(text: str) -> str:
    """The ConfigError message that loading ``text`` as YAML raises."""
    path = write("bad.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


# embedded defaults


def test_defaults_serve_every_model_from_the_mock() -> None:
    """With no file and no OpenAI key, one mock provider serves every default model."""
    settings = load_settings()
    assert set(settings.providers) == {"mock"}
    assert settings.providers["mock"].kind == "mock"
    assert {"gpt-4o-mini", "sluicegate-mock", *DEFAULT_OPENAI_MODELS} <= set(settings.models)
    assert {model.provider for model in settings.models.values()} == {"mock"}


def test_defaults_have_the_briefs_features_and_ttls() -> None:
    """The default features are the brief's, with its cache TTLs and scopes."""
    features = load_settings().features
    assert set(features) == {"okr-template", "chat", "insights", "preferences"}
    policies = {name: (f.cache.ttl_s, f.cache.scope) for name, f in features.items()}
    assert policies == {
        "okr-template": (86400, "org"),
        "chat": (3600, "user"),
        "insights": (21600, "org"),
        "preferences": (604800, "user"),
    }
    assert features["preferences"].cache.tiers == ("browser",)


def test_default_database_is_sqlite_under_the_data_folder() -> None:
    """The default store is a SQLite file under .sluicegate."""
    settings = load_settings()
    assert settings.database.url.startswith("sqlite+aiosqlite:///")
    assert "/.sluicegate/" in settings.database.url
    assert settings.data_dir == Path(".sluicegate")
    assert settings.redis.url is None


def test_openai_key_routes_the_openai_models_to_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY adds an openai provider that serves the OpenAI models; the mock model stays."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings()
    openai = settings.providers["openai"]
    assert openai.kind == "openai"
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.api_key_env == "OPENAI_API_KEY"
    assert all(settings.models[name].provider == "openai" for name in DEFAULT_OPENAI_MODELS)
    assert settings.models["sluicegate-mock"].provider == "mock"


def test_empty_openai_key_keeps_the_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty OPENAI_API_KEY counts as unset."""
    monkeypatch.setenv("OPENAI_API_KEY", "")
    settings = load_settings()
    assert "openai" not in settings.providers
    assert settings.models["gpt-4o-mini"].provider == "mock"


def test_configured_catalog_replaces_the_default() -> None:
    """A config naming providers and models gets exactly those, no defaults mixed in."""
    settings = load_settings(write("c.yaml", MOCK_CATALOG))
    assert set(settings.providers) == {"local"}
    assert set(settings.models) == {"m"}


# where the file comes from


def test_load_from_explicit_path() -> None:
    """load_settings(path) reads that YAML file, as a str or a Path."""
    path = write("custom.yaml", "server:\n  port: 5001\n")
    assert load_settings(path).server.port == 5001
    assert load_settings(str(path)).server.port == 5001


def test_config_env_var_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """SLUICEGATE_CONFIG points at the file to load."""
    write("elsewhere.yaml", "server:\n  port: 5002\n")
    monkeypatch.setenv("SLUICEGATE_CONFIG", "elsewhere.yaml")
    assert load_settings().server.port == 5002


def test_explicit_path_beats_config_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit path wins over SLUICEGATE_CONFIG."""
    monkeypatch.setenv("SLUICEGATE_CONFIG", str(write("env.yaml", "server:\n  port: 5003\n")))
    assert load_settings(write("arg.yaml", "server:\n  port: 5004\n")).server.port == 5004


def test_sluicegate_yaml_in_the_working_folder_is_picked_up() -> None:
    """./sluicegate.yaml is loaded when no path or SLUICEGATE_CONFIG is given."""
    write("sluicegate.yaml", "server:\n  port: 5005\n")
    assert load_settings().server.port == 5005


def test_empty_file_gives_the_defaults() -> None:
    """An empty YAML file means the embedded defaults."""
    settings = load_settings(write("empty.yaml", ""))
    assert settings.server.port == 4000
    assert "sluicegate-mock" in settings.models


def test_environment_beats_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """SLUICEGATE_SERVER__PORT overrides the file's port and leaves its other server keys alone."""
    monkeypatch.setenv("SLUICEGATE_SERVER__PORT", "4123")
    settings = load_settings(write("c.yaml", "server:\n  port: 5000\n  host: 0.0.0.0\n"))
    assert settings.server.port == 4123
    assert settings.server.host == "0.0.0.0"


def test_a_feature_variable_changes_one_field_of_the_default_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without features in the file, a variable changes one field of a default feature: the
    others stay, and chat stays scoped per user (it once replaced them all, chat shared by org)."""
    monkeypatch.setenv("SLUICEGATE_FEATURES__CHAT__CACHE__TTL_S", "60")
    settings = load_settings(write("c.yaml", "server:\n  port: 5000\n"))
    assert sorted(settings.features) == ["chat", "insights", "okr-template", "preferences"]
    assert (settings.features["chat"].cache.ttl_s, settings.features["chat"].cache.scope) == (60, "user")
    assert settings.features["insights"] == default_features()["insights"]
    # With features in the file, the file's: the variable changes its field, the file's others stay.
    own = load_settings(
        write("d.yaml", "features:\n  chat:\n    cache: {scope: user, ttl_s: 10}\n  help: {}\n")
    )
    assert sorted(own.features) == ["chat", "help"] and own.features["chat"].cache.ttl_s == 60


def test_a_bad_value_from_the_environment_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_SERVER__PORT", "70000")
    with pytest.raises(ConfigError) as bad:
        load_settings(write("c.yaml", "server:\n  port: 5000\n"))
    assert "server.port (from $SLUICEGATE_SERVER__PORT)" in bad.value.message


def test_overrides_replace_the_file_keys() -> None:
    """Keyword overrides replace the file's top-level keys."""
    settings = load_settings(write("c.yaml", "server:\n  port: 5000\n"), server={"port": 6000})
    assert settings.server.port == 6000


def test_environment_beats_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment variables win over keyword overrides too."""
    monkeypatch.setenv("SLUICEGATE_SERVER__PORT", "4124")
    assert load_settings(server={"port": 6000}).server.port == 4124


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after loading."""
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.data_dir = Path("elsewhere")  # type: ignore[misc]


# errors name the bad key


def test_bad_base_url_names_the_provider_and_field() -> None:
    """A base_url that is not http(s) names the provider and base_url."""
    message = config_error(
        "providers:\n  x:\n    kind: openai\n    base_url: ftp://a\nmodels:\n  m:\n    provider: x\n"
    )
    assert "providers.x" in message
    assert "base_url" in message
    assert "bad.yaml" in message


def test_bad_base_url_names_the_dotted_key() -> None:
    """The error for a bad base_url names the dotted key providers.x.base_url."""
    message = config_error("providers:\n  x:\n    kind: openai\n    base_url: ftp://a\n")
    assert "providers.x.base_url" in message


def test_openai_provider_without_base_url_is_an_error() -> None:
    """An openai provider must have a base_url."""
    message = config_error("providers:\n  x:\n    kind: openai\n")
    assert "providers.x" in message
    assert "needs base_url" in message


def test_unknown_top_level_key_is_named() -> None:
    """An unknown top-level key is rejected by name."""
    message = config_error("bogus: 1\n")
    assert "bogus" in message


def test_unknown_nested_key_is_named() -> None:
    """An unknown key inside a section is rejected with its dotted path."""
    assert "server.prot" in config_error("server:\n  prot: 1\n")


def test_out_of_range_value_is_named() -> None:
    """A port above 65535 names server.port."""
    assert "server.port" in config_error("server:\n  port: 70000\n")


def test_model_with_unknown_provider_is_named() -> None:
    """A model naming an unknown provider names models.m.provider and the known providers."""
    message = config_error("providers:\n  x:\n    kind: mock\nmodels:\n  m:\n    provider: y\n")
    assert "models.m.provider" in message
    assert "'y'" in message
    assert "known: x" in message


def test_duplicate_alias_is_named() -> None:
    """An alias that repeats another model's name is rejected, naming both models."""
    message = config_error(
        "providers:\n  x:\n    kind: mock\n"
        "models:\n  m:\n    provider: x\n  n:\n    provider: x\n    aliases: [m]\n"
    )
    assert "models.n" in message
    assert "models.m" in message


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ("limits:\n  requests:\n    - {per: user, limit: 5, feature: chatt}\n", "limits.requests[0].feature"),
        (
            "limits:\n  tokens:\n    - {per: org, tokens_per_minute: 9, feature: chatt}\n",
            "limits.tokens[0].feature",
        ),
        ("budgets:\n  orgs:\n    - {org: acme, limit_usd: 1, feature: chatt}\n", "budgets.orgs[0].feature"),
    ],
)
def test_a_limit_or_budget_of_an_unknown_feature_is_named(section: str, where: str) -> None:
    """A typo in a feature name would make the limit or budget never apply: refused by name."""
    message = config_error(section)
    assert where in message and "'chatt'" in message and "chat, default" in message
    assert f"\n  {where}: unknown feature" in message  # the key first, as for any other bad value


def test_a_limit_or_budget_of_a_configured_feature_or_default_is_accepted() -> None:
    settings = load_settings(
        write("ok.yaml", "limits:\n  requests:\n    - {per: user, limit: 5, feature: default}\n")
    )
    assert settings.limits.requests[0].feature == "default"


def test_an_org_with_a_slash_cannot_have_a_budget() -> None:
    """`acme/user:boss` would share the budget of the user boss of acme."""
    message = config_error("budgets:\n  orgs:\n    - {org: acme/user:boss, limit_usd: 1}\n")
    assert "budgets.orgs.0.org" in message and "cannot contain '/'" in message


@pytest.mark.parametrize(
    ("limit", "why"),
    [
        ("10000000000000", "at most $1,000,000,000"),
        ("0.0000001", "at most 6 decimals"),
        ("-1", "greater than or equal to 0"),
    ],
)
def test_a_budget_limit_that_cannot_be_counted_is_refused(limit: str, why: str) -> None:
    """Budgets count whole micro-dollars in 64-bit integers: a limit they cannot hold is refused
    rather than overflowing or truncated to $0."""
    message = config_error(f"budgets:\n  orgs:\n    - {{org: acme, limit_usd: '{limit}'}}\n")
    assert "budgets.orgs.0.limit_usd" in message and why in message


def test_invalid_yaml_is_a_config_error() -> None:
    """A file that is not YAML raises ConfigError naming the file."""
    message = config_error("server: [unclosed\n")
    assert "not valid YAML" in message
    assert "bad.yaml" in message


def test_non_mapping_yaml_is_a_config_error() -> None:
    """A YAML list at the top level is rejected."""
    assert "mapping" in config_error("- a\n- b\n")


def test_missing_file_is_a_config_error() -> None:
    """A path that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nowhere\.yaml does not exist"):
        load_settings("nowhere.yaml")


def test_missing_file_named_by_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """SLUICEGATE_CONFIG naming a missing file raises ConfigError."""
    monkeypatch.setenv("SLUICEGATE_CONFIG", "gone.yaml")
    with pytest.raises(ConfigError, match=r"gone\.yaml"):
        load_settings()


def test_bad_environment_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad environment override raises ConfigError naming the key and the environment."""
    monkeypatch.setenv("SLUICEGATE_SERVER__PORT", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "server.port" in str(caught.value)
    assert "environment" in str(caught.value)


def test_unparsable_environment_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A complex environment override that is not JSON raises ConfigError naming it."""
    monkeypatch.setenv("SLUICEGATE_PROVIDERS", "{not json")
    with pytest.raises(ConfigError, match="providers"):
        load_settings()


def test_directory_as_config_is_a_config_error() -> None:
    """A config path naming a folder raises ConfigError."""
    Path("folder").mkdir()
    with pytest.raises(ConfigError, match=r"folder"):
        load_settings("folder")


# Latency


@pytest.mark.parametrize("value", [50, 50.0])
def test_latency_number_is_fixed_milliseconds(value: float) -> None:
    """`latency: 50` is shorthand for a fixed 50 ms."""
    latency = Latency.model_validate(value)
    assert latency.distribution == "fixed"
    assert latency.ms == 50


def test_latency_shorthand_in_yaml() -> None:
    """The shorthand works inside a provider's mock behaviour in YAML."""
    text = MOCK_CATALOG.replace("kind: mock", "kind: mock\n    mock:\n      latency: 50")
    settings = load_settings(write("c.yaml", text))
    assert settings.providers["local"].mock.latency == Latency(ms=50)


def test_latency_rejects_a_boolean() -> None:
    """`latency: true` is not read as 1 ms."""
    with pytest.raises(ValidationError):
        Latency.model_validate(True)


def test_latency_rejects_negative_ms() -> None:
    """A negative latency is invalid."""
    with pytest.raises(ValidationError):
        Latency.model_validate(-1)


def test_uniform_latency_accepts_a_range() -> None:
    """A uniform latency with max_ms >= ms is valid."""
    latency = Latency(distribution="uniform", ms=10, max_ms=20)
    assert (latency.ms, latency.max_ms) == (10, 20)


@pytest.mark.parametrize("max_ms", [None, 5.0])
def test_uniform_latency_needs_max_at_least_ms(max_ms: float | None) -> None:
    """A uniform latency without max_ms, or with max_ms < ms, is invalid."""
    with pytest.raises(ValidationError, match="max_ms >= ms"):
        Latency(distribution="uniform", ms=10, max_ms=max_ms)


def test_uniform_latency_error_names_the_key() -> None:
    """In YAML, a bad uniform latency names its dotted key."""
    latency = "kind: mock\n    mock:\n      latency: {distribution: uniform, ms: 10}"
    message = config_error(MOCK_CATALOG.replace("kind: mock", latency))
    assert "providers.local.mock.latency" in message


# features


@pytest.mark.parametrize("name", ["chat", "okr-template", "insights_v2", "a", "x" * 64])
def test_valid_feature_names(name: str) -> None:
    """Letters, digits, - and _ up to 64 characters are accepted."""
    settings = Settings(features={name: FeatureConfig()})
    assert name in settings.features


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "a/b", "---", "dot.name"])
def test_invalid_feature_names(name: str) -> None:
    """Empty, too long, or punctuated feature names are rejected with the name quoted."""
    with pytest.raises(ValidationError, match="feature name"):
        Settings(features={name: FeatureConfig()})


def test_invalid_feature_name_in_yaml_names_features() -> None:
    """A bad feature name in YAML raises ConfigError naming features and the name."""
    message = config_error("features:\n  'bad name': {}\n")
    assert "features" in message
    assert "'bad name'" in message


def test_feature_latency_target_must_be_positive() -> None:
    """latency_target_ms must be at least 1."""
    assert "features.chat.latency_target_ms" in config_error("features:\n  chat:\n    latency_target_ms: 0\n")


# ServerConfig


def test_worker_count_uses_the_configured_number() -> None:
    """An explicit worker count is used as is."""
    assert ServerConfig(workers=3).worker_count == 3


def test_worker_count_defaults_to_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """workers=0 means one per core."""
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    assert ServerConfig().worker_count == 7


def test_worker_count_falls_back_to_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the core count is unknown, one worker runs."""
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert ServerConfig(workers=0).worker_count == 1


def test_the_embedded_database_lives_in_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a database URL the SQLite file follows data_dir; a URL given is kept."""
    assert Settings().database.url == "sqlite+aiosqlite:///.sluicegate/sluicegate.db"
    assert Settings(data_dir="/srv/sg").database.url == "sqlite+aiosqlite:////srv/sg/sluicegate.db"  # type: ignore[arg-type]
    kept = Settings(data_dir="/srv/sg", database={"url": "postgresql+asyncpg://db/sg"})  # type: ignore[arg-type]
    assert kept.database.url == "postgresql+asyncpg://db/sg"
    monkeypatch.setenv("SLUICEGATE_DATA_DIR", "/var/lib/sg")
    assert Settings(database={"migrate_on_start": False}).database.url.endswith("/var/lib/sg/sluicegate.db")  # type: ignore[arg-type]


def test_two_limits_of_one_name_are_refused() -> None:
    """They would share one count (and one name in the headers): the config says so."""
    limit = "    - {per: user, limit: %d, window_s: 10}\n"
    text = "limits:\n  requests:\n" + limit % 5 + limit % 3
    message = config_error(text)
    assert "limits.requests: two limits for user-10" in message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("auth:\n  dev_org: ''\n", "auth.dev_org"),
        ("auth:\n  dev_org: a/b\n", "auth.dev_org"),
        ("features:\n  café: {}\n", "ASCII"),
        ('budgets:\n  orgs:\n    - {org: acme, user: "a\\0b", limit_usd: 1}\n', "budgets.orgs.0.user"),
        ("providers:\n  o: {kind: openai, base_url: 'http://'}\n", "must name a host"),
        ("providers:\n  o: {kind: openai, base_url: 'http://h/v1?x=1'}\n", "no query"),
        ("providers:\n  o: {kind: openai, base_url: 'http://h/v1', headers: {X-Bad: \"a\\nb\"}}\n", "X-Bad"),
        ("providers:\n  o: {kind: openai, base_url: 'http://h/v1', headers: {bad name: x}}\n", "header name"),
        ("data_dir: 5\n", "data_dir"),
    ],
)
def test_values_the_gateway_could_not_use_are_refused_when_the_settings_load(text: str, said: str) -> None:
    assert said in config_error(text)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes('auth:\n  dev_org: "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


@pytest.mark.parametrize(
    "section",
    [
        {"alerts": {"webhook_url": "hooks.example.com/alerts"}},
        {"budgets": {"webhook_url": "ftp://hooks.example.com/alerts"}},
        {"budgets": {"webhook_url": "https:///no-host"}},
        {"alerts": {"webhook_url": "http://exa mple.com/hook"}},
        {"alerts": {"webhook_url": "https://example.com:99999/hook"}},
        {"alerts": {"webhook_url": "https://example.com:abc/hook"}},
    ],
)
def test_a_webhook_url_that_could_never_be_posted_to_is_refused(section: dict[str, object]) -> None:
    """A typo in a webhook URL is found at start-up, not when the first alert is lost."""
    with pytest.raises(ValidationError, match="webhook_url must be an http:// or https:// URL"):
        Settings(**section)  # type: ignore[arg-type]


def test_webhook_urls_that_can_be_posted_to_are_kept() -> None:
    settings = Settings(
        alerts={"webhook_url": "https://hooks.example.com/a?token=1"},  # type: ignore[arg-type]
        budgets={"webhook_url": "http://127.0.0.1:9000/budget"},  # type: ignore[arg-type]
    )
    assert settings.alerts.webhook_url == "https://hooks.example.com/a?token=1"


@pytest.mark.parametrize(
    "origin",
    ["app.example.com", "https://app.example.com/login", "https://", "null", "https://a.example.com:99999"],
)
def test_a_cors_origin_no_browser_would_send_is_refused(origin: str) -> None:
    """A path or a bare host never equals a browser's Origin: CORS would fail with no clue why."""
    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(browser={"cors_origins": [origin]})  # type: ignore[arg-type]


def test_cors_origins_as_browsers_send_them_are_kept() -> None:
    origins = ("https://app.example.com", "http://localhost:3000/", "*")
    assert Settings(browser={"cors_origins": origins}).browser.cors_origins == origins  # type: ignore[arg-type]


def test_a_fallback_that_could_never_answer_for_its_model_is_refused() -> None:
    """An embedding model falling back to a chat model (or the other way round) would hand
    a client vectors from another model, or a chat answer to an embedding call."""
    with pytest.raises(ValidationError, match="'chatm' serves chat only, and 'text-embed' serves embeddings"):
        Settings(
            providers={"p": {"kind": "mock"}},  # type: ignore[dict-item]
            models={
                "text-embed": {"provider": "p", "serves": ["embeddings"], "fallbacks": ["chatm"]},  # type: ignore[dict-item]
                "chatm": {"provider": "p"},
            },  # type: ignore[dict-item]
        )


def test_a_wildcard_origin_is_refused_saying_so() -> None:
    with pytest.raises(ValidationError, match="an origin has no wildcards"):
        Settings(browser={"cors_origins": ["https://*.example.com"]})  # type: ignore[arg-type]
