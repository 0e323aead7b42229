"""The sluicegate command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluicegate import InvalidRequest, __version__
from sluicegate.cli import app
from sluicegate.cli_keys import parse_grace
from sluicegate.testing import free_port

runner = CliRunner()


def test_help_lists_commands() -> None:
    """--help names every command."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "mock-upstream", "keys", "version"):
        assert command in result.output


def test_version() -> None:
    """version prints the package version."""
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == __version__


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    """Keys made by the CLI are listed without their secret and can be revoked."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase:\n  url: sqlite+aiosqlite:///{tmp_path}/db.sqlite\n")
    created = runner.invoke(
        app, ["keys", "create", "--org", "acme", "--name", "web", "--config", str(config)]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("sk-sg-")
    listed = runner.invoke(app, ["keys", "list", "--config", str(config)])
    assert "acme" in listed.stdout and key not in listed.stdout
    revoke = runner.invoke(app, ["keys", "revoke", key[:12], "--config", str(config)])
    assert revoke.exit_code == 0, revoke.output
    assert "acme" not in runner.invoke(app, ["keys", "list", "--config", str(config)]).stdout
    missing = runner.invoke(app, ["keys", "revoke", "nope", "--config", str(config)])
    assert missing.exit_code == 1 and "no key" in missing.output


def test_keys_rotate_prints_a_new_key_and_lists_the_old_ones_expiry(tmp_path: Path) -> None:
    """Rotation prints a new key once; the list shows the old key's expiry and successor."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase:\n  url: sqlite+aiosqlite:///{tmp_path}/db.sqlite\n")
    args = ["--config", str(config)]
    old = runner.invoke(app, ["keys", "create", "--org", "acme", "--name", "web", *args]).stdout.strip()
    rotated = runner.invoke(app, ["keys", "rotate", old[:12], "--grace", "90s", *args])
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.strip().splitlines()[0]
    assert new.startswith("sk-sg-") and new != old
    assert "works until" in rotated.stderr and old not in rotated.output
    listed = runner.invoke(app, ["keys", "list", *args], env={"COLUMNS": "200"}).stdout
    rows = {line.split("│")[2].strip(): line for line in listed.splitlines() if "acme" in line}
    assert rows[f"{old[:12]}…"].count("+00:00") == 2  # created, expires
    assert rows[f"{old[:12]}…"].rstrip(" │").endswith(f"{new[:12]}…")  # replaced by
    assert rows[f"{new[:12]}…"].count("+00:00") == 1
    assert listed.count("acme") == 2 and new not in listed
    again = runner.invoke(app, ["keys", "rotate", old[:12], *args])
    assert again.exit_code == 1 and "already rotated" in " ".join(again.output.split())
    now = runner.invoke(app, ["keys", "rotate", new[:12], "--grace", "0", *args])
    assert now.exit_code == 0, now.output
    assert "web" in runner.invoke(app, ["keys", "list", *args]).stdout
    bad = runner.invoke(app, ["keys", "rotate", new[:12], "--grace", "soon", *args])
    assert bad.exit_code == 1 and "90s, 15m, 24h or 7d" in " ".join(bad.output.split())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("90s", 90), ("15m", 900), ("24h", 86_400), ("7d", 604_800), (" 2H ", 7200)],
)
def test_grace_periods_parse(text: str, seconds: int) -> None:
    """--grace takes a number and one unit, or 0."""
    assert parse_grace(text) == seconds


@pytest.mark.parametrize("text", ["", "-5m", "1.5h", "10", "1h30m", "366d", "forever"])
def test_bad_grace_periods_are_refused(text: str) -> None:
    """Anything else is a clear error naming the accepted forms."""
    with pytest.raises(InvalidRequest, match="24h"):
        parse_grace(text)


def test_bad_config_exits_with_the_key_named(tmp_path: Path) -> None:
    """A bad config stops the command with exit code 2 and names the key."""
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  port: not-a-port\n")
    result = runner.invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 2 and "server.port" in result.output


def test_serve_answers_then_stops(tmp_path: Path) -> None:
    """`sluicegate serve` on the embedded defaults serves a chat completion from the mock."""
    port = 4700 + os.getpid() % 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "sluicegate", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body)
                with urllib.request.urlopen(request, timeout=2) as response:
                    assert response.status == 200 and b"chat.completion" in response.read()
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "serve did not come up in 30 s"
                time.sleep(0.2)
        assert (tmp_path / ".sluicegate" / "sluicegate.db").exists()
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=15)[0]
    assert b"mock (mock)" in output


def test_serve_with_its_database_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    """No traceback: exit 2 and the reason, before any worker starts."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text("database:\n  url: postgresql+asyncpg://postgres@127.0.0.1:9/nothing\n")
    result = runner.invoke(app, ["serve", "--config", str(config), "--port", str(free_port())])
    assert result.exit_code == 2
    assert "the database is unreachable" in " ".join(result.output.split())


def test_serve_refuses_a_providers_unset_api_key_in_one_line(tmp_path: Path) -> None:
    """Not in each worker, which the server would start again and again: exit 2, naming it."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(
        "providers:\n  openai:\n    kind: openai\n    base_url: https://api.openai.com/v1\n"
        "    api_key_env: SG_TEST_UNSET_KEY\nmodels:\n  gpt-4o-mini:\n    provider: openai\n"
    )
    result = runner.invoke(
        app, ["serve", "--config", str(config), "--port", str(free_port())], env={"SG_TEST_UNSET_KEY": ""}
    )
    assert result.exit_code == 2
    assert "providers.openai.api_key_env" in result.output and "SG_TEST_UNSET_KEY" in result.output


@pytest.mark.parametrize(
    ("setting", "value"), [("REDIS__URL", "http://127.0.0.1:6379/8"), ("DATABASE__URL", "mysql://x/y")]
)
def test_a_store_url_of_the_wrong_kind_is_a_config_error(tmp_path: Path, setting: str, value: str) -> None:
    result = runner.invoke(app, ["serve", "--port", str(free_port())], env={f"SLUICEGATE_{setting}": value})
    assert result.exit_code == 2
    assert setting.lower().replace("__", ".") in result.output and value in result.output


def test_serve_refuses_a_model_with_no_price(tmp_path: Path) -> None:
    """A model no price source knows stops `serve` before any worker starts, naming the model."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\n"
        "providers:\n  local:\n    kind: openai\n    base_url: http://127.0.0.1:9/v1\n"
        "models:\n  house-llama:\n    provider: local\n    upstream_model: llama-house-70b\n"
    )
    result = runner.invoke(app, ["serve", "--config", str(config), "--port", str(free_port())])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "house-llama (upstream llama-house-70b)" in output and "pricing.default" in output


def test_usage_prints_the_ledger_as_a_table_and_as_json(tmp_path: Path) -> None:
    """`sluicegate usage` reads the ledger that a gateway wrote."""
    import asyncio
    import json

    from sluicegate import RequestContext, create_gateway
    from sluicegate.testing import mock_settings

    async def spend() -> None:
        async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(2):
                await gateway.send(gateway.new_call("chat", body, RequestContext("acme", None, "chat")))

    asyncio.run(spend())
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    table = runner.invoke(app, ["usage", "--group-by", "org,feature", "--config", str(config)])
    assert table.exit_code == 0, table.output
    assert "acme" in table.output and "total" in table.output
    raw = runner.invoke(app, ["usage", "--json", "--period", "all", "--config", str(config)])
    report = json.loads(raw.output)
    assert report["totals"]["requests"] == 2 and report["totals"]["cache_hits"] == 1
    bad = runner.invoke(app, ["usage", "--group-by", "colour", "--config", str(config)])
    assert bad.exit_code == 2 and "group_by" in bad.output


def test_ledger_compact_rolls_up_and_purges_and_usage_still_reports(tmp_path: Path) -> None:
    """`sluicegate ledger compact` rolls up ended days and deletes old rows; `usage` reads both."""
    import asyncio
    import json

    from sluicegate.accounting.outbox import insert_rows
    from sluicegate.store.db import with_migrated
    from tests.accounting.test_rollups import ledger_row

    url = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"
    now = time.time()
    rows = [ledger_row("old", now - 100 * 86_400), ledger_row("new", now - 86_400, cost_micro=7)]
    asyncio.run(with_migrated(url, lambda engine: insert_rows(engine, rows)))
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase:\n  url: {url}\n")
    usage = ["usage", "--json", "--period", "all", "--days", "120", "--config", str(config)]
    before = json.loads(runner.invoke(app, usage).output)["totals"]
    result = runner.invoke(app, ["ledger", "compact", "--config", str(config)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "rolled up 2 day(s)" in output and "deleted 1 ledger row(s)" in output
    again = runner.invoke(app, ["ledger", "compact", "--config", str(config)])
    assert "rolled up 0 day(s)" in again.output and "deleted 0 ledger row(s)" in again.output
    assert json.loads(runner.invoke(app, usage).output)["totals"] == before
    assert before["requests"] == 2 and before["cost_micro"] == 107


def test_stop_stops_and_resume(tmp_path: Path) -> None:
    """`sluicegate stop`, `stops` and `resume` set, list and lift emergency stops."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase:\n  url: sqlite+aiosqlite:///{tmp_path}/db.sqlite\n")
    args = ["--config", str(config)]
    stopped = runner.invoke(app, ["stop", "--org", "acme", "--reason", "runaway loop", *args])
    assert stopped.exit_code == 0 and "org:acme" in stopped.output
    listed = runner.invoke(app, ["stops", *args])
    assert "org:acme" in listed.output and "runaway loop" in listed.output
    assert "lifted" in runner.invoke(app, ["resume", "--org", "acme", *args]).output
    assert "no stop was in force" in runner.invoke(app, ["resume", "--org", "acme", *args]).output
    assert "no emergency stop" in runner.invoke(app, ["stops", *args]).output
    assert runner.invoke(app, ["stop", "--reason", " ", *args]).exit_code == 2


def test_budgets_set_and_list(tmp_path: Path) -> None:
    """`sluicegate budgets set` stores an org's budget; `list` shows it with its period."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase:\n  url: sqlite+aiosqlite:///{tmp_path}/db.sqlite\n")
    args = ["--config", str(config)]
    made = runner.invoke(app, ["budgets", "set", "--org", "acme", "--limit-usd", "250", *args])
    assert made.exit_code == 0, made.output
    listed = runner.invoke(app, ["budgets", "list", *args])
    assert "org:acme" in listed.output and "250.00" in listed.output
    bad = runner.invoke(app, ["budgets", "set", "--org", "acme", "--limit-usd", "lots", *args])
    assert bad.exit_code == 2 and "limit-usd" in bad.output
    ann = ["budgets", "set", "--org", "acme", "--user", "ann", "--limit-usd", "5", "--period", "day"]
    made = runner.invoke(app, [*ann, *args])
    assert made.exit_code == 0 and "the user ann of acme" in made.output, made.output
    assert "org:acme/user:ann" in runner.invoke(app, ["budgets", "list", *args]).output
    both = runner.invoke(app, [*ann, "--feature", "chat", *args])
    assert both.exit_code == 2 and "at most one of --user, --feature and --key" in both.output
    assert "set the daily budget" in made.output


def test_budgets_delete(tmp_path: Path) -> None:
    """`sluicegate budgets delete` removes a budget set at run time; the config's comes back."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\ndatabase:\n  url: sqlite+aiosqlite:///{tmp_path}/db.sqlite\n"
        "budgets:\n  orgs:\n    - {org: acme, limit_usd: 5}\n"
    )
    args = ["--config", str(config)]
    in_config = runner.invoke(app, ["budgets", "delete", "--org", "acme", *args])
    assert in_config.exit_code == 1 and "set in the config file" in in_config.output, in_config.output
    assert runner.invoke(app, ["budgets", "set", "--org", "acme", "--limit-usd", "9", *args]).exit_code == 0
    deleted = runner.invoke(app, ["budgets", "delete", "--org", "acme", *args])
    assert deleted.exit_code == 0, deleted.output
    assert (
        "deleted the budget of acme" in deleted.output and "budget of $5.00 applies again" in deleted.output
    )
    ann = ["budgets", "set", "--org", "acme", "--user", "ann", "--limit-usd", "1", *args]
    assert runner.invoke(app, ann).exit_code == 0
    gone = runner.invoke(app, ["budgets", "delete", "--org", "acme", "--user", "ann", *args])
    assert gone.exit_code == 0 and "the user ann of acme" in gone.output, gone.output
    assert "org:acme/user:ann" not in runner.invoke(app, ["budgets", "list", *args]).output
    missing = runner.invoke(app, ["budgets", "delete", "--org", "acme", "--user", "ann", *args])
    assert missing.exit_code == 1 and "no budget is set" in missing.output
    both = runner.invoke(app, ["budgets", "delete", "--org", "acme", "--user", "a", "--key", "k", *args])
    assert both.exit_code == 2 and "at most one of" in both.output
    # A feature no longer configured: its run-time budget can still be deleted (here: none).
    gone_feature = runner.invoke(app, ["budgets", "delete", "--org", "acme", "--feature", "nope", *args])
    assert gone_feature.exit_code == 1 and "no budget is set" in gone_feature.output
    # An empty name (an unset variable in a script) never stands for the org's own budget.
    for action in (["delete"], ["set", "--limit-usd", "5"]):
        empty = runner.invoke(app, ["budgets", *action, "--org", "acme", "--user", "", *args])
        assert empty.exit_code == 2 and "--user must not be empty" in empty.output, empty.output


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--limit-usd", "5", "--period", "year"], "--period must be day, week or month, not 'year'"),
        (["--limit-usd", "10000000000000"], "--limit-usd must be at most $1,000,000,000"),
        (["--limit-usd", "0.0000001"], "--limit-usd has at most 6 decimals"),
        (["--limit-usd", "5", "--feature", "chatt"], "--feature must be a configured feature"),
    ],
    ids=["period", "too-large", "below-a-micro-dollar", "unknown-feature"],
)
def test_budgets_set_names_what_is_wrong(tmp_path: Path, extra: list[str], said: str) -> None:
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    refused = runner.invoke(app, ["budgets", "set", "--org", "acme", *extra, "--config", str(config)])
    assert refused.exit_code == 2 and said in " ".join(refused.output.split()), refused.output


def test_budgets_list_shows_a_small_limit_with_the_decimals_it_needs(tmp_path: Path) -> None:
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    args = ["--config", str(config)]
    assert (
        runner.invoke(app, ["budgets", "set", "--org", "acme", "--limit-usd", "0.0006", *args]).exit_code == 0
    )
    assert "0.0006 " in runner.invoke(app, ["budgets", "list", *args]).output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_serve_refuses_an_open_network_address_without_keys(tmp_path: Path, host: str) -> None:
    """Without keys, admin routes are open and every caller spends the providers' money: serve
    refuses a non-loopback address unless told explicitly."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    result = runner.invoke(
        app, ["serve", "--config", str(config), "--host", host, "--port", str(free_port())]
    )
    assert result.exit_code == 2
    assert "auth.require_keys" in " ".join(result.output.split())


def test_serve_allows_an_open_network_address_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluicegate import cli_serve

    config = tmp_path / "sluicegate.yaml"
    config.write_text(f"data_dir: {tmp_path}\nauth: {{allow_unauthenticated_network: true}}\n")
    served: list[str] = []
    monkeypatch.setattr(cli_serve, "serve_uvicorn", lambda settings: served.append(settings.server.host))
    monkeypatch.setattr("sluicegate.cli.serve_uvicorn", cli_serve.serve_uvicorn)
    result = runner.invoke(
        app, ["serve", "--config", str(config), "--host", "0.0.0.0", "--port", str(free_port())]
    )
    assert result.exit_code == 0, result.output
    assert served == ["0.0.0.0"]


@pytest.mark.parametrize(
    "command", [["keys", "list"], ["keys", "revoke", "abc"], ["cache", "stats"], ["cache", "bump", "chat"]]
)
def test_an_unreachable_database_is_one_line_not_a_traceback(command: list[str]) -> None:
    env = {"SLUICEGATE_DATABASE__URL": "postgresql+asyncpg://postgres@127.0.0.1:9/nothing"}
    result = runner.invoke(app, command, env=env)
    assert result.exit_code == 1
    assert "the database is unreachable" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2 and "Background on this error" not in result.output


def test_a_bad_org_name_for_a_key_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["keys", "create", "--org", "a/b"], env={"SLUICEGATE_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "Traceback" not in result.output


def test_an_error_with_brackets_is_printed_as_it_is_on_one_line(tmp_path: Path) -> None:
    """Rich markup in a message (a YAML excerpt, a bad URL) is not read as markup, and a long
    message is not wrapped when stderr is not a terminal."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text("providers:\n  o: {kind: openai, base_url: '[/x]'}\n")
    result = runner.invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'[/x]'" in result.output


def test_migrate_brings_the_schema_up_and_the_other_commands_leave_it_to_it(tmp_path: Path) -> None:
    """With database.migrate_on_start off, a command on an empty database creates no table
    (it says what is missing); `sluicegate migrate` creates them and names the revision."""
    env = {"SLUICEGATE_DATA_DIR": str(tmp_path), "SLUICEGATE_DATABASE__MIGRATE_ON_START": "false"}
    for command in (["keys", "list"], ["budgets", "list"], ["usage"], ["stops"]):
        refused = runner.invoke(app, command, env=env)
        assert refused.exit_code != 0 and "run `sluicegate migrate`" in " ".join(refused.output.split())
    migrated = runner.invoke(app, ["migrate"], env=env)
    assert migrated.exit_code == 0 and "the database's schema is at revision " in migrated.output
    assert runner.invoke(app, ["keys", "list"], env=env).exit_code == 0
    unreachable = runner.invoke(
        app,
        ["migrate"],
        env={"SLUICEGATE_DATABASE__URL": "postgresql+asyncpg://postgres@127.0.0.1:9/nothing"},
    )
    assert unreachable.exit_code == 2 and "the database is unreachable" in unreachable.output


def test_a_bad_flag_is_named_as_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not as the environment variable the flag becomes for the workers."""
    monkeypatch.setenv("SLUICEGATE_SERVER__WORKERS", "1")  # restored after: serve sets it from the flag
    result = runner.invoke(app, ["serve", "--workers", "-1"], env={"SLUICEGATE_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "server.workers (from --workers)" in result.output and "SLUICEGATE_SERVER__" not in result.output


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """Not a banner, migrations, then uvicorn's failure and an undocumented exit status."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "sluicegate.yaml"
        config.write_text(f"data_dir: {tmp_path}\n")
        result = runner.invoke(app, ["serve", "--config", str(config), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "sluicegate 0" not in result.output
    assert not (tmp_path / "sluicegate.db").exists() or (tmp_path / "sluicegate.db").stat().st_size == 0
