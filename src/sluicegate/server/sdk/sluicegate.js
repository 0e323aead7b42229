/**
 * sluicegate browser client: one dependency-free ES module, served by the gateway at
 * /sdk/sluicegate.js (and kept in the repository at clients/js/sluicegate.js).
 *
 *   import { createClient } from 'https://ai.example.com/sdk/sluicegate.js';
 *
 *   const client = createClient({
 *     baseUrl: 'https://ai.example.com',
 *     getToken: () => myBackend.sluicegateToken(),  // or token: 'sgb_…'
 *   });
 *   const answer = await client.chat({ model: 'gpt-4o-mini', messages }, { feature: 'chat' });
 *   for await (const chunk of client.chat({ model: 'gpt-4o-mini', messages, stream: true },
 *                                         { feature: 'chat' })) { … }
 *   const vectors = await client.embeddings({ model: 'text-embedding-3-small', input }, { feature: 'chat' });
 *
 * Tokens. The page calls the gateway with a short-lived browser token (`sgb_…`), bound to one
 * org, one user and a list of features. The application's backend mints it with its virtual
 * key (POST /api/ai/browser-tokens) and hands it to the page; never put a virtual key in a
 * page. `getToken` is called before every request: return a cached token and fetch a new one
 * shortly before its `expires_at`.
 *
 * Caching. An answer is kept in the browser only when the gateway allows it for this user:
 * `Cache-Control: private, max-age=N` with N > 0 and an `ETag`, never with `no-store`. It is
 * kept in memory and in the Cache Storage API (bucket `sluicegate-v1`, under a synthetic GET
 * URL named by the SHA-256 of the canonical request body, the feature and the token's org and
 * user). While fresh it is answered locally with no network call. Once stale it is revalidated
 * with the same POST and `If-None-Match`: a `304` renews it, a `200` replaces it. A stream is
 * stored once it has ended with `data: [DONE]`, and is replayed as the same chunks; a stream
 * that was cut is never stored. Both stores need a secure context (https, or localhost);
 * elsewhere the client works without caching.
 *
 * The body's `cache` object works as on the gateway: `{no_cache: true}` is never answered from
 * the browser (the fresh answer then replaces the kept one), `{max_age: N}` only by an answer at
 * most N seconds old, and `{no_store: true}` is never kept. It is not part of the key.
 *
 * Errors are `SluicegateError`s: the gateway's `status`, `type`, `code`, `param`, and
 * `retryAfter` (seconds) when it sent `Retry-After`.
 *
 * Log-out and user switch: call `await client.clearCache()`. It empties the memory and the
 * Cache Storage bucket, so nothing the previous user was answered stays on the device, not
 * even an answer that was still on its way when it was called; the page's other clients and
 * the origin's other tabs empty their memory too (a BroadcastChannel). (Entries
 * are keyed by the token's user, so one user never reads another's, but they would stay on
 * disk until then.)
 */

const CACHE_NAME = 'sluicegate-v1';
const CACHE_PATH = '/__sluicegate/browser-cache/';
const PATHS = { chat: '/v1/chat/completions', embeddings: '/v1/embeddings' };
const TOKEN_PREFIX = 'sgb_';

/** An error answered by the gateway, in OpenAI's shape, or a stream that broke. */
export class SluicegateError extends Error {
  constructor(message, { status = 0, type = null, code = null, param = null, retryAfter = null } = {}) {
    super(message);
    this.name = 'SluicegateError';
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter; // seconds, from Retry-After (a 429 or 503), else null
  }
}

/**
 * A client for the gateway at `baseUrl` (default: this page's origin).
 *
 * Options: `token` (a browser token) or `getToken` (an async function returning one), `fetch`
 * (default: the global fetch), `memoryEntries` (how many answers memory keeps, default 200)
 * and `now` (a clock in milliseconds, for tests).
 */
export function createClient({
  baseUrl = '',
  token = null,
  getToken = null,
  fetch: fetchImpl = null,
  memoryEntries = 200,
  now = () => Date.now(),
} = {}) {
  const base = String(baseUrl).replace(/\/+$/, '');
  const send = fetchImpl ?? ((...args) => globalThis.fetch(...args));
  const memory = new Map();
  const counters = {
    network: 0,
    memoryHits: 0,
    cacheStorageHits: 0,
    revalidated: 0,
    stored: 0,
  };
  let last = null;
  let opened = null;
  // Counts the clearCache() calls: an answer still on its way when one ran is not kept.
  let generation = 0;
  // clearCache() in one tab, or in another client of this page, clears this one too: the
  // other tabs' memory and open handle on the deleted bucket would outlive a log-out.
  const channel = typeof BroadcastChannel === 'undefined' ? null : new BroadcastChannel(CACHE_NAME);
  channel?.addEventListener('message', (event) => {
    if (event.data === 'clear') dropLocal();
  });

  function dropLocal() {
    generation += 1;
    memory.clear();
    opened = null;
  }

  // The stores

  function openCache() {
    if (typeof caches === 'undefined') return Promise.resolve(null);
    opened ??= caches.open(CACHE_NAME).catch(() => null);
    return opened;
  }

  function entryUrl(key) {
    try {
      return new URL(CACHE_PATH + key, base || globalThis.location?.href).href;
    } catch {
      return null;
    }
  }

  function remember(key, entry) {
    memory.delete(key);
    memory.set(key, entry);
    while (memory.size > memoryEntries) memory.delete(memory.keys().next().value);
  }

  async function lookup(key) {
    const held = memory.get(key);
    if (held) {
      remember(key, held);
      return { entry: held, tier: 'browser-memory' };
    }
    const cache = await openCache();
    const url = entryUrl(key);
    if (!cache || !url) return null;
    try {
      const response = await cache.match(url);
      if (!response) return null;
      const entry = {
        etag: response.headers.get('etag'),
        freshUntil: Number(response.headers.get('x-sluicegate-fresh-until')),
        bornAt: Number(response.headers.get('x-sluicegate-born-at') ?? Number.NaN),
        kind: response.headers.get('x-sluicegate-kind'),
        body: await response.text(),
      };
      if (!entry.etag || !Number.isFinite(entry.freshUntil)) return null;
      remember(key, entry);
      return { entry, tier: 'browser-cache-storage' };
    } catch {
      return null;
    }
  }

  async function store(key, entry, born) {
    if (born !== generation) return; // the cache was cleared while this answer was on its way
    remember(key, entry);
    counters.stored += 1;
    const cache = await openCache();
    const url = entryUrl(key);
    if (!cache || !url || born !== generation) return;
    const headers = {
      'content-type': entry.kind === 'sse' ? 'text/event-stream' : 'application/json',
      etag: entry.etag,
      'x-sluicegate-fresh-until': String(entry.freshUntil),
      'x-sluicegate-born-at': String(entry.bornAt),
      'x-sluicegate-kind': entry.kind,
    };
    try {
      await cache.put(url, new Response(entry.body, { headers }));
    } catch {
      // Over quota or in a private window: memory still serves.
    }
  }

  async function forget(key) {
    memory.delete(key);
    const cache = await openCache();
    const url = entryUrl(key);
    if (cache && url) await cache.delete(url).catch(() => false);
  }

  // One exchange with the gateway, or none when the browser holds a fresh answer

  async function exchange(kind, body, { feature = null, signal = null } = {}, onServed = null) {
    const born = generation;
    const bearer = getToken ? await getToken() : token;
    // The body's `cache` object (as the gateway reads it) never changes the answer, only
    // whether a kept one may serve: `no_cache` asks for a fresh one, `max_age` for a young one.
    const { cache, ...asked } = body ?? {};
    const wanted = cache && typeof cache === 'object' ? cache : {};
    const key = await cacheKey(base, kind, asked, feature, bearer);
    const found = key ? await lookup(key) : null;
    if (found && found.entry.freshUntil > now() && acceptable(found.entry, wanted)) {
      counters[found.tier === 'browser-memory' ? 'memoryHits' : 'cacheStorageHits'] += 1;
      return served({ source: found.tier, gatewayCache: null, status: 200 }, { entry: found.entry });
    }
    const headers = { 'content-type': 'application/json' };
    if (bearer) headers.authorization = `Bearer ${bearer}`;
    if (feature) headers['x-sluicegate-feature'] = feature;
    if (found) {
      headers['if-none-match'] = found.entry.etag;
      // A request with If-None-Match set by script is sent as a reload, and the browser adds
      // `Cache-Control: max-age=0` (Chrome) or `no-cache` (the Fetch standard) unless one is
      // there. Either would make the gateway skip its own cache and call the model again.
      headers['cache-control'] = 'max-stale=0';
    }
    const response = await send(base + PATHS[kind], {
      method: 'POST',
      headers,
      body: JSON.stringify(body),
      signal,
    });
    counters.network += 1;
    const meta = { status: response.status, gatewayCache: response.headers.get('x-sluicegate-cache') };
    if (response.status === 304 && found) {
      const renewed = freshness(response.headers, now(), found.entry.etag);
      const entry = { ...found.entry, etag: renewed?.etag ?? found.entry.etag };
      entry.freshUntil = renewed ? renewed.freshUntil : now();
      if (renewed?.bornAt) entry.bornAt = renewed.bornAt;
      if (renewed?.noStore) await forget(key);
      else await store(key, entry, born);
      counters.revalidated += 1;
      return served({ ...meta, source: 'browser-revalidated' }, { entry });
    }
    if (!response.ok) throw await errorOf(response);
    const policy = freshness(response.headers, now(), null);
    const keep = key && policy && !policy.noStore && policy.private ? policy : null;
    if (found && !keep) await forget(key);
    return served({ ...meta, source: 'network' }, { response, key, keep, born });

    function acceptable(entry, { no_cache: noCache, max_age: maxAge }) {
      if (noCache === true) return false;
      if (!Number.isInteger(maxAge)) return true;
      return Number.isFinite(entry.bornAt) && now() - entry.bornAt <= maxAge * 1000;
    }

    function served(info, result) {
      last = info;
      onServed?.(info);
      return result;
    }
  }

  async function requestJson(kind, body, options = {}) {
    const result = await exchange(kind, body, options, options.onServed);
    if (result.entry) return JSON.parse(result.entry.body);
    const text = await result.response.text();
    const value = JSON.parse(text);
    if (result.keep) {
      await store(result.key, { ...kept(result.keep), kind: 'json', body: text }, result.born);
    }
    return value;
  }

  async function* streamChat(body, options = {}) {
    const result = await exchange('chat', body, options, options.onServed);
    if (result.entry) {
      for (const data of sseData(result.entry.body, true).events) {
        if (data === '[DONE]') return;
        yield JSON.parse(data);
      }
      return;
    }
    const reader = result.response.body.getReader();
    const decoder = new TextDecoder();
    let raw = '';
    let pending = '';
    let done = false;
    try {
      while (!done) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        const text = decoder.decode(value, { stream: true });
        if (result.keep) raw += text;
        const parsed = sseData(pending + text, false);
        pending = parsed.rest;
        for (const data of parsed.events) {
          if (data === '[DONE]') {
            done = true;
            break;
          }
          const chunk = JSON.parse(data);
          if (chunk && chunk.error) throw errorFromBody(chunk, 200);
          yield chunk;
        }
      }
    } finally {
      if (!done) reader.cancel().catch(() => {});
      else reader.releaseLock();
    }
    if (!done) {
      throw new SluicegateError('the stream ended before [DONE]; the answer is incomplete', {
        code: 'stream_incomplete',
      });
    }
    if (result.keep) {
      await store(result.key, { ...kept(result.keep), kind: 'sse', body: raw }, result.born);
    }
  }

  return {
    /** A chat completion: a Promise of the JSON answer, or with `stream: true` an async iterable of chunks. */
    chat(body, options = {}) {
      return body && body.stream ? streamChat(body, options) : requestJson('chat', body, options);
    },

    /** Embeddings: a Promise of the JSON answer. */
    embeddings(body, options = {}) {
      return requestJson('embeddings', body, options);
    },

    /** Empty the memory and the Cache Storage bucket: call it on log-out and when the user changes. */
    async clearCache() {
      dropLocal();
      if (typeof caches !== 'undefined') await caches.delete(CACHE_NAME).catch(() => false);
      channel?.postMessage('clear'); // after the delete: the others reopen a new, empty bucket
    },

    /** Counters since the client was made, the entries in memory, and how the last answer was served. */
    stats() {
      return { ...counters, memoryEntries: memory.size, last };
    },
  };
}

// Pure helpers

/** What an entry keeps of the gateway's freshness: its validator, lifetime and birth. */
function kept(policy) {
  return { etag: policy.etag, freshUntil: policy.freshUntil, bornAt: policy.bornAt };
}

/** The cache key: SHA-256 of the canonical request, feature and the token's org and user; null without crypto. */
async function cacheKey(base, kind, body, feature, bearer) {
  if (typeof crypto === 'undefined' || !crypto.subtle) return null;
  const who = tokenClaims(bearer);
  const text = canonical({ base, kind, body, feature, org: who.org, user: who.user });
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The org and user a browser token is bound to (read, not verified: the gateway verifies). */
export function tokenClaims(bearer) {
  if (!bearer || !bearer.startsWith(TOKEN_PREFIX)) return { org: null, user: null };
  try {
    const payload = bearer.slice(TOKEN_PREFIX.length).split('.')[0];
    const binary = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return { org: claims.o ?? null, user: claims.u ?? null, features: claims.f ?? [], expiresAt: claims.e ?? null };
  } catch {
    return { org: null, user: null };
  }
}

/** JSON with object keys sorted at every depth, so that equal requests hash equally. */
export function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** What the response's Cache-Control, Age and ETag allow: null when nothing can be kept. */
function freshness(headers, at, fallbackEtag) {
  const directives = new Map();
  for (const part of (headers.get('cache-control') || '').toLowerCase().split(',')) {
    const [name, value] = part.split('=');
    if (name.trim()) directives.set(name.trim(), (value ?? '').trim().replace(/^"|"$/g, ''));
  }
  const noStore = directives.has('no-store');
  const maxAge = Number.parseInt(directives.get('max-age') ?? '', 10);
  const etag = headers.get('etag') || fallbackEtag;
  if (noStore) return { noStore: true };
  if (!(maxAge > 0) || !etag) return null;
  // As in HTTP, max-age counts from when the answer was made; Age says how long ago that was.
  const age = Number.parseInt(headers.get('age') ?? '0', 10) || 0;
  const freshUntil = at + Math.max(0, maxAge - age) * 1000;
  return { etag, freshUntil, bornAt: at - age * 1000, private: directives.has('private'), noStore: false };
}

/** The data of each complete SSE event in `text`, and the incomplete rest. */
function sseData(text, final) {
  const blocks = text.replace(/\r\n?/g, '\n').split('\n\n');
  const rest = final ? '' : blocks.pop();
  const events = [];
  for (const block of blocks) {
    const lines = block.split('\n').filter((line) => line.startsWith('data:'));
    if (lines.length) events.push(lines.map((line) => line.slice(5).replace(/^ /, '')).join('\n'));
  }
  return { events, rest };
}

async function errorOf(response) {
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  const retryAfter = Number.parseInt(response.headers.get('retry-after') ?? '', 10);
  return errorFromBody(payload, response.status, Number.isFinite(retryAfter) ? retryAfter : null);
}

function errorFromBody(payload, status, retryAfter = null) {
  const error = payload && typeof payload.error === 'object' && payload.error ? payload.error : {};
  return new SluicegateError(error.message || `the gateway answered HTTP ${status}`, {
    status,
    type: error.type ?? null,
    code: error.code ?? null,
    param: error.param ?? null,
    retryAfter,
  });
}
