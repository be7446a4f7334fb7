"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902), checked against the RFCs' own examples."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.errors import ApiError
from tests.fakes.patches import json_patch, merge_patch

# RFC 7386 appendix A: (target, patch, result)
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values, st.dictionaries(st.text(max_size=2), json_values, max_size=3))
def test_merge_patch_never_changes_its_input_and_is_idempotent(target: Any, patch: dict[str, Any]) -> None:
    before = repr(target)
    once = merge_patch(target, patch)
    assert repr(target) == before
    assert merge_patch(once, patch) == once


def test_json_patch_rfc6902_operations() -> None:
    document = {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}
    patched = json_patch(
        document,
        [
            {"op": "add", "path": "/foo/1", "value": "qux"},
            {"op": "remove", "path": "/foo/0"},
            {"op": "replace", "path": "/a~1b", "value": 3},
            {"op": "copy", "from": "/m~0n", "path": "/copied"},
            {"op": "move", "from": "/copied", "path": "/moved"},
            {"op": "add", "path": "/foo/-", "value": "end"},
            {"op": "test", "path": "/moved", "value": 2},
        ],
    )
    assert patched == {"foo": ["qux", "baz", "end"], "a/b": 3, "m~n": 2, "moved": 2}
    assert document == {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2}  # the input is left alone


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ([{"op": "test", "path": "/a", "value": 2}], "testing value '/a' failed"),
        ([{"op": "remove", "path": "/missing"}], "path '/missing' does not exist"),
        ([{"op": "replace", "path": "/missing", "value": 1}], "path '/missing' does not exist"),
        ([{"op": "add", "path": "/list/9", "value": 1}], "out of bounds"),
        ([{"op": "add", "path": "/list/01", "value": 1}], "invalid array index"),
    ],
)
def test_json_patch_failures_are_422_naming_the_path(operations: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ApiError) as refused:
        json_patch({"a": 1, "list": [0]}, operations)
    assert refused.value.code == 422 and message in refused.value.message


@pytest.mark.parametrize(
    "operations",
    [
        {"op": "add"},
        [{"path": "/a"}],
        [{"op": "add", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "x", "path": "/a"}],
    ],
)
def test_malformed_json_patches_are_400(operations: Any) -> None:
    with pytest.raises(ApiError) as refused:
        json_patch({"a": 1}, operations)
    assert refused.value.code == 400
