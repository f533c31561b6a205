"""The front door's limits without a server: JSON depth counting, and the limits as door
options with one home."""

from __future__ import annotations

import json
import random

import pytest

from virnucpro_triton import repository as repo
from virnucpro_triton.door.app import DoorError, door_parser, limits_of
from virnucpro_triton.door.limits import JsonDepth, Limits


def test_json_depth_counts_brackets_outside_strings_in_any_pieces():
    cases = [
        (b"[" * 65, 64, True),
        (b"[" * 64, 64, False),
        (b"[" * 64 + b"]" * 64 + b"[" * 64, 64, False),
        (b'"[[[["' * 100, 1, False),
        (rb'["\\"' + b"[" * 64, 64, True),  # an escaped backslash ends the string
        (rb'["\\\"' + b"[" * 70 + b'"]', 64, False),  # an escaped quote does not
        (b"]" + b"[" * 70, 64, False),  # not JSON: Triton refuses it at the first byte
    ]
    for text, limit, deeper in cases:
        for size in range(1, len(text) + 1):
            depth, over = JsonDepth(limit), False
            for i in range(0, len(text), size):
                over = depth.feed(text[i : i + size]) or over
            assert over == deeper, (text, size)
    rng = random.Random(5)

    def nested(levels: int) -> object:
        if levels == 0 or rng.random() < 0.3:
            return rng.choice(['a"\\[{', "\\\\", '"', "[]", 1.5, "\\u005b"])
        if rng.random() < 0.5:
            return [nested(levels - 1) for _ in range(rng.randrange(3))]
        return {'k\\"[': nested(levels - 1)}

    def depth_of(value: object) -> int:
        children = value if isinstance(value, list) else getattr(value, "values", list)()
        return isinstance(value, list | dict) + max(map(depth_of, children), default=0)

    for _ in range(200):
        value = nested(8)
        text, levels = json.dumps(value).encode(), depth_of(value)
        for size in (1, 3, len(text)):
            for limit, deeper in [(levels, False), (levels - 1, True)][: 1 + (levels > 0)]:
                depth = JsonDepth(limit)
                fed = [depth.feed(text[i : i + size]) for i in range(0, len(text), size)]
                assert any(fed) == deeper, (text, size, limit)


def test_the_limits_are_door_options_with_one_home():
    """The defaults come from door/limits.py (the image, Kubernetes and KServe run the door
    without options); each can be set, and a bad value is one line."""
    options = door_parser().parse_args(["tritonserver", "--model-repository=/m"])
    assert limits_of(options) == Limits()
    assert Limits().max_bytes_in_flight >= repo.MAX_REQUEST_BYTES
    options = door_parser().parse_args(
        ["--max-connections=8", "--header-timeout=2.5", "--max-json-depth=10", "tritonserver"]
    )
    limits = limits_of(options)
    assert (limits.max_connections, limits.header_timeout, limits.max_json_depth) == (8, 2.5, 10)
    assert options.command == ["tritonserver"]
    for bad, message in [
        (["--idle-timeout=0"], "positive number of seconds"),
        (["--body-timeout=nan"], "positive number of seconds"),
        (["--max-connections=-1"], "positive whole number"),
    ]:
        with pytest.raises(DoorError, match=message):
            door_parser().parse_args([*bad, "tritonserver"])
    options = door_parser().parse_args(["--max-bytes-in-flight=1000", "tritonserver"])
    with pytest.raises(DoorError, match="below --max-request-bytes"):
        limits_of(options)
