"""What the mock assistant says to a chat request: prose, JSON content, or a call to a tool.

`plan_turn` reads ``tools``, ``tool_choice`` and ``response_format`` the way a model that supports
them does, and builds tool arguments and JSON answers with `mock_schema`, seeded by the prompt.
`Turn` then shapes the answer as an OpenAI message or as stream deltas. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .mock_schema import WORDS, SchemaError, schema_value

__all__ = ["MockRequestError", "Turn", "digest", "mock_answer", "plan_turn"]

_ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
_NO_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


class MockRequestError(ValueError):
    """The request asks for something no model could answer; the mock turns it into a 400."""


def digest(text: str) -> bytes:
    """A 32-byte digest of ``text``: the seed of everything the mock derives from a prompt."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).digest()


def mock_answer(messages: list[Any], words: int | None = None) -> str:
    """The deterministic answer the mock gives to ``messages``."""
    seed = digest(orjson.dumps(messages).decode())
    count = words or 12 + seed[0] % 24
    picked = [WORDS[(seed[(i % 31) + 1] + 7 * i) % len(WORDS)] for i in range(count)]
    picked[0] = picked[0].capitalize()
    return " ".join(picked) + "."


@dataclass(frozen=True, slots=True)
class Turn:
    """One assistant answer: prose, JSON content, or a tool call whose arguments are ``text``."""

    kind: Literal["prose", "json", "tool"]
    text: str
    tool_name: str = ""
    call_id: str = ""

    @property
    def pieces(self) -> list[str]:
        """The text in token-sized pieces: a word each for prose, four characters each for JSON."""
        if self.kind == "prose":
            words = self.text.split(" ")
            return words[:1] + [" " + word for word in words[1:]]
        return [self.text[i : i + 4] for i in range(0, len(self.text), 4)]

    @property
    def finish_reason(self) -> str:
        """The finish reason when the whole answer is sent."""
        return "tool_calls" if self.kind == "tool" else "stop"

    def message(self, text: str) -> dict[str, Any]:
        """The chat.completion message carrying ``text``, a whole or cut answer."""
        if self.kind != "tool":
            return {"role": "assistant", "content": text, "refusal": None}
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [self._call(text)]}

    def first_delta(self) -> dict[str, Any]:
        """The delta of the first stream chunk: the role, and for a tool call its id and name."""
        if self.kind != "tool":
            return {"role": "assistant", "content": ""}
        return {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **self._call("")}]}

    def delta(self, piece: str) -> dict[str, Any]:
        """The delta of a stream chunk carrying ``piece`` of the text."""
        if self.kind != "tool":
            return {"content": piece}
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}

    def _call(self, arguments: str) -> dict[str, Any]:
        function = {"name": self.tool_name, "arguments": arguments}
        return {"id": self.call_id, "type": "function", "function": function}


def plan_turn(payload: Mapping[str, Any], answer_words: int | None = None) -> Turn:
    """What the mock answers to a chat request whose ``messages`` are already checked.

    A tool offered and chosen is called, with arguments that fit its ``parameters``; otherwise a
    ``response_format`` asking for JSON gets JSON; otherwise the answer is prose.
    """
    messages = payload["messages"]
    seed = digest(orjson.dumps(messages).decode())
    tool = _chosen_tool(payload, messages)
    if tool is not None:
        name, parameters = tool
        call_id = "call_" + seed.hex()[-24:]
        return Turn("tool", _json(parameters, seed, f"the parameters of tool {name!r}"), name, call_id)
    schema = _response_schema(payload.get("response_format"))
    if schema is not None:
        return Turn("json", _json(schema, seed, "response_format"))
    return Turn("prose", mock_answer(messages, answer_words))


def _json(schema: Mapping[str, Any], seed: bytes, where: str) -> str:
    try:
        return orjson.dumps(schema_value(schema, seed)).decode()
    except (SchemaError, orjson.JSONEncodeError) as exc:
        raise MockRequestError(f"{where}: the mock cannot build a value for this schema ({exc})") from exc


def _offered_tools(tools: Any) -> dict[str, Mapping[str, Any]]:
    if not isinstance(tools, list):
        raise MockRequestError("tools must be a list")
    offered: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise MockRequestError('each tool must be {"type": "function", "function": {...}}')
        name, parameters = function.get("name"), function.get("parameters", _NO_PARAMETERS)
        if not isinstance(name, str) or not name or not isinstance(parameters, dict):
            raise MockRequestError("each function tool needs a name, and parameters that are a JSON schema")
        offered[name] = parameters
    return offered


def _chosen_tool(payload: Mapping[str, Any], messages: list[Any]) -> tuple[str, Mapping[str, Any]] | None:
    if payload.get("tools") is None:
        return None
    offered = _offered_tools(payload["tools"])
    choice = payload.get("tool_choice") or "auto"
    if not offered or choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str) or name not in offered:
            raise MockRequestError(f"tool_choice names no tool offered in tools: {choice!r}")
        return name, offered[name]
    if choice not in ("auto", "required"):
        raise MockRequestError(
            f"tool_choice must be 'none', 'auto', 'required' or a function, not {choice!r}"
        )
    last = messages[-1]
    if choice == "auto" and isinstance(last, dict) and last.get("role") == "tool":
        return None  # with the tool's result in hand, a model answers the user
    name = next(iter(offered))
    return name, offered[name]


def _response_schema(response_format: Any) -> Mapping[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return _ANY_OBJECT
    if kind != "json_schema":
        raise MockRequestError("response_format type must be 'text', 'json_object' or 'json_schema'")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise MockRequestError("response_format json_schema needs a name and a schema")
    schema = spec.get("schema", _ANY_OBJECT)
    if not isinstance(schema, dict):
        raise MockRequestError("response_format json_schema.schema must be a JSON schema object")
    return schema
