"""The browser client and its demo page, served from the package over real HTTP."""

from __future__ import annotations

import hashlib
import http.client
import re
from importlib import resources
from pathlib import Path

from sluicegate.testing import GatewayServer

REPOSITORY = Path(__file__).resolve().parents[2]


def get(
    base: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One GET (or ``method``); status, lower-cased headers and body."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


def packaged(name: str) -> bytes:
    """A file from the installed package's sdk folder."""
    return resources.files("sluicegate.server").joinpath("sdk", name).read_bytes()


def test_client_script(server: GatewayServer) -> None:
    """The module is served as JavaScript, cacheable for five minutes, with a strong content ETag."""
    status, headers, body = get(server.url, "/sdk/sluicegate.js")
    assert status == 200 and body == packaged("sluicegate.js")
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "public, max-age=300"
    assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    assert headers["vary"] == "Origin"  # readable cross-origin or not, per Origin (CORS)
    assert b"export function createClient" in body


def test_head_is_answered_wherever_get_is(server: GatewayServer) -> None:
    """RFC 9110: the GET's head, without its body."""
    for path in ("/sdk/sluicegate.js", "/sdk/demo", "/v1/models"):
        status, headers, body = get(server.url, path, method="HEAD")
        full = get(server.url, path)
        assert (status, body) == (200, b""), path
        assert headers["content-length"] == full[1]["content-length"] == str(len(full[2]))


def test_client_script_revalidates(server: GatewayServer) -> None:
    """A matching If-None-Match (alone, weak, in a list, or `*`) gets an empty 304; another gets 200."""
    etag = get(server.url, "/sdk/sluicegate.js")[1]["etag"]
    for given in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        status, headers, body = get(server.url, "/sdk/sluicegate.js", {"if-none-match": given})
        assert (status, body) == (304, b"")
        assert headers["etag"] == etag and headers["cache-control"] == "public, max-age=300"
        assert "content-type" not in headers
    status, _, body = get(server.url, "/sdk/sluicegate.js", {"if-none-match": '"other"'})
    assert status == 200 and body


def test_demo_page(server: GatewayServer) -> None:
    """The demo page imports the served module and has the elements a test drives."""
    status, headers, body = get(server.url, "/sdk/demo")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["etag"].startswith('"')
    page = body.decode()
    assert "from '/sdk/sluicegate.js'" in page
    ids = set(re.findall(r'id="([\w-]+)"', page))
    assert {"user", "get-token", "prompt", "ask", "answer", "served", "gateway-cache", "clear-cache"} <= ids
    assert "/api/ai/browser-tokens" in page and "backend" in page


def test_only_get_is_allowed(server: GatewayServer) -> None:
    """The SDK routes are read-only."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/sdk/sluicegate.js", b"{}")
    assert conn.getresponse().status == 405
    conn.close()


def test_repository_copy_is_the_packaged_file() -> None:
    """clients/js/sluicegate.js is a link to the file the package ships, so they never differ."""
    link = REPOSITORY / "clients" / "js" / "sluicegate.js"
    assert link.is_symlink()
    assert link.resolve() == (REPOSITORY / "src" / "sluicegate" / "server" / "sdk" / "sluicegate.js")
