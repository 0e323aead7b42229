"""What flows through the pipeline: a `Call` in, a `Reply` out, and who it is for.

Validation checks only the fields sluicegate uses (``model``, ``messages``, ``stream``,
``input``); every other field passes through to the upstream untouched.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from .errors import InvalidRequest, SluicegateError

__all__ = [
    "CacheControl",
    "Call",
    "CallKind",
    "ModelRoute",
    "Reply",
    "ReplyStream",
    "RequestContext",
    "Usage",
    "validate_body",
]

CallKind = Literal["chat", "embeddings"]


@dataclass(slots=True, frozen=True)
class RequestContext:
    """Who a request is for: organisation, user, feature and the virtual key used."""

    org: str
    user: str | None = None
    feature: str = "default"
    key_id: str | None = None


@dataclass(slots=True, frozen=True)
class ModelRoute:
    """Where a public model name is served: a provider and the provider's name for it."""

    name: str
    provider: str
    upstream_model: str
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Routes key the breakers, the retry budgets and the labels: hash once, not per lookup.
        object.__setattr__(self, "_hash", hash((self.name, self.provider, self.upstream_model)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def deployment(self) -> str:
        """The deployment: ``provider/upstream_model``."""
        return f"{self.provider}/{self.upstream_model}"


@dataclass(slots=True, frozen=True)
class Usage:
    """Tokens used by one call, as the upstream reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, served from the provider's prompt cache
    reasoning_tokens: int = 0  # of the completion tokens, spent reasoning

    @classmethod
    def from_payload(cls, value: object) -> Usage | None:
        """Read OpenAI's ``usage`` object, with its token details; None when absent or malformed."""
        if not isinstance(value, dict):
            return None
        prompt = value.get("prompt_tokens")
        completion = value.get("completion_tokens", 0)
        total = value.get("total_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        total = total if isinstance(total, int) else prompt + completion
        cached = _detail(value, "prompt_tokens_details", "cached_tokens")
        reasoning = _detail(value, "completion_tokens_details", "reasoning_tokens")
        if cached or reasoning:
            return cls(prompt, completion, total, cached, reasoning)
        return cls(prompt, completion, total)


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True, frozen=True)
class CacheControl:
    """What the client asked of the cache, from ``Cache-Control`` and the body's ``cache`` object."""

    no_cache: bool = False
    no_store: bool = False
    max_age: int | None = None
    ttl: int | None = None
    tags: tuple[str, ...] = ()
    if_none_match: str | None = None


NO_DIRECTIVES = CacheControl()


@dataclass(slots=True)
class Call:
    """One request on its way through the pipeline."""

    kind: CallKind
    body: dict[str, Any]
    route: ModelRoute
    context: RequestContext
    request_id: str
    stream: bool = False
    started: float = 0.0
    cache: CacheControl = NO_DIRECTIVES
    attempt: int = 1  # of the upstream call this is (retries count up)
    outcome: str = "none"  # what the cache made of it: miss, bypass, refresh; none without a cache
    deadline: float = math.inf  # perf_counter() time by which the request must be answered
    timeouts: tuple[float | None, float | None] | None = None  # the feature's connect and first-byte
    # A stage past the cache changed what is asked for this caller (its budget's cheaper model):
    # the answer is its own, never shared or stored.
    own_answer: bool = False
    # Its budget clamped max_tokens to what it can afford: an answer the clamp cut short (a
    # choice ending with ``length``) is its own; one that ended by itself is the full answer.
    clamped: bool = False
    # Sent by `sluicegate warm` (an operator's action): not counted against request rate limits.
    warming: bool = False
    # Once a hedge races copies of the call, the attempt numbers they share (see `next_attempt`).
    tries: Iterator[int] | None = None
    # The copies a hedge race left behind once another answered, with the reply each had (None:
    # cancelled while it waited, billed by its prompt's estimate, as the ledger bills it).
    losers: list[tuple[Call, Reply | None]] | None = None
    # The routes of its attempts that timed out after their request went upstream: each is
    # billed its prompt's estimate, by the ledger, the budget and the token limits alike.
    timed_out: tuple[ModelRoute, ...] = ()
    # The request's rate limits, their script already sent (`LimitRequests` with a shared cache
    # tier: it leaves with the lookup): the cache stage awaits it before it answers or goes on;
    # it raises the 429. None once awaited, or when the limits were checked before.
    admit: Callable[[], Awaitable[None]] | None = None

    def next_attempt(self) -> None:
        """Number the call's next upstream attempt: one more, or, once copies of it race (a
        hedge), the next number none of them has had, so that each attempt's ledger row is its own."""
        self.attempt = self.attempt + 1 if self.tries is None else next(self.tries)


class ReplyStream(Protocol):
    """A stream of client-ready SSE bytes; once it has ended, its ``usage``, ``done`` and ``error``."""

    usage: Usage | None
    done: bool
    error: SluicegateError | None
    first_chunk_at: float | None
    deltas: int  # chunks with answer content seen: the token estimate when no usage came

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Iterate over the SSE bytes."""
        ...

    def on_close(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback`` with the stream once it has ended, however it ended."""
        ...

    async def aclose(self) -> None:
        """Stop the stream and release what it holds."""
        ...


@dataclass(slots=True)
class Reply:
    """The answer: the upstream's ``body`` as is, or a ``stream`` of client-ready SSE bytes.

    ``headers`` are sent to an HTTP client as they are (the cache's ``X-Sluicegate-Cache``,
    ``Age``, ``ETag``…); ``status`` is 200, or 304 when a browser's copy is still good;
    ``payload`` is ``body`` parsed, when the provider already parsed it.
    """

    body: bytes = b""
    usage: Usage | None = None
    stream: ReplyStream | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    # The body parsed, when a stage already did it (None: parse ``body`` if you need it).
    payload: Any = None


# Fields budgets and limits rely on (the reservation is max tokens times n): null or a positive integer.
_POSITIVE_INTEGERS = ("max_tokens", "max_completion_tokens", "n")
# Beyond any model's limit (and, for n, OpenAI's own 128): a worst case of the largest of both
# at the dearest price a config accepts still fits the ledger's 64-bit integers.
_MOST = {"max_tokens": 2**31 - 1, "max_completion_tokens": 2**31 - 1, "n": 128}


def _check_positive_integer(name: str, value: object) -> None:
    try:  # as the client sent it: JSON (true, "8", 1.5), not Python (True, '8')
        shown = orjson.dumps(value).decode()
    except TypeError:
        shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    if type(value) is not int:
        raise InvalidRequest(
            f"invalid type for '{name}': expected an integer, got {shown}", param=name, code="invalid_type"
        )
    most = _MOST[name]
    if not 1 <= value <= most:
        raise InvalidRequest(
            f"invalid '{name}': expected an integer from 1 to {most:,}, got {shown}",
            param=name,
            code="integer_below_min_value" if value < 1 else "integer_above_max_value",
        )


def request_json(value: Any, option: int = 0) -> bytes:
    """``value`` (a request, or part of one) as JSON; `InvalidRequest` when it cannot be: nested
    deeper than the 254 levels orjson writes, or, from the library, not made of JSON's types."""
    try:
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"the request cannot be written as JSON: {exc}", code="invalid_json") from None


def validate_body(kind: CallKind, body: object) -> tuple[str, bool]:
    """Check the fields sluicegate relies on; return the model name and whether to stream."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string", param="model", code="invalid_type")
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise InvalidRequest(
                "you must provide a messages parameter",
                param="messages",
                code="missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty array", param="messages", code="invalid_type")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequest(
                    f"messages[{index}] must be an object with a string role",
                    param=f"messages[{index}]",
                    code="invalid_type",
                )
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise InvalidRequest("stream must be a boolean", param="stream", code="invalid_type")
        for name in _POSITIVE_INTEGERS:
            value = body.get(name)
            if value is not None:
                _check_positive_integer(name, value)
        return model, bool(stream)
    embedding_input = body.get("input")
    if embedding_input is None:
        raise InvalidRequest(
            "you must provide an input parameter", param="input", code="missing_required_parameter"
        )
    if (problem := _input_problem(embedding_input)) is not None:
        raise InvalidRequest(f"invalid 'input': {problem}", param="input", code="invalid_type")
    return model, False


def _tokens_problem(tokens: list[Any]) -> str | None:
    if not tokens:
        return "an array of tokens cannot be empty"
    if any(type(token) is not int or token < 0 for token in tokens):
        return "an array of tokens holds integers of 0 or more only"
    return None


def _input_problem(value: Any) -> str | None:
    """Why ``value`` is not an embeddings ``input`` OpenAI takes (a non-empty string, or a
    non-empty array of them, of token integers, or of arrays of token integers); None when it is.
    Checked here so that a malformed input costs no upstream attempt, reservation or ledger row."""
    if isinstance(value, str):
        return None if value else "it cannot be an empty string"
    if not isinstance(value, list):
        return f"expected a string or an array, got {type(value).__name__}"
    if not value:
        return "it cannot be an empty array"
    first = value[0]
    if isinstance(first, str):
        if not all(isinstance(item, str) and item for item in value):
            return "an array of strings holds non-empty strings only"
        return None
    if isinstance(first, list):
        if not all(isinstance(item, list) for item in value):
            return "an array of token arrays holds token arrays only"
        for item in value:
            if (problem := _tokens_problem(item)) is not None:
                return problem
        return None
    return _tokens_problem(value)
