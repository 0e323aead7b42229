"""The cache's stream helpers: the usage-only event is withheld from a client that did not ask
for it, whatever the spacing of the upstream's JSON."""

from __future__ import annotations

import pytest

from sluicegate.cache.streams import strip_usage

CONTENT = b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}'


@pytest.mark.parametrize(
    "usage_only",
    [
        b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
        b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}',
        b'data: {"id": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}',
    ],
)
def test_the_usage_only_event_is_withheld_however_it_is_spaced(usage_only: bytes) -> None:
    blob = b"\n\n".join([CONTENT, usage_only, b"data: [DONE]", b""])
    assert strip_usage(blob) == b"\n\n".join([CONTENT, b"data: [DONE]", b""])


def test_an_event_with_choices_and_usage_is_kept() -> None:
    both = b'data: {"id": "x", "choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 1}}\n\n'
    assert strip_usage(both) == both
