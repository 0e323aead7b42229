"""The cache commands: `sluicegate cache stats|invalidate|bump` and `sluicegate warm`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from sluicegate.cli import app
from sluicegate.config import CONFIG_ENV
from sluicegate.testing import MockUpstream

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file on SQLite in the test's folder, in front of the HTTP mock."""
    monkeypatch.setenv(CONFIG_ENV, "")  # the commands set it; this makes sure it is unset afterwards
    path = tmp_path / "sluicegate.yaml"
    write_config(path, upstream)
    return path


def write_config(path: Path, upstream: MockUpstream, **extra: Any) -> None:
    """Write a config for the HTTP mock, with SQLite next to ``path``."""
    data = path.parent / "data"
    values = {
        "data_dir": str(data),
        "providers": {"upstream": {"kind": "openai", "base_url": upstream.url}},
        "models": {"gpt-4o-mini": {"provider": "upstream"}},
        **extra,
    }
    path.write_text(yaml.safe_dump(values))


def run(config: Path, *args: str) -> Result:
    """Run the command with ``--config``."""
    return runner.invoke(app, [*args, "--config", str(config)])


def output_json(result: Result) -> Any:
    """The JSON the command printed."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def requests_file(tmp_path: Path, count: int, *extra_lines: str) -> Path:
    """A JSON Lines file of ``count`` distinct requests for acme's okr-template feature."""
    lines = [
        json.dumps(
            {
                "feature": "okr-template",
                "org": "acme",
                "request": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"OKR template {i}"}],
                },
            }
        )
        for i in range(count)
    ]
    path = tmp_path / "warm.jsonl"
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def chat_calls(upstream: MockUpstream) -> int:
    """Chat calls that reached the mock."""
    return sum(1 for c in upstream.calls if c.path.endswith("/chat/completions"))


def test_stats_json_on_an_empty_cache(config: Path) -> None:
    """`cache stats --json` prints the features, the tiers and the namespaces."""
    stats = output_json(run(config, "cache", "stats", "--json"))
    assert set(stats) == {"features", "tiers", "namespaces"}
    assert stats["features"]["all"]["hit_ratio"] is None
    assert stats["tiers"]["sql"]["entries"] == 0
    assert stats["namespaces"] == {}


def test_warm_dry_run_calls_nothing(config: Path, upstream: MockUpstream, tmp_path: Path) -> None:
    """`warm FILE --dry-run` reports what it would fetch and never calls the upstream."""
    report = output_json(run(config, "warm", str(requests_file(tmp_path, 3)), "--dry-run"))
    assert report["dry_run"] is True
    assert (report["fetched"], report["skipped_fresh"], report["failed"]) == (3, 0, 0)
    assert report["estimated_tokens"] > 0
    assert chat_calls(upstream) == 0


def test_warm_then_warm_again_skips_fresh_entries(
    config: Path, upstream: MockUpstream, tmp_path: Path
) -> None:
    """A real warm fetches and stores every request; a second run finds them all fresh."""
    file = requests_file(tmp_path, 3)
    first = output_json(run(config, "warm", str(file), "--concurrency", "2"))
    assert (first["fetched"], first["skipped_fresh"]) == (3, 0)
    assert chat_calls(upstream) == 3
    second = output_json(run(config, "warm", str(file)))
    assert (second["fetched"], second["skipped_fresh"]) == (0, 3)
    assert chat_calls(upstream) == 3
    stats = output_json(run(config, "cache", "stats", "--json"))
    assert stats["tiers"]["sql"]["entries"] == 3
    assert stats["features"]["okr-template"]["upstream_calls"] == 3


def test_warm_max_requests(config: Path, upstream: MockUpstream, tmp_path: Path) -> None:
    """--max-requests caps the upstream calls."""
    report = output_json(run(config, "warm", str(requests_file(tmp_path, 4)), "--max-requests", "1"))
    assert report["fetched"] == 1
    assert chat_calls(upstream) == 1


def test_warm_bad_file(config: Path, tmp_path: Path) -> None:
    """A bad line or a missing file exits 2 with the problem named; nothing is fetched."""
    bad = run(config, "warm", str(requests_file(tmp_path, 2, "{not json")))
    assert bad.exit_code == 2
    assert "line 3" in bad.output
    missing = run(config, "warm", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2
    assert "cannot read" in missing.output


def test_invalidate_needs_a_selection(config: Path) -> None:
    """`cache invalidate` without any option exits 2 and says what to pass."""
    result = run(config, "cache", "invalidate")
    assert result.exit_code == 2
    assert "--tag" in result.output
    for option, value in (("--feature", "okr-templat"), ("--model", "gpt-4o-mni")):  # typos, as bump's
        typo = run(config, "cache", "invalidate", option, value)
        assert typo.exit_code == 2 and "must be a configured" in typo.output, typo.output


def test_invalidate_after_warm(config: Path, upstream: MockUpstream, tmp_path: Path) -> None:
    """`cache invalidate --org` deletes the org's entries; the next warm fetches them again."""
    file = requests_file(tmp_path, 2)
    output_json(run(config, "warm", str(file)))
    result = output_json(run(config, "cache", "invalidate", "--org", "acme"))
    assert result["match"] == {"org": "acme"}
    assert result["deleted"]["sql"] == 2
    assert output_json(run(config, "warm", str(file)))["fetched"] == 2
    assert chat_calls(upstream) == 4


def test_bump(config: Path, upstream: MockUpstream, tmp_path: Path) -> None:
    """`cache bump` refuses an unknown feature with exit 2, and bumps a known one."""
    unknown = run(config, "cache", "bump", "nope")
    assert unknown.exit_code == 2
    assert "unknown feature" in unknown.output
    file = requests_file(tmp_path, 1)
    output_json(run(config, "warm", str(file)))
    bumped = output_json(run(config, "cache", "bump", "okr-template"))
    assert (bumped["feature"], bumped["namespace"]) == ("okr-template", 1)
    assert output_json(run(config, "warm", str(file)))["fetched"] == 1
    assert output_json(run(config, "cache", "stats", "--json"))["namespaces"] == {"okr-template": 1}


def test_stats_table(config: Path, tmp_path: Path) -> None:
    """Without --json, stats print a table per feature and per tier."""
    output_json(run(config, "warm", str(requests_file(tmp_path, 1))))
    result = runner.invoke(app, ["cache", "stats", "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if "│" in line
        for cells in [[cell.strip() for cell in line.strip("│").split("│")]]
    }
    assert rows["okr-template"][:3] == ["0", "1", "0.0%"]  # hits, misses, hit ratio
    assert rows["sql"][0] == "1"  # one entry
    assert "memory" not in rows  # per process: meaningless for a command


def test_commands_refuse_a_disabled_cache(tmp_path: Path, upstream: MockUpstream, config: Path) -> None:
    """With cache.enabled false the cache commands exit 2 and say why."""
    write_config(config, upstream, cache={"enabled": False})
    for args in (["cache", "stats"], ["cache", "bump", "chat"], ["warm", str(requests_file(tmp_path, 1))]):
        result = run(config, *args)
        assert result.exit_code == 2, args
        assert "disabled" in result.output
