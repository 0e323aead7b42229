"""Converting a chat answer between its two forms: one JSON body, and a stream of SSE events.

A stored stream answers a plain request with the body assembled from its chunks; a stored
plain answer answers a streamed request with chunks synthesised from its message.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..calls import Usage

__all__ = ["DONE", "assemble", "content_events", "synthesise", "usage_event", "usage_object"]

DONE = b"data: [DONE]\n\n"
_WORDS_PER_CHUNK = 4
# The answer's own fields, besides its choices and usage, that both forms carry; the last ones
# only when the upstream sent them.
_OPTIONAL_HEAD = ("system_fingerprint", "service_tier")
_HEAD = ("id", "created", "model", *_OPTIONAL_HEAD)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _parse(event: bytes) -> dict[str, Any] | None:
    line = event.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def content_events(data: bytes) -> tuple[list[bytes], bool, dict[str, Any] | None]:
    """Split relayed SSE bytes into events, dropping ``[DONE]`` and usage-only events.

    Returns the kept events, whether ``[DONE]`` was seen, and the ``usage`` object of the last
    usage-only event (as the upstream sent it, token details and all), if there was one.
    """
    kept: list[bytes] = []
    done = False
    usage = None
    for raw in data.split(b"\n\n"):
        event = raw.strip()
        if not event:
            continue
        if event == b"data: [DONE]" or event == b"data:[DONE]":
            done = True
            continue
        if b'"usage"' in event:
            payload = _parse(event)
            if payload is not None and payload.get("usage") and not payload.get("choices"):
                if isinstance(payload["usage"], dict):
                    usage = payload["usage"]
                continue
        kept.append(event + b"\n\n")
    return kept, done, usage


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object for ``usage``, with its token details when it has any."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens or usage.reasoning_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def usage_object(payload: Any, usage: Usage) -> dict[str, Any]:
    """The ``usage`` object of a stored answer (``payload``, its parsed body): the one it
    carries (the upstream's own, with every token detail it sent), else one made from ``usage``."""
    found = payload.get("usage") if isinstance(payload, dict) else None
    return found if isinstance(found, dict) else usage_json(usage)


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", 0)
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


def assemble(events: tuple[bytes, ...] | list[bytes], usage: dict[str, Any] | None) -> bytes:
    """The ``chat.completion`` body that the streamed ``events`` add up to, with ``usage`` (the
    stream's usage object) as its own."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    tools: dict[int, dict[int, dict[str, Any]]] = {}
    for event in events:
        chunk = _parse(event)
        if chunk is None:
            continue
        for name in _HEAD:
            if name in chunk and name not in head:
                head[name] = chunk[name]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = choices.setdefault(index, {"role": "assistant", "content": None, "refusal": None})
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):  # "" too: an empty answer is not a null one
                state["content"] = (state["content"] or "") + delta["content"]
            if delta.get("refusal"):
                state["refusal"] = (state["refusal"] or "") + delta["refusal"]
            for call in delta.get("tool_calls") or ():
                _merge_tool_call(tools.setdefault(index, {}), call)
            function = delta.get("function_call")
            if isinstance(function, dict):  # the older form of a tool call
                held_call = state.setdefault("function_call", {"name": "", "arguments": ""})
                for part in ("name", "arguments"):
                    if isinstance(function.get(part), str):
                        held_call[part] += function[part]
            if isinstance(delta.get("annotations"), list):  # citations, say
                state.setdefault("annotations", []).extend(delta["annotations"])
            audio = delta.get("audio")
            if isinstance(audio, dict):  # a spoken answer: its id, then its data and transcript in parts
                held_audio = state.setdefault("audio", {})
                for part, value in audio.items():
                    if part in ("data", "transcript") and isinstance(value, str):
                        held_audio[part] = held_audio.get(part, "") + value
                    else:
                        held_audio[part] = value
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):  # each chunk's tokens, in order
                held = state.setdefault("logprobs", {"content": None, "refusal": None})
                for part in ("content", "refusal"):
                    if isinstance(logprobs.get(part), list):
                        held[part] = (held[part] or []) + logprobs[part]
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]
    out_choices = []
    for index in sorted(choices):
        state = choices[index]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": state["content"],
            "refusal": state["refusal"],
        }
        if index in tools:
            message["tool_calls"] = [tools[index][i] for i in sorted(tools[index])]
        for extra in ("function_call", "annotations", "audio"):
            if extra in state:
                message[extra] = state[extra]
        out_choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": state.get("logprobs"),
                "finish_reason": state.get("finish_reason"),
            }
        )
    body: dict[str, Any] = {
        "id": head.get("id", "chatcmpl-sluicegate"),
        "object": "chat.completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": out_choices,
    }
    if usage is not None:
        body["usage"] = usage
    for name in _OPTIONAL_HEAD:
        if name in head:
            body[name] = head[name]
    return orjson.dumps(body)


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [
        (" " if i else "") + " ".join(words[i : i + _WORDS_PER_CHUNK])
        for i in range(0, len(words), _WORDS_PER_CHUNK)
    ]


def _chunk_base(payload: dict[str, Any]) -> dict[str, Any]:
    """The fields every chunk of the answer ``payload`` repeats."""
    base = {
        "id": payload.get("id"),
        "object": "chat.completion.chunk",
        "created": payload.get("created"),
        "model": payload.get("model"),
    }
    for name in _OPTIONAL_HEAD:
        if name in payload:
            base[name] = payload[name]
    return base


def synthesise(body: bytes) -> tuple[bytes, ...]:
    """The ``chat.completion.chunk`` events for a stored plain ``chat.completion`` body. With
    ``logprobs``, a chunk per token, carrying its own; otherwise a chunk every few words."""
    payload = orjson.loads(body)
    base = _chunk_base(payload)
    events: list[bytes] = []
    for choice in payload.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}

        def chunk(
            delta: dict[str, Any], finish: str | None = None, index: int = index, logprobs: Any = None
        ) -> bytes:
            one = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return _event({**base, "choices": [one]})

        content = message.get("content")
        # As OpenAI starts a stream: an empty content, or none when the answer is a tool call.
        first = "" if isinstance(content, str) else None
        events.append(chunk({"role": "assistant", "content": first, "refusal": None}))
        tokens = _logprob_tokens(choice.get("logprobs"), content)
        if tokens is not None:
            events.extend(chunk({"content": t["token"]}, logprobs={"content": [t]}) for t in tokens)
        elif content:
            events.extend(chunk({"content": piece}) for piece in _pieces(content))
        for position, call in enumerate(message.get("tool_calls") or ()):
            events.append(chunk({"tool_calls": [{"index": position, **call}]}))
        if isinstance(message.get("function_call"), dict):
            events.append(chunk({"function_call": message["function_call"]}))
        if message.get("annotations"):
            events.append(chunk({"annotations": message["annotations"]}))
        if isinstance(message.get("audio"), dict):
            events.append(chunk({"audio": message["audio"]}))
        events.append(chunk({}, choice.get("finish_reason")))
    return tuple(events)


def _logprob_tokens(logprobs: Any, content: Any) -> list[dict[str, Any]] | None:
    """The content's tokens with their logprobs, when they spell out the content exactly."""
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list) or not tokens or not isinstance(content, str):
        return None
    if not all(isinstance(t, dict) and isinstance(t.get("token"), str) for t in tokens):
        return None
    return tokens if "".join(t["token"] for t in tokens) == content else None


def usage_event(body: bytes, usage: Usage) -> bytes:
    """The usage-only chunk a client that asked for ``include_usage`` gets last: the stored
    answer's own usage object (`usage_object`)."""
    payload = orjson.loads(body)
    return _event({**_chunk_base(payload), "choices": [], "usage": usage_object(payload, usage)})
