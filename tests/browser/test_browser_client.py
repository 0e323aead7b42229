"""The browser client in a real browser: Playwright driving Debian's Chromium.

The first tests check the client's own logic on a blank page with a stub ``fetch`` and an
injected clock. The last ones drive the demo page against a real gateway and mock upstream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import service_missing

try:
    from playwright.sync_api import Browser, Page, Response, sync_playwright
except ImportError as exc:  # pragma: no cover - the dev extra installs it
    PLAYWRIGHT_ERROR: ImportError | None = exc
else:
    PLAYWRIGHT_ERROR = None

pytestmark = pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")

CHROMIUM = Path("/usr/bin/chromium")
CHAT_PATH = "/v1/chat/completions"

# Helpers every stub test starts with: the module, a fake browser token, a recording fetch.
PRELUDE = """
const sdk = await import('/sdk/sluicegate.js');
const { createClient, canonical, tokenClaims, SluicegateError } = sdk;
const b64url = (text) => btoa(text).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
const token = (user, org = 'acme') =>
  `sgb_${b64url(JSON.stringify({ o: org, u: user, f: ['chat'], e: 4102444800 }))}.c2ln`;
function stub(respond) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, method: init.method, headers: { ...init.headers }, body: JSON.parse(init.body) });
    return respond(calls.length, init);
  };
  return { calls, fetch };
}
const json = (body, headers = {}, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
const cacheable = (etag, maxAge = 60) => ({ 'cache-control': `private, max-age=${maxAge}`, etag });
const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] };
function sse(pieces, headers = {}) {
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    start(controller) {
      for (const piece of pieces) controller.enqueue(encoder.encode(piece));
      controller.close();
    },
  });
  return new Response(body, { headers: { 'content-type': 'text/event-stream', ...headers } });
}
async function collect(iterable) {
  const chunks = [];
  for await (const chunk of iterable) chunks.push(chunk);
  return chunks;
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian, one for the module; skipped (loudly) when it is missing."""
    if PLAYWRIGHT_ERROR is not None:
        service_missing("Playwright", "the dev extra (pip install -e '.[dev]')", PLAYWRIGHT_ERROR)
    if not CHROMIUM.exists():
        service_missing("Chromium", str(CHROMIUM), FileNotFoundError("apt-get install chromium"))
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context, so that each test starts with empty Cache Storage."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


def run(page: Page, base: str, script: str) -> Any:
    """Run ``script`` (after the prelude) on a blank page at the gateway's origin; its result."""
    page.route(base + "/__blank", lambda route: route.fulfill(body="<!doctype html><title>blank</title>"))
    page.goto(base + "/__blank")
    return page.evaluate(f"async () => {{ {PRELUDE}\n{script} }}")


def test_fresh_answers_are_local_and_stale_ones_revalidate(page: Page, server: GatewayServer) -> None:
    """Fresh: no network. Stale: the same POST with If-None-Match, and a 304 renews the entry."""
    result = run(
        page,
        server.url,
        """
        let t = 1_000_000;
        const s = stub((n) => n === 1
          ? json({ answer: 1 }, cacheable('"e1"', 60))
          : new Response(null, { status: 304, headers: {
              'cache-control': 'private, max-age=60', 'x-sluicegate-cache': 'hit-browser-revalidated' } }));
        const client = createClient({
          baseUrl: location.origin, token: token('ann'), fetch: s.fetch, now: () => t });
        const answers = [];
        const served = [];
        const ask = async (body) => {
          answers.push(await client.chat(body, { feature: 'chat', onServed: (info) => served.push(info) }));
        };
        await ask(chat);
        await ask({ messages: chat.messages, model: chat.model });  // same request, keys reordered
        t += 61_000;
        await ask(chat);
        t += 30_000;
        await ask(chat);
        return { answers, served, calls: s.calls, stats: client.stats() };
        """,
    )
    assert [s["source"] for s in result["served"]] == [
        "network",
        "browser-memory",
        "browser-revalidated",
        "browser-memory",
    ]
    assert result["answers"] == [{"answer": 1}] * 4
    first, second = result["calls"]
    assert first["url"] == server.url + CHAT_PATH and first["method"] == "POST"
    assert first["headers"]["authorization"].startswith("Bearer sgb_")
    assert first["headers"]["x-sluicegate-feature"] == "chat"
    assert "if-none-match" not in first["headers"]
    assert second["headers"]["if-none-match"] == '"e1"' and second["body"] == first["body"]
    # Set by the client, or the browser would add one that makes the gateway skip its cache.
    assert second["headers"]["cache-control"] == "max-stale=0" and "cache-control" not in first["headers"]
    assert result["served"][2]["gatewayCache"] == "hit-browser-revalidated"
    stats = result["stats"]
    assert (stats["network"], stats["memoryHits"], stats["revalidated"]) == (2, 2, 1)


@pytest.mark.parametrize(
    "headers",
    [
        {"cache-control": "no-store", "etag": '"e1"'},
        {"cache-control": "private, max-age=60, no-store", "etag": '"e1"'},
        {"cache-control": "public, max-age=60", "etag": '"e1"'},
        {"cache-control": "private, max-age=60"},
        {"cache-control": "private, max-age=0", "etag": '"e1"'},
        {"etag": '"e1"'},
    ],
)
def test_only_private_answers_with_an_etag_are_kept(
    page: Page, server: GatewayServer, headers: dict[str, str]
) -> None:
    """No-store, public, no ETag or no lifetime: every request goes to the network."""
    result = run(
        page,
        server.url,
        f"""
        const s = stub(() => json({{ answer: 1 }}, {json.dumps(headers)}));
        const client = createClient({{ baseUrl: location.origin, token: token('ann'), fetch: s.fetch }});
        await client.chat(chat, {{ feature: 'chat' }});
        await client.chat(chat, {{ feature: 'chat' }});
        return {{ calls: s.calls.length, stats: client.stats(), stored: await caches.has('sluicegate-v1')
          && (await (await caches.open('sluicegate-v1')).keys()).length }};
        """,
    )
    assert result["calls"] == 2
    assert result["stats"]["stored"] == 0 and result["stats"]["memoryEntries"] == 0
    assert not result["stored"]


def test_the_bodys_cache_object_decides_whether_a_kept_answer_may_serve(
    page: Page, server: GatewayServer
) -> None:
    """`no_cache` always asks the gateway (and its answer replaces the kept one), `max_age: N`
    takes a kept answer only if it is at most N s old; neither is part of the key."""
    result = run(
        page,
        server.url,
        """
        let t = 0;
        const s = stub((n) => json({ answer: n }, { ...cacheable(`"e${n}"`, 600), age: '0' }));
        const client = createClient({ baseUrl: location.origin, fetch: s.fetch, now: () => t });
        const answers = [await client.chat(chat)];                                  // network: 1
        answers.push(await client.chat({ ...chat, cache: { no_cache: true } }));    // network: 2
        answers.push(await client.chat({ ...chat, cache: { no_cache: true } }));    // network: 3
        answers.push(await client.chat(chat));                                      // local: 3
        t += 10_000;
        answers.push(await client.chat({ ...chat, cache: { max_age: 60 } }));       // local: 3
        answers.push(await client.chat({ ...chat, cache: { max_age: 5 } }));        // network: 4
        answers.push(await client.chat({ ...chat, cache: null }));                   // local: 4
        return { answers: answers.map((a) => a.answer), sent: s.calls.map((c) => c.body.cache ?? null) };
        """,
    )
    assert result["answers"] == [1, 2, 3, 3, 3, 4, 4]
    assert result["sent"] == [None, {"no_cache": True}, {"no_cache": True}, {"max_age": 5}]


def test_an_answer_on_its_way_when_the_cache_is_cleared_is_not_kept(
    page: Page, server: GatewayServer
) -> None:
    """Log-out while an answer loads: the previous user's answer must not land afterwards."""
    result = run(
        page,
        server.url,
        """
        let release;
        const gate = new Promise((resolve) => { release = resolve; });
        const s = stub(async () => { await gate; return json({ answer: 1 }, cacheable('"e1"', 600)); });
        const client = createClient({ baseUrl: location.origin, token: token('ann'), fetch: s.fetch });
        const pending = client.chat(chat, { feature: 'chat' });
        await new Promise((resolve) => setTimeout(resolve, 50));
        await client.clearCache();
        release();
        const answer = await pending;
        const kept = (await caches.has('sluicegate-v1'))
          && (await (await caches.open('sluicegate-v1')).keys()).length;
        return { answer, memory: client.stats().memoryEntries, kept };
        """,
    )
    assert result["answer"] == {"answer": 1}
    assert result["memory"] == 0 and not result["kept"]


def test_clearing_one_client_clears_the_others_of_the_origin(page: Page, server: GatewayServer) -> None:
    """A log-out in one tab (here: one of two clients of the page) leaves no answer in the
    other's memory, and the other keeps storing into a live bucket, not the deleted one."""
    result = run(
        page,
        server.url,
        """
        const s = stub((n) => json({ answer: n }, cacheable(`"e${n}"`, 600)));
        const make = () => createClient({ baseUrl: location.origin, token: token('ann'), fetch: s.fetch });
        const first = make(), second = make();
        await first.chat(chat, { feature: 'chat' });
        await second.chat(chat, { feature: 'chat' });
        const before = second.stats().last.source;
        await first.clearCache();
        await new Promise((resolve) => setTimeout(resolve, 100));  // the message reaches the other
        const memoryAfter = second.stats().memoryEntries;
        const again = await second.chat(chat, { feature: 'chat' });
        const kept = (await (await caches.open('sluicegate-v1')).keys()).length;
        return { before, memoryAfter, again: again.answer, source: second.stats().last.source, kept };
        """,
    )
    assert result["before"] == "browser-cache-storage" and result["memoryAfter"] == 0  # kept in memory since
    assert result["again"] == 2 and result["source"] == "network" and result["kept"] == 1


def test_an_error_carries_retry_after(page: Page, server: GatewayServer) -> None:
    result = run(
        page,
        server.url,
        """
        const refusal = { error: { message: 'slow down', type: 'requests', code: 'rate_limit_exceeded' } };
        const s = stub(() => json(refusal, { 'retry-after': '42' }, 429));
        const client = createClient({ baseUrl: location.origin, fetch: s.fetch });
        try { await client.chat(chat); } catch (error) {
          return { name: error.name, status: error.status, code: error.code, retryAfter: error.retryAfter };
        }
        """,
    )
    assert result == {
        "name": "SluicegateError",
        "status": 429,
        "code": "rate_limit_exceeded",
        "retryAfter": 42,
    }


def test_a_new_answer_replaces_a_stale_entry(page: Page, server: GatewayServer) -> None:
    """A 200 to a revalidation replaces the entry; a later no-store answer removes it."""
    result = run(
        page,
        server.url,
        """
        let t = 0;
        const replies = [
          () => json({ answer: 1 }, cacheable('"e1"', 10)),
          () => json({ answer: 2 }, cacheable('"e2"', 10)),
          () => json({ answer: 3 }, { 'cache-control': 'no-store' }),
          () => json({ answer: 4 }, { 'cache-control': 'no-store' }),
        ];
        const s = stub((n) => replies[n - 1]());
        const client = createClient({ baseUrl: location.origin, fetch: s.fetch, now: () => t });
        const answers = [await client.chat(chat)];
        t += 11_000;
        answers.push(await client.chat(chat));
        answers.push(await client.chat(chat));  // fresh: local
        t += 11_000;
        answers.push(await client.chat(chat));
        answers.push(await client.chat(chat));
        return { answers, inm: s.calls.map((c) => c.headers['if-none-match'] ?? null) };
        """,
    )
    assert [a["answer"] for a in result["answers"]] == [1, 2, 2, 3, 4]
    assert result["inm"] == [None, '"e1"', '"e2"', None]


def test_cache_storage_outlives_the_client_and_is_per_user(page: Page, server: GatewayServer) -> None:
    """A reloaded client finds the entry in Cache Storage, another user does not; clearCache empties it."""
    result = run(
        page,
        server.url,
        """
        const s = stub((n) => json({ answer: n }, cacheable(`"e${n}"`, 60)));
        const make = (user) => createClient({ baseUrl: location.origin, token: token(user), fetch: s.fetch });
        const sources = [];
        const ask = async (client) => {
          const answer = await client.chat(chat, { feature: 'chat' });
          sources.push(client.stats().last.source);
          return answer.answer;
        };
        const answers = [await ask(make('ann'))];
        const reloaded = make('ann');
        answers.push(await ask(reloaded));
        answers.push(await ask(make('bob')));
        const keys = (await (await caches.open('sluicegate-v1')).keys()).map((r) => new URL(r.url).pathname);
        await reloaded.clearCache();
        const bucketAfterClear = await caches.has('sluicegate-v1');
        const memoryAfterClear = reloaded.stats().memoryEntries;
        answers.push(await ask(make('ann')));
        return { answers, sources, keys, bucketAfterClear, memoryAfterClear, calls: s.calls.length };
        """,
    )
    assert result["answers"] == [1, 1, 2, 3]
    assert result["sources"] == ["network", "browser-cache-storage", "network", "network"]
    assert len(result["keys"]) == 2
    assert all(re.fullmatch(r"/__sluicegate/browser-cache/[0-9a-f]{64}", k) for k in result["keys"])
    assert result["bucketAfterClear"] is False and result["memoryAfterClear"] == 0
    assert result["calls"] == 3


def test_streams_are_stored_whole_and_replayed(page: Page, server: GatewayServer) -> None:
    """A complete stream is replayed as the same chunks; a cut or failed one is never stored."""
    result = run(
        page,
        server.url,
        """
        const a = 'data: {"choices":[{"delta":{"content":"Hel"}}]}\\n\\n';
        const b = 'data: {"choices":[{"delta":{"content":"lo"}}]}\\n\\n';
        const replies = [
          // Split inside an event, to exercise the parser's buffering.
          () => sse([a.slice(0, 20), a.slice(20) + b.slice(0, 5), b.slice(5), 'data: [DONE]\\n\\n'],
                    cacheable('"s1"')),
          () => sse([a, b], cacheable('"s2"')),
          () => sse([a, 'data: {"error":{"message":"upstream broke","code":"upstream_stream_broken"}}\\n\\n'],
                    cacheable('"s3"')),
        ];
        const s = stub((n) => replies[n - 1]());
        const make = () => createClient({ baseUrl: location.origin, token: token('ann'), fetch: s.fetch });
        const client = make();
        const streamed = { ...chat, stream: true };
        const first = await collect(client.chat(streamed, { feature: 'chat' }));
        const replayed = await collect(client.chat(streamed, { feature: 'chat' }));
        const fromStorage = await collect(make().chat(streamed, { feature: 'chat' }));
        const sources = [client.stats().last.source];
        const other = { ...streamed, messages: [{ role: 'user', content: 'other' }] };
        const failures = [];
        for (let i = 0; i < 2; i += 1) {
          const got = [];
          try {
            for await (const chunk of client.chat(other, { feature: 'chat' })) got.push(chunk);
          } catch (error) {
            failures.push({ name: error.name, code: error.code, got: got.length, message: error.message });
          }
        }
        return { first, replayed, fromStorage, sources, failures, calls: s.calls.length,
                 memoryEntries: client.stats().memoryEntries };
        """,
    )
    assert [c["choices"][0]["delta"]["content"] for c in result["first"]] == ["Hel", "lo"]
    assert result["replayed"] == result["first"] == result["fromStorage"]
    assert result["sources"] == ["browser-memory"]
    cut, failed = result["failures"]
    assert (cut["name"], cut["code"], cut["got"]) == ("SluicegateError", "stream_incomplete", 2)
    assert "[DONE]" in cut["message"]
    assert failed == {
        "name": "SluicegateError",
        "code": "upstream_stream_broken",
        "got": 1,
        "message": "upstream broke",
    }
    assert result["calls"] == 3 and result["memoryEntries"] == 1


def test_errors_are_thrown_in_openai_shape(page: Page, server: GatewayServer) -> None:
    """A gateway error becomes a SluicegateError with its status, type and code."""
    result = run(
        page,
        server.url,
        """
        const s = stub(() => json({ error: { message: 'not for you', type: 'permission_error',
          param: 'feature', code: 'feature_not_allowed' } }, {}, 403));
        const client = createClient({ baseUrl: location.origin, fetch: s.fetch });
        try {
          await client.embeddings({ model: 'text-embedding-3-small', input: 'x' }, { feature: 'insights' });
          return null;
        } catch (error) {
          return { isError: error instanceof SluicegateError, status: error.status, type: error.type,
                   code: error.code, message: error.message, url: s.calls[0].url };
        }
        """,
    )
    assert result == {
        "isError": True,
        "status": 403,
        "type": "permission_error",
        "code": "feature_not_allowed",
        "message": "not for you",
        "url": server.url + "/v1/embeddings",
    }


def test_canonical_form_and_token_claims(page: Page, server: GatewayServer) -> None:
    """Keys are sorted at every depth, and the token's org and user are read from its payload."""
    result = run(
        page,
        server.url,
        """
        return {
          canonical: canonical({ b: [{ z: 1, a: null }], a: 'x', u: undefined }),
          claims: tokenClaims(token('ann')),
          notToken: tokenClaims('sk-sg-abc'),
        };
        """,
    )
    assert result["canonical"] == '{"a":"x","b":[{"a":null,"z":1}]}'
    assert (result["claims"]["org"], result["claims"]["user"]) == ("acme", "ann")
    assert result["notToken"] == {"org": None, "user": None}


# Against the real gateway


@pytest.fixture
def cached_gateway(upstream: MockUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    """The gateway with one feature, chat, cached per user for two seconds."""
    settings = mock_settings(
        upstream.url,
        data_dir=tmp_path,
        features={"chat": {"cache": {"scope": "user", "ttl_s": 60, "browser_ttl_s": 1, "cost_aware": False}}},
        cache={"ttl": {"min_ttl_s": 1}},
    )
    with GatewayServer(settings) as gw:
        yield gw


def get_token(page: Page, user: str) -> None:
    """Use the demo's token form (dev mode: no key needed)."""
    page.fill("#user", user)
    page.click("#get-token")
    page.wait_for_selector(f"#token-status[data-user='{user}']")


def ask(page: Page, seq: int) -> dict[str, str]:
    """Click ask, wait for answer number ``seq``, and read how it was served."""
    page.click("#ask")
    page.wait_for_selector(f"#result[data-seq='{seq}']")
    return {
        name: page.text_content(f"#{name}") or "" for name in ("answer", "error", "served", "gateway-cache")
    }


def test_demo_page_asks_through_the_gateway(
    page: Page, cached_gateway: GatewayServer, upstream: MockUpstream
) -> None:
    """The demo gets a token for ann and asks the gateway, which calls the upstream as ann."""
    page.goto(cached_gateway.url + "/sdk/demo")
    get_token(page, "ann")
    assert "features chat" in (page.text_content("#token-status") or "")
    shown = ask(page, 1)
    assert shown["error"] == "" and shown["answer"] and shown["served"] == "network"
    assert page.get_attribute("#result", "data-state") == "done"
    assert len(upstream.calls) == 1


def test_demo_page_streams(page: Page, cached_gateway: GatewayServer, upstream: MockUpstream) -> None:
    """Streamed through the client, the demo shows the same answer as the plain request."""
    page.goto(cached_gateway.url + "/sdk/demo")
    get_token(page, "ann")
    plain = ask(page, 1)
    page.fill("#prompt", "Suggest an OKR for a support team")
    page.check("#stream")
    streamed = ask(page, 2)
    assert streamed["error"] == "" and streamed["served"] == "network"
    assert len(upstream.calls) == 2 and upstream.calls[-1].body["stream"] is True
    page.uncheck("#stream")
    assert ask(page, 3)["answer"] == streamed["answer"] != plain["answer"]


def test_browser_cache_round_trip(page: Page, cached_gateway: GatewayServer, upstream: MockUpstream) -> None:
    """Asked twice, the answer comes from the browser; once stale, a 304 renews it: one upstream call.

    Needs the server cache's browser headers: `Cache-Control: private, max-age=N`, `ETag`, and
    `304` with `X-Sluicegate-Cache: hit-browser-revalidated` for a matching `If-None-Match`.
    """
    exchanges: list[Response] = []
    page.on("response", lambda response: exchanges.append(response) if CHAT_PATH in response.url else None)
    page.goto(cached_gateway.url + "/sdk/demo")
    get_token(page, "ann")

    first = ask(page, 1)
    assert first["served"] == "network" and first["answer"]
    assert len(exchanges) == 1 and exchanges[0].status == 200
    headers = exchanges[0].all_headers()
    control = headers.get("cache-control", "")
    assert "private" in control and "etag" in headers, headers
    max_age = int(re.search(r"max-age=(\d+)", control).group(1))  # type: ignore[union-attr]
    assert max_age > 0

    second = ask(page, 2)
    assert second["served"] == "browser-memory" and second["answer"] == first["answer"]
    assert len(exchanges) == 1 and len(upstream.calls) == 1

    page.wait_for_timeout(max_age * 1000 + 100)  # the browser's copy is now stale; the server's is not
    third = ask(page, 3)
    assert third["served"] == "browser-revalidated", third
    assert third["answer"] == first["answer"] and third["gateway-cache"] == "hit-browser-revalidated"
    assert len(exchanges) == 2 and exchanges[1].status == 304
    revalidation = exchanges[1].request.all_headers()
    assert revalidation.get("if-none-match") == headers["etag"]
    assert revalidation.get("cache-control") == "max-stale=0"
    assert len(upstream.calls) == 1


def test_demo_page_shows_an_error_without_the_last_answers_details(
    page: Page, cached_gateway: GatewayServer
) -> None:
    """After an answer, an error's ask shows its own status, not the last answer's source."""
    page.goto(cached_gateway.url + "/sdk/demo")
    get_token(page, "ann")
    assert ask(page, 1)["served"] == "network"
    page.fill("#feature", "no-such-feature")
    shown = ask(page, 2)
    assert "HTTP 403" in shown["error"] or "HTTP 400" in shown["error"]
    blank = "\N{EN DASH}"  # what the page shows for "nothing"
    assert shown["served"] == blank and shown["gateway-cache"] == blank
    assert page.text_content("#status") in ("400", "403")
