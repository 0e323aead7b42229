"""Tests for sluicegate.upstream.mock_schema: values that fit a JSON schema, built from a seed."""

from __future__ import annotations

import datetime
import uuid
from typing import Any, Literal

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from sluicegate.upstream.mock_schema import WORDS, SchemaError, schema_value

SEED = b"\x01" * 32


def assert_fits(schema: dict[str, Any], value: Any) -> None:
    """Fail unless ``value`` is valid against ``schema``, formats included."""
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [error.message for error in validator.iter_errors(value)]
    assert not errors, (value, errors)


# Hypothesis: generated schemas, checked with jsonschema


def bounds(low: int, high: int) -> st.SearchStrategy[tuple[int | None, int | None]]:
    """An optional lower and upper bound with lower <= upper."""
    return st.tuples(st.none() | st.integers(low, high), st.none() | st.integers(low, high)).map(
        lambda b: b if None in b or b[0] <= b[1] else (b[1], b[0])
    )


def with_keys(schema: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """``schema`` plus each of ``optional`` that is not None."""
    return {**schema, **{key: value for key, value in optional.items() if value is not None}}


@st.composite
def integer_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """An integer schema whose bounds always leave a multiple of its step inside."""
    step = draw(st.none() | st.integers(1, 7))
    low = draw(st.integers(-1000, 1000))
    high = low + 2 * (step or 1) + draw(st.integers(0, 500))
    exclusive = draw(st.booleans())
    keys = ("exclusiveMinimum", "exclusiveMaximum") if exclusive else ("minimum", "maximum")
    lower, upper = draw(st.sampled_from([(low, None), (None, high), (low, high), (None, None)]))
    schema = with_keys({"type": "integer"}, multipleOf=step)
    return with_keys(schema, **{keys[0]: lower, keys[1]: upper})


@st.composite
def number_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A number schema with bounds that leave room, each inclusive or exclusive."""
    low = draw(st.floats(-1e6, 1e6))
    high = low + draw(st.floats(0.5, 1e4))
    lower = draw(st.sampled_from(["minimum", "exclusiveMinimum", None]))
    upper = draw(st.sampled_from(["maximum", "exclusiveMaximum", None]))
    return {"type": "number", **({lower: low} if lower else {}), **({upper: high} if upper else {})}


@st.composite
def string_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A string schema with a format, or length bounds, or neither."""
    if draw(st.booleans()):
        return {"type": "string", "format": draw(st.sampled_from(["date", "date-time", "email", "uuid"]))}
    low, high = draw(bounds(0, 40))
    return with_keys({"type": "string"}, minLength=low, maxLength=high)


scalars = st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=8)
leaves = (
    integer_schemas()
    | number_schemas()
    | string_schemas()
    | st.sampled_from([{"type": "boolean"}, {"type": "null"}, {}])
    | st.lists(scalars, min_size=1, max_size=5, unique_by=repr).map(lambda options: {"enum": options})
    | scalars.map(lambda value: {"const": value})
    | st.sampled_from(["string", "integer", "boolean"]).map(lambda kind: {"type": [kind, "null"]})
)


def objects(
    children: st.SearchStrategy[dict[str, Any]], names: list[str], closed: bool = True
) -> st.SearchStrategy[dict[str, Any]]:
    """Object schemas over properties from ``names``, some required, closed or not."""
    return st.builds(
        lambda props, required, shut: with_keys(
            {"type": "object", "properties": props, "required": [n for n in props if n in required]},
            additionalProperties=False if shut else None,
        ),
        st.dictionaries(st.sampled_from(names), children, max_size=4),
        st.sets(st.sampled_from(names)),
        st.booleans() if closed else st.just(False),
    )


def containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects, arrays, anyOf and allOf over ``children``; allOf parts are open and disjoint."""
    arrays = st.builds(
        lambda items, counts: with_keys(
            {"type": "array", "items": items}, minItems=counts[0], maxItems=counts[1]
        ),
        children,
        bounds(0, 4),
    )
    any_of = st.lists(children, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    all_of = st.builds(
        lambda a, b: {"allOf": [a, b]},
        objects(children, ["id", "name", "tags"], closed=False),
        objects(children, ["owner", "due", "score"], closed=False),
    )
    return objects(children, ["id", "name", "tags", "owner", "due", "score"]) | arrays | any_of | all_of


schemas = st.recursive(leaves, containers, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(schemas, st.binary(min_size=32, max_size=32))
def test_generated_schemas_are_satisfied(schema: dict[str, Any], seed: bytes) -> None:
    """For any schema from the supported subset, the value validates against it."""
    assert_fits(schema, schema_value(schema, seed))


@settings(max_examples=100, deadline=None)
@given(schemas.filter(lambda s: "anyOf" not in s), st.binary(min_size=32, max_size=32))
def test_refs_are_followed(schema: dict[str, Any], seed: bytes) -> None:
    """A schema behind a $ref in $defs or definitions is satisfied like the schema itself."""
    wrapped = {
        "$defs": {"Item": schema},
        "definitions": {"Other": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}, "more": {"$ref": "#/definitions/Other"}},
        "required": ["item", "more"],
    }
    assert_fits(wrapped, schema_value(wrapped, seed))


@settings(max_examples=100, deadline=None)
@given(schemas)
def test_same_seed_same_value(schema: dict[str, Any]) -> None:
    """The same schema and seed always give the same value."""
    assert schema_value(schema, SEED) == schema_value(schema, SEED)


# pydantic, as the openai SDK and LangChain send it


class Status(pydantic.BaseModel):
    """A nested model with an enum and a date."""

    state: Literal["open", "done"]
    due: datetime.date


class Task(pydantic.BaseModel):
    """A model using most of what pydantic emits: $defs, anyOf null, lists, sets, bounds, formats."""

    id: uuid.UUID
    title: str = pydantic.Field(min_length=3, max_length=30)
    owner_email: str = pydantic.Field(json_schema_extra={"format": "email"})
    score: float = pydantic.Field(gt=0, le=1)
    effort: int = pydantic.Field(ge=1, lt=13, multiple_of=2)
    tags: set[str]
    status: Status | None
    subtasks: list[Task] = []
    parent: Task | None = None
    updated: datetime.datetime


def test_pydantic_model_with_recursion_validates() -> None:
    """A pydantic model's schema, recursive and with $defs, yields data the model accepts."""
    schema = Task.model_json_schema()
    for seed in (SEED, b"\x02" * 32, b"\x03" * 32):
        value = schema_value(schema, seed)
        assert_fits(schema, value)
        Task.model_validate(value)


def test_values_are_realistic_words() -> None:
    """Plain strings are made of the mock's words, and dates and emails look like ones."""
    value = schema_value(Task.model_json_schema(), SEED)
    assert all(word.strip(",.") in WORDS for word in value["title"].split())
    assert value["owner_email"].endswith("@example.com")
    datetime.datetime.fromisoformat(value["updated"])
    uuid.UUID(value["id"])


def test_different_seeds_give_different_values() -> None:
    """The seed changes the value."""
    values = {str(schema_value(Task.model_json_schema(), bytes([i]) * 32)) for i in range(8)}
    assert len(values) == 8


# one rule at a time


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"const": {"a": 1}}, {"a": 1}),
        ({"type": "null"}, None),
        ({"type": ["null"]}, None),
        ({"anyOf": [{"type": "integer", "minimum": 5, "maximum": 5}, {"type": "string"}]}, 5),
        ({"oneOf": [{"const": "first"}, {"const": "second"}]}, "first"),
        ({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 3}, 2),
        ({"type": "integer", "minimum": 10, "maximum": 14, "multipleOf": 7}, 14),
        ({"type": "string", "maxLength": 0}, ""),
        ({"type": "array", "maxItems": 0}, []),
        ({"type": "array", "prefixItems": [{"const": 1}, {"const": "a"}], "items": False}, [1, "a"]),
    ],
)
def test_exact_values(schema: dict[str, Any], expected: Any) -> None:
    """Schemas with one possible value (or a first option) give exactly that value."""
    assert schema_value(schema, SEED) == expected


def test_nullable_type_list_prefers_the_value() -> None:
    """["string", "null"] gives a string, as a model filling the field would."""
    assert isinstance(schema_value({"type": ["null", "string"]}, SEED), str)


def test_all_of_merges_objects_and_tightens_bounds() -> None:
    """allOf joins the properties of its parts and keeps the tighter bound of each pair."""
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ]
    }
    assert set(schema_value(schema, SEED)) == {"a", "b"}
    assert schema_value({"allOf": [{"minimum": 3}, {"minimum": 7, "maximum": 7}]}, SEED) == 7


def test_closed_object_has_only_its_properties() -> None:
    """additionalProperties false adds nothing; a free-form object gets a few word keys."""
    closed = {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False}
    assert set(schema_value(closed, SEED)) == {"x"}
    free = schema_value({"type": "object"}, SEED)
    assert 1 <= len(free) <= 3
    assert set(free) <= set(WORDS)


def test_unique_items_are_unique() -> None:
    """uniqueItems gives distinct items."""
    value = schema_value(
        {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True}, SEED
    )
    assert len(value) == len(set(value)) >= 3


def test_string_lengths_are_honoured() -> None:
    """minLength pads with words and maxLength cuts."""
    long = schema_value({"type": "string", "minLength": 200}, SEED)
    short = schema_value({"type": "string", "minLength": 2, "maxLength": 4}, SEED)
    assert len(long) >= 200
    assert 2 <= len(short) <= 4


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (False, "false"),
        ({"enum": []}, "enum"),
        ({"$ref": "#/$defs/Missing"}, "points at no schema"),
        ({"$ref": "https://example.com/schema.json"}, "local"),
        ({"$ref": "#"}, "loops"),
        ({"type": "integer", "minimum": 3, "maximum": 2}, "between"),
        ({"type": "integer", "minimum": 1, "maximum": 3, "multipleOf": 5}, "multiple"),
        ({"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}, "between"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "string"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "array"),
        (
            {
                "$defs": {
                    "N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}, "required": ["n"]}
                },
                "$ref": "#/$defs/N",
            },
            "recurses",
        ),
    ],
)
def test_unsatisfiable_schemas_raise(schema: Any, words: str) -> None:
    """A schema with no buildable value raises SchemaError saying why."""
    with pytest.raises(SchemaError, match=words):
        schema_value(schema, SEED)


def test_all_of_closed_part_admits_only_its_own_properties() -> None:
    """A part with additionalProperties false keeps the other parts' extra properties out."""
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
            {"properties": {"b": {"type": "string"}}},
        ]
    }
    value = schema_value(schema, SEED)
    assert set(value) == {"a"}
    assert_fits(schema, value)


def test_all_of_joins_a_property_defined_twice() -> None:
    """A property in two parts must fit both of its schemas."""
    schema = {
        "allOf": [
            {"properties": {"n": {"type": "integer", "minimum": 5}}, "required": ["n"]},
            {"properties": {"n": {"maximum": 5}}},
        ]
    }
    assert schema_value(schema, SEED) == {"n": 5}
