"""The transport seam: everything a provider needs from the network, in two methods.

`AiohttpTransport` speaks HTTP through one pooled aiohttp session. Its in-memory twin is
`sluicegate.upstream.mock.MockTransport`, which answers from the mock engine with no socket.
Third-party exceptions are translated here, at the boundary, into sluicegate's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

import aiohttp
from yarl import URL

from .._version import __version__
from ..config import Timeouts
from ..errors import SluicegateError, UpstreamStreamBroken, UpstreamTimeout, UpstreamUnavailable

__all__ = ["AiohttpTransport", "Transport", "UpstreamRequest", "UpstreamResponse"]


@dataclass(slots=True)
class UpstreamRequest:
    """One HTTP request to a provider; ``path`` is relative to the provider's base URL."""

    method: str
    path: str
    body: bytes
    stream: bool = False
    timeout_s: float | None = None  # what is left of the request's deadline: bounds the whole exchange
    connect_s: float | None = None  # the feature's own connect timeout, if it has one
    first_byte_s: float | None = None  # the feature's own first-byte (and between-chunks) timeout


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class UpstreamResponse:
    """A provider's answer: the whole ``body``, or ``chunks`` when a stream was asked for."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    release: Callable[[], Awaitable[None]] = field(default=_nothing)


class Transport(Protocol):
    """Sends requests to one provider."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; raise `UpstreamUnavailable` or `UpstreamTimeout` when it fails."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...


def translate(exc: Exception, what: str) -> SluicegateError | None:
    """The sluicegate error for an aiohttp or asyncio failure; None for anything else."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # no connection: the request never left
        return UpstreamTimeout(f"{what}: could not connect to the upstream in time", sent=False)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{what}: the upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamStreamBroken(f"{what}: the upstream response was cut short ({exc})")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientResponseError):
        return UpstreamUnavailable(f"{what}: could not reach the upstream ({exc})")
    return None


def _raise_upstream(exc: Exception, what: str) -> NoReturn:
    """Raise the sluicegate error for ``exc``, or ``exc`` itself when it has none."""
    error = translate(exc, what)
    if error is None:
        raise exc
    raise error from None


class AiohttpTransport:
    """HTTP to an OpenAI-compatible provider through one pooled aiohttp session.

    Tuned for the hot path: URLs are parsed once, cookies are not kept, no per-request timer
    is armed beyond aiohttp's own, and no compression is asked for.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        max_connections: int,
    ) -> None:
        self._what = f"provider {name}"
        self._base_url = base_url.rstrip("/")
        # Setting aiohttp's automatic headers ourselves keeps it on its fast path (skipping them
        # costs a sort and two header copies per request); no compression is asked for.
        self._headers = {
            "accept": "application/json",
            "accept-encoding": "identity",
            "user-agent": f"sluicegate/{__version__}",
            **headers,
        }
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._urls: dict[str, URL] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # The session must be created inside the running loop, so it is made on first use.
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            # sock_read bounds every wait for upstream bytes: the first byte, and each gap in a stream.
            timeout=aiohttp.ClientTimeout(
                total=self._timeouts.total,
                sock_connect=self._timeouts.connect,
                sock_read=self._timeouts.first_byte,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base_url + path)
        return url

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        session = self._session or self._open()
        try:
            own = request.connect_s is not None or request.first_byte_s is not None
            if own or (request.timeout_s is not None and request.timeout_s < self._timeouts.total):
                # The request's deadline is nearer than the provider's total, or its feature has
                # timeouts of its own: aiohttp's one timer for the exchange is armed with them
                # (no timer of our own on the hot path). An explicit timeout=None would mean
                # "no timeout at all" to aiohttp, so it is never passed.
                timeouts = self._timeouts
                timeout = aiohttp.ClientTimeout(
                    total=min(timeouts.total, request.timeout_s or timeouts.total),
                    sock_connect=request.connect_s or timeouts.connect,
                    sock_read=request.first_byte_s or timeouts.first_byte,
                )
                response = await session.request(
                    request.method, self._url(request.path), data=request.body, timeout=timeout
                )
            else:
                response = await session.request(request.method, self._url(request.path), data=request.body)
            if request.stream and response.status < 400:
                return UpstreamResponse(
                    response.status,
                    response.headers,
                    chunks=self._iterate(response),
                    release=self._releaser(response),
                )
            try:
                body = await response.read()
            finally:
                response.release()
        except Exception as exc:
            _raise_upstream(exc, self._what)
        return UpstreamResponse(response.status, response.headers, body)

    async def _iterate(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for data in response.content.iter_any():
                yield data
        except Exception as exc:
            _raise_upstream(exc, self._what)

    @staticmethod
    def _releaser(response: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            # A finished stream returns its connection to the pool; an abandoned one is closed.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

        return release

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
