"""Properties of the fake's history: what a client rebuilds from list + watch equals the server's state."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.cluster import Cluster, Watch
from tests.fakes.errors import ApiError
from tests.fakes.patches import merge_patch
from tests.fakes.resources import BY_KIND
from tests.fakes.selectors import parse_label_selector

CONFIGMAP = BY_KIND[("v1", "ConfigMap")]
SECRET = BY_KIND[("v1", "Secret")]

names = st.sampled_from(["a", "b", "c", "d"])
namespaces = st.sampled_from(["default", "other"])
teams = st.sampled_from(["x", "y"])
operations = st.lists(
    st.tuples(st.sampled_from(["put", "delete", "label", "secret"]), namespaces, names, teams), max_size=30
)


def apply(cluster: Cluster, operation: tuple[str, str, str, str]) -> None:
    verb, namespace, name, team = operation
    body: dict[str, Any] = {"metadata": {"name": name, "labels": {"team": team}}, "data": {"v": verb + team}}
    try:
        if verb == "put":
            try:
                cluster.create(CONFIGMAP, namespace, body)
            except ApiError:
                cluster.update(CONFIGMAP, namespace, name, body, status=False)
        elif verb == "delete":
            cluster.delete(CONFIGMAP, namespace, name)
        elif verb == "label":
            relabel = {"metadata": {"labels": {"team": team}}}
            cluster.modify(CONFIGMAP, namespace, name, lambda o: merge_patch(o, relabel), status=False)
        else:
            cluster.create(SECRET, namespace, body)  # another kind: moves the version, not the ConfigMaps
    except ApiError as error:
        assert error.code in (404, 409)


def state(items: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {
        (i["metadata"]["namespace"], i["metadata"]["name"]): i["metadata"]["resourceVersion"] for i in items
    }


@settings(max_examples=150, deadline=None)
@given(operations, operations, st.sampled_from([None, "default"]), st.sampled_from(["", "team=x", "team!=x"]))
def test_list_then_watch_from_its_version_rebuilds_the_final_state(
    before: list[Any], after: list[Any], namespace: str | None, selector: str
) -> None:
    cluster = Cluster()
    labels = parse_label_selector(selector)
    for operation in before:
        apply(cluster, operation)
    version, items = cluster.list_objects(CONFIGMAP, namespace, labels)
    cache = state(items)
    for operation in after:
        apply(cluster, operation)
    watch = Watch(CONFIGMAP, namespace, labels, ())
    last = version
    for event in cluster.open_watch(watch, version):
        meta = event.object["metadata"]
        key = (meta["namespace"], meta["name"])
        assert event.resource_version > last  # strictly in order, nothing replayed twice
        last = event.resource_version
        if event.type == "DELETED":
            assert key in cache, event
            del cache[key]
        else:
            assert (key in cache) == (event.type == "MODIFIED"), event
            cache[key] = meta["resourceVersion"]
    cluster.close_watch(watch)
    assert cache == state(cluster.list_objects(CONFIGMAP, namespace, labels)[1])


@settings(max_examples=100, deadline=None)
@given(operations, operations)
def test_exact_list_at_any_past_version_is_the_state_then(before: list[Any], after: list[Any]) -> None:
    cluster = Cluster()
    for operation in before:
        apply(cluster, operation)
    version, then = cluster.list_objects(CONFIGMAP, None)
    for operation in after:
        apply(cluster, operation)
    assert cluster.list_objects(CONFIGMAP, None, at=version) == (version, then)
