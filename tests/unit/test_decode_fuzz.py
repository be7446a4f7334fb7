"""Fuzzing: no input, however wrong, makes decoding or loading raise anything but the documented errors."""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubegate.objects.decode import DecodeError, UnknownKind, decode_object
from kubegate.sources.files import Problem, load_paths
from tests.unit.manifests import (
    endpoint_slice,
    endpoints,
    ingress,
    ingress_class,
    node_port_service,
    pod,
    secret,
    service,
)

BASES = [service, node_port_service, endpoints, endpoint_slice, pod, ingress, ingress_class, secret]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        ["", "None", "*", "*.x.com", "/", "127.0.0.1", "::1", "TCP", "http", "Prefix", "0", "-1"]
    ),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


def _paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path into a document (keys and indexes), to pick where to mutate."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid manifest with a few fields replaced, deleted or wrapped in lists."""
    document: dict[str, Any] = draw(st.sampled_from(BASES))()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        parent: Any = document
        for step in path[:-1]:
            parent = parent[step]
        last: Any = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "wrap", "unicode"]))
        if action == "delete":
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif action == "unicode":
            parent[last] = draw(st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=8))
        else:
            parent[last] = draw(json_like)
    return document


def _decodes_or_fails_cleanly(document: object) -> None:
    try:
        decode_object(document)
    except (DecodeError, UnknownKind) as error:
        assert str(error)


@FUZZ
@given(json_like)
def test_arbitrary_json_values(document: object) -> None:
    _decodes_or_fails_cleanly(document)


@FUZZ
@given(st.sampled_from(BASES), st.dictionaries(st.text(max_size=15), json_like, max_size=5))
def test_arbitrary_fields_in_known_kinds(base: Any, extra: dict[str, Any]) -> None:
    document = base()
    document.update({k: v for k, v in extra.items() if k not in ("apiVersion", "kind")})
    _decodes_or_fails_cleanly(document)


@FUZZ
@given(mutated_manifests())
def test_mutated_manifests(document: dict[str, Any]) -> None:
    _decodes_or_fails_cleanly(document)


def _assert_clean(result_problems: tuple[Problem, ...]) -> None:
    for problem in result_problems:
        text = str(problem)
        assert problem.origin.source in text
        assert problem.message


@FUZZ
@given(st.lists(mutated_manifests(), min_size=1, max_size=3))
def test_load_paths_on_mutated_files(documents: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump_all(documents, allow_unicode=True)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        result = load_paths([path])
    _assert_clean(result.problems)
    assert len(result.objects) + len(result.skipped) + len(result.problems) >= 1
    for problem in result.problems:
        assert problem.origin.line >= 1


@FUZZ
@given(st.text(max_size=200))
def test_load_paths_on_arbitrary_text_from_stdin(text: str) -> None:
    _assert_clean(load_paths(["-"], stdin=io.StringIO(text)).problems)


@FUZZ
@given(st.lists(mutated_manifests(), min_size=1, max_size=2), st.integers(min_value=0, max_value=400))
def test_load_paths_on_truncated_yaml(documents: list[dict[str, Any]], cut: int) -> None:
    text = yaml.safe_dump_all(documents)
    _assert_clean(load_paths(["-"], stdin=io.StringIO(text[:cut])).problems)


@pytest.mark.timeout(10)
def test_yaml_alias_bomb_is_a_problem_not_a_hang() -> None:
    lines = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 40)]
    text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  annotations:\n" + "".join(
        f"    {line}\n" for line in lines
    )
    result = load_paths(["-"], stdin=io.StringIO(text))
    [problem] = result.problems
    assert "more than" in problem.message


@pytest.mark.timeout(10)
def test_self_referencing_yaml_is_a_problem() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: &p [*p]\n"
    [problem] = load_paths(["-"], stdin=io.StringIO(text)).problems
    assert problem.field.startswith("spec.ports")
