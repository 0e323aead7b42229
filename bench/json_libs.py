"""The JSON work of one request with each candidate library.

Parses a chat request, re-serialises it, and parses the upstream's answer. msgspec is measured
when it is installed (``pip install msgspec``). Run: ``.venv/bin/python bench/json_libs.py``.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Any

import orjson

REQUEST = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You write OKRs."},'
    b'{"role":"user","content":"Suggest three OKRs for a sales team in Q3, with key results that can be '
    b'measured weekly."}],"temperature":0.3,"max_tokens":400}'
)
ANSWER = (
    b'{"id":"chatcmpl-mock-1d8489106f6f39a880c78a30","object":"chat.completion","created":1795478143,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Increase '
    b'priority revenue increase milestone impact learn key ambitious team align result customer.",'
    b'"refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":16,'
    b'"completion_tokens":17,"total_tokens":33},"system_fingerprint":"fp_sluicegate_mock"}'
)
Codec = tuple[Callable[[bytes], Any], Callable[[Any], bytes]]


def codecs() -> dict[str, Codec]:
    found: dict[str, Codec] = {
        "json": (json.loads, lambda value: json.dumps(value).encode()),
        "orjson": (orjson.loads, orjson.dumps),
    }
    try:
        import msgspec  # an optional candidate, not a dependency
    except ImportError:
        return found
    found["msgspec"] = (msgspec.json.Decoder().decode, msgspec.json.Encoder().encode)
    return found


def main() -> None:
    rounds = 100_000
    for name, (loads, dumps) in codecs().items():

        def work(loads: Callable[[bytes], Any] = loads, dumps: Callable[[Any], bytes] = dumps) -> None:
            body = loads(REQUEST)
            body["model"] = "gpt-4o-mini"
            dumps(body)
            loads(ANSWER)

        best = min(timeit.repeat(work, number=rounds, repeat=5)) / rounds
        print(f"{name:8s} {best * 1e6:6.2f} us per request")


if __name__ == "__main__":
    main()
