"""The mock provider's request validation: what OpenAI refuses with a 400, the mock refuses too,
in OpenAI's words and shape (``type`` ``invalid_request_error``, a ``param``, a ``code``), so
that tests through the mock see what production will see. Pure: a request in, an error or None.

Covered: ``messages`` (an array of at least one object with a known ``role``; ``content`` a
string, an array of at least one typed part, or null where OpenAI allows it), the sampling
numbers (``temperature`` 0 to 2, ``top_p`` 0 to 1, the penalties -2 to 2), the counts (``max_tokens``,
``max_completion_tokens`` and ``n`` integers of at least 1), ``stream`` a boolean, and for
embeddings ``input`` non-empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Refusal", "check_chat", "check_embeddings"]

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_COUNTS = ("max_tokens", "max_completion_tokens", "n")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An OpenAI-style 400: its message, param and code."""

    message: str
    param: str | None
    code: str


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong_type(param: str, expected: str, value: Any) -> Refusal:
    return Refusal(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param,
        "invalid_type",
    )


def _empty_array(param: str) -> Refusal:
    message = f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
    return Refusal(message + "but got an empty array instead.", param, "empty_array")


def _out_of_range(name: str, kind: str, side: str, sign: str, limit: float, value: Any) -> Refusal:
    message = (
        f"Invalid '{name}': {kind} {side} value. Expected a value {sign} {limit:g}, but got {value} instead."
    )
    code = f"{kind}_{'above_max' if side == 'above maximum' else 'below_min'}_value"
    return Refusal(message, name, code)


def _invalid_value(param: str, value: Any, supported: tuple[str, ...]) -> Refusal:
    shown = ", ".join(repr(v) for v in supported[:-1]) + f", and {supported[-1]!r}"
    return Refusal(f"Invalid value: {value!r}. Supported values are: {shown}.", param, "invalid_value")


def _check_number(name: str, value: Any) -> Refusal | None:
    low, high = _RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _wrong_type(name, "a decimal", value)
    if value < low:
        return _out_of_range(name, "decimal", "below minimum", ">=", low, value)
    if value > high:
        return _out_of_range(name, "decimal", "above maximum", "<=", high, value)
    return None


def _check_count(name: str, value: Any) -> Refusal | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return _wrong_type(name, "an integer", value)
    if value < 1:
        return _out_of_range(name, "integer", "below minimum", ">=", 1, value)
    return None


def _check_content(index: int, message: dict[str, Any]) -> Refusal | None:
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return None
        return Refusal(f"Invalid value for '{param}': expected a string, got null.", param, "invalid_value")
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return _wrong_type(param, "one of a string or array of objects", content)
    if not content:
        return _empty_array(param)
    for position, part in enumerate(content):
        where = f"{param}[{position}]"
        if not isinstance(part, dict):
            return _wrong_type(where, "an object", part)
        kind = part.get("type")
        if kind not in PART_TYPES:
            return _invalid_value(f"{where}.type", kind, PART_TYPES)
        if kind == "text" and not isinstance(part.get("text"), str):
            return Refusal(
                f"Missing required parameter: '{where}.text'.", f"{where}.text", "missing_required_parameter"
            )
    return None


def check_chat(payload: dict[str, Any]) -> Refusal | None:
    """The first thing OpenAI would refuse in a chat completion request, or None."""
    messages = payload.get("messages")
    if messages is None:
        return Refusal("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        return _wrong_type("messages", "an array", messages)
    if not messages:
        return _empty_array("messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return _wrong_type(f"messages[{index}]", "an object", message)
        role = message.get("role")
        if role not in ROLES:
            return _invalid_value(f"messages[{index}].role", role, ROLES)
        refusal = _check_content(index, message)
        if refusal is not None:
            return refusal
    for name in _RANGES:
        if payload.get(name) is not None:
            refusal = _check_number(name, payload[name])
            if refusal is not None:
                return refusal
    for name in _COUNTS:
        if payload.get(name) is not None:
            refusal = _check_count(name, payload[name])
            if refusal is not None:
                return refusal
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return _wrong_type("stream", "a boolean", stream)
    return None


def check_embeddings(payload: dict[str, Any]) -> Refusal | None:
    """The first thing OpenAI would refuse in an embeddings request, or None."""
    raw = payload.get("input")
    if raw is None:
        return Refusal("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if raw == "" or raw == []:
        return Refusal("'$.input' is invalid. Please check the API reference.", "input", "invalid_value")
    return None
