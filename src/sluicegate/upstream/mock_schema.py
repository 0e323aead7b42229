"""Deterministic values that fit a JSON schema, for the mock provider's tool calls and JSON answers.

`schema_value` covers the part of JSON Schema that models are given in practice: what pydantic
and OpenAI's strict mode emit (objects, arrays, scalars, enums, ``anyOf``, ``allOf`` and local
``$ref``). Every choice is drawn from a seed, so the same schema and seed give the same value.
Not supported: ``pattern``, ``not``, ``if``/``then``, ``patternProperties`` and remote ``$ref``.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

__all__ = ["WORDS", "SchemaError", "schema_value"]

# fmt: off
WORDS = (
    "align", "ambitious", "baseline", "clarity", "customer", "deliver", "drive", "engage", "focus",
    "growth", "impact", "improve", "increase", "initiative", "insight", "key", "launch", "learn", "measure",
    "milestone", "momentum", "objective", "outcome", "pipeline", "priority", "quality", "quarter", "reduce",
    "result", "retention", "revenue", "roadmap", "scale", "ship", "signal", "sprint", "stretch", "target",
    "team", "velocity",
)
# fmt: on
_SMALL_DEPTH = 5  # past this depth, build the smallest value, so that recursive schemas end
_MAX_DEPTH = 48
_TIGHTEST: dict[str, Callable[[Any, Any], Any]] = {  # how allOf merges two bounds: the tighter wins
    **dict.fromkeys(("minimum", "exclusiveMinimum", "minLength", "minItems"), max),
    **dict.fromkeys(("maximum", "exclusiveMaximum", "maxLength", "maxItems"), min),
}


class SchemaError(ValueError):
    """The schema admits no value the generator can build: a contradiction, a bad $ref, endless recursion."""


def schema_value(schema: Mapping[str, Any], seed: bytes) -> Any:
    """A value that fits ``schema``, chosen deterministically from ``seed``."""
    return _Builder(schema, random.Random(int.from_bytes(seed, "big"))).build(schema, 0)


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _merge(into: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in part.items():
        if key == "properties" and isinstance(value, Mapping):
            mine = into.get(key, {})
            into[key] = {**mine, **{n: {"allOf": [mine[n], s]} if n in mine else s for n, s in value.items()}}
        elif key == "required" and isinstance(value, list):
            into[key] = [*into.get(key, []), *value]
        elif key in _TIGHTEST and _number(value) is not None and _number(into.get(key)) is not None:
            into[key] = _TIGHTEST[key](into[key], value)
        else:
            into.setdefault(key, value)
    return into


class _Builder:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def build(self, schema: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaError("the schema recurses without end")
        if schema is False:
            raise SchemaError("the schema `false` admits no value")
        spec = self._flatten(schema if isinstance(schema, Mapping) else {}, 0)
        if "const" in spec:
            return spec["const"]
        if "enum" in spec:
            if not isinstance(spec["enum"], list) or not spec["enum"]:
                raise SchemaError("an empty enum admits no value")
            return self.rng.choice(spec["enum"])
        options = spec.get("anyOf", spec.get("oneOf"))
        if isinstance(options, list) and options:
            return self.build(self._option(options, depth), depth + 1)
        kind = self._kind(spec, depth)
        if kind == "object":
            return self._object(spec, depth)
        if kind == "array":
            return self._array(spec, depth)
        if kind in ("integer", "number"):
            return self._numeric(spec, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None if kind == "null" else self._string(spec, depth)

    def _resolve(self, ref: Any) -> Mapping[str, Any]:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local $ref are supported, not {ref!r}")
        node: Any = self.root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            raise SchemaError(f"$ref {ref!r} points at no schema")
        return node

    def _flatten(self, schema: Mapping[str, Any], hops: int) -> Mapping[str, Any]:
        """Follow $ref and merge allOf, keeping the schema's own keys first."""
        if hops > _MAX_DEPTH:
            raise SchemaError("$ref or allOf loops on itself")
        if "$ref" in schema:
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self._flatten(_merge(rest, self._resolve(schema["$ref"])), hops + 1)
        parts = schema.get("allOf")
        if not isinstance(parts, list):
            return schema
        if False in parts:
            raise SchemaError("allOf holds `false`, which admits no value")
        flat = [self._flatten(part if isinstance(part, Mapping) else {}, hops + 1) for part in parts]
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in flat:
            _merge(merged, part)
        closed = [
            set(p.get("properties") or ()) for p in [schema, *flat] if p.get("additionalProperties") is False
        ]
        if closed:  # each closed part admits only its own properties, whatever the others add
            allowed = set.intersection(*closed)
            merged["properties"] = {k: v for k, v in merged.get("properties", {}).items() if k in allowed}
            merged["additionalProperties"] = False
        return self._flatten(merged, hops + 1)

    def _option(self, options: list[Any], depth: int) -> Any:
        if depth > _SMALL_DEPTH:  # prefer null, which ends a recursive structure
            for option in options:
                if isinstance(option, Mapping) and self._flatten(option, 0).get("type") == "null":
                    return option
        return options[0]

    def _kind(self, spec: Mapping[str, Any], depth: int) -> str:
        kind = spec.get("type")
        if isinstance(kind, list) and kind:
            others = [k for k in kind if k != "null"]
            return "null" if not others or (depth > _SMALL_DEPTH and "null" in kind) else str(others[0])
        if isinstance(kind, str):
            return kind
        if {"properties", "additionalProperties", "required"} & spec.keys():
            return "object"
        if {"items", "prefixItems", "minItems", "maxItems"} & spec.keys():
            return "array"
        if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & spec.keys():
            return "number"
        return "string"

    def _object(self, spec: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = spec.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = spec.get("required")
        required = [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
        small = depth > _SMALL_DEPTH
        names = [name for name in properties if not small or name in required]
        names += [name for name in required if name not in properties]
        extra = spec.get("additionalProperties", True)
        if extra is False and not set(names) <= set(properties):
            raise SchemaError(f"required properties {sorted(set(names) - set(properties))} are not allowed")
        value = {name: self.build(properties.get(name, {}), depth + 1) for name in names}
        if "properties" not in spec and not names and extra is not False and not small:
            # A free-form object, as json_object asks for: a few word keys.
            for key in self.rng.sample(WORDS, self.rng.randint(1, 3)):
                value[key] = self.build(extra, depth + 1)
        return value

    def _array(self, spec: Mapping[str, Any], depth: int) -> list[Any]:
        low, high = int(_number(spec.get("minItems")) or 0), _number(spec.get("maxItems"))
        prefix, items = spec.get("prefixItems", []), spec.get("items", {})
        prefix = prefix if isinstance(prefix, list) else []
        if items is False:
            high = len(prefix) if high is None else min(high, len(prefix))
        if high is not None and low > high:
            raise SchemaError(f"an array cannot hold at least {low} and at most {high} items")
        spread = 2 if depth < 3 else 0  # nested lists stay short, so the value stays readable
        count = low if depth > _SMALL_DEPTH else self.rng.randint(max(low, 1), max(low, 1) + spread)
        count = count if high is None else min(count, int(high))
        values: list[Any] = []
        seen: set[bytes] = set()
        for _ in range(count + 16):  # uniqueItems: retry a few duplicates, then settle
            if len(values) == count:
                break
            value = self.build(prefix[len(values)] if len(values) < len(prefix) else items, depth + 1)
            key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
            if not (spec.get("uniqueItems") is True and key in seen):
                seen.add(key)
                values.append(value)
        return values

    def _numeric(self, spec: Mapping[str, Any], integer: bool) -> int | float:
        low, high = _number(spec.get("minimum")), _number(spec.get("maximum"))
        above, below = _number(spec.get("exclusiveMinimum")), _number(spec.get("exclusiveMaximum"))
        low_open = above is not None and (low is None or above >= low)
        high_open = below is not None and (high is None or below <= high)
        low, high = (above if low_open else low), (below if high_open else high)
        if low is None:
            low = 0 if high is None else high - 100
        if high is None:
            high = low + 100
        step = _number(spec.get("multipleOf"))
        if integer or step:
            step = step if step and step > 0 else 1
            first, last = math.ceil(low / step), math.floor(high / step)
            first += 1 if low_open and first * step <= low else 0
            last -= 1 if high_open and last * step >= high else 0
            if first > last:
                raise SchemaError(f"no multiple of {step} lies between {low} and {high}")
            value = self.rng.randint(first, last) * step
            return int(value) if integer or float(value).is_integer() else value
        if low > high or (low == high and (low_open or high_open)):
            raise SchemaError(f"no number lies between {low} and {high}")
        value = round(low + (high - low) * self.rng.random(), 2)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            value = (low + high) / 2
        return value

    def _string(self, spec: Mapping[str, Any], depth: int) -> str:
        low, high = int(_number(spec.get("minLength")) or 0), _number(spec.get("maxLength"))
        if high is not None and low > high:
            raise SchemaError(f"a string cannot be at least {low} and at most {high} long")
        count = 1 if depth > _SMALL_DEPTH else self.rng.randint(2, 4)
        text = self._formatted(spec.get("format")) or " ".join(self._words(count))
        while len(text) < low:
            text += " " + self._words(1)[0]
        if high is not None and len(text) > high:
            cut = text[: int(high)]
            text = cut.rstrip() if len(cut.rstrip()) >= low else cut
        return text

    def _words(self, count: int) -> list[str]:
        return [self.rng.choice(WORDS) for _ in range(count)]

    def _formatted(self, form: Any) -> str | None:
        rng = self.rng
        if form == "date":
            return f"{rng.randint(2020, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if form == "time":
            return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        if form == "date-time":
            return f"{self._formatted('date')}T{self._formatted('time')}"
        if form == "email":
            return "{}.{}@example.com".format(*self._words(2))
        if form in ("uri", "url"):
            return "https://example.com/{}/{}".format(*self._words(2))
        if form == "uuid":
            return str(uuid.UUID(bytes=rng.randbytes(16), version=4))
        return f"PT{rng.randint(1, 59)}M" if form == "duration" else None
