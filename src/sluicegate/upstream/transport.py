"""The transport seam: everything a provider needs from the network, in two methods.

`AiohttpTransport` speaks HTTP through one pooled aiohttp session. Its in-memory twin is
`sluicegate.upstream.mock.MockTransport`, which answers from the mock engine with no socket.
Third-party exceptions are translated here, at the boundary, into sluicegate's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from ..config import Timeouts
from ..errors import UpstreamStreamBroken, UpstreamTimeout, UpstreamUnavailable

__all__ = ["AiohttpTransport", "Transport", "UpstreamRequest", "UpstreamResponse"]


@dataclass(slots=True)
class UpstreamRequest:
    """One HTTP request to a provider; ``path`` is relative to the provider's base URL."""

    method: str
    path: str
    body: bytes
    stream: bool = False


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


@contextmanager
def map_exceptions(what: str) -> Iterator[None]:
    """Translate aiohttp and asyncio failures into sluicegate's upstream errors."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout(f"{what}: the upstream did not answer in time") from None
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamStreamBroken(f"{what}: the upstream response was cut short ({exc})") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
        raise UpstreamUnavailable(f"{what}: could not reach the upstream ({exc})") from None


class AiohttpTransport:
    """HTTP to an OpenAI-compatible provider through one pooled aiohttp session."""

    def __init__(
        self,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        max_connections: int,
    ) -> None:
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # The session must be created inside the running loop, so it is made on first use.
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ttl_dns_cache=300, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self._timeouts.total, sock_connect=self._timeouts.connect),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        session = self._session or self._open()
        url = self._base_url + request.path
        with map_exceptions(f"provider {self._name}"):
            async with asyncio.timeout(self._timeouts.first_byte):
                response = await session.request(request.method, url, data=request.body)
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
        return UpstreamResponse(response.status, response.headers, body)

    async def _iterate(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        with map_exceptions(f"provider {self._name}"):
            async for data in response.content.iter_any():
                yield data

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
