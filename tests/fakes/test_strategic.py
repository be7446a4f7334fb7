"""Strategic merge patch: lists merged by their merge key, kubectl's directives interpreted."""

from __future__ import annotations

from typing import Any

from tests.fakes.strategic import strategic_merge_patch

SERVICE: dict[str, Any] = {
    "metadata": {"name": "web", "finalizers": ["a"], "labels": {"x": "1"}},
    "spec": {
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
        ],
        "selector": {"app": "web"},
    },
}


def test_kubectl_apply_patch_changes_one_port_and_keeps_the_other() -> None:
    # the body kubectl 1.32 sends when one targetPort of two changes (captured with -v=8)
    patch = {
        "spec": {
            "$setElementOrder/ports": [{"port": 80}, {"port": 443}],
            "ports": [{"port": 80, "targetPort": 9090}],
        }
    }
    result = strategic_merge_patch("Service", SERVICE, patch)
    assert result["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"},
        {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
    ]
    assert "$setElementOrder/ports" not in result["spec"]
    assert SERVICE["spec"]["ports"][0]["targetPort"] == 8080  # the original is not modified


def test_set_element_order_reorders_and_delete_directive_removes() -> None:
    patch = {"spec": {"$setElementOrder/ports": [{"port": 443}], "ports": [{"port": 80, "$patch": "delete"}]}}
    result = strategic_merge_patch("Service", SERVICE, patch)
    assert [p["port"] for p in result["spec"]["ports"]] == [443]
    reordered = strategic_merge_patch(
        "Service", SERVICE, {"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}]}}
    )
    assert [p["port"] for p in reordered["spec"]["ports"]] == [443, 80]


def test_new_list_items_are_appended_without_directives() -> None:
    patch = {"spec": {"ports": [{"name": "metrics", "port": 9100, "$retainKeys": ["name", "port"]}]}}
    ports = strategic_merge_patch("Service", SERVICE, patch)["spec"]["ports"]
    assert [p["port"] for p in ports] == [80, 443, 9100]
    assert ports[2] == {"name": "metrics", "port": 9100}


def test_lists_without_a_strategy_are_replaced() -> None:
    ingress = {"spec": {"rules": [{"host": "a"}, {"host": "b"}]}}
    assert strategic_merge_patch("Ingress", ingress, {"spec": {"rules": [{"host": "c"}]}}) == {
        "spec": {"rules": [{"host": "c"}]}
    }
    # Service ports merge by key, but the same list on a kind without that strategy is replaced
    assert strategic_merge_patch("Endpoints", {"ports": [{"port": 1}]}, {"ports": [{"port": 2}]}) == {
        "ports": [{"port": 2}]
    }


def test_finalizers_merge_as_a_set_and_delete_from_primitive_list() -> None:
    added = strategic_merge_patch("Service", SERVICE, {"metadata": {"finalizers": ["b", "a"]}})
    assert added["metadata"]["finalizers"] == ["a", "b"]
    removed = strategic_merge_patch(
        "Service", added, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}
    )
    assert removed["metadata"]["finalizers"] == ["b"]


def test_replace_directives_for_maps_and_lists() -> None:
    result = strategic_merge_patch(
        "Service", SERVICE, {"spec": {"selector": {"$patch": "replace", "tier": "db"}}}
    )
    assert result["spec"]["selector"] == {"tier": "db"}
    ports = [{"$patch": "replace"}, {"port": 8000}]
    assert strategic_merge_patch("Service", SERVICE, {"spec": {"ports": ports}})["spec"]["ports"] == [
        {"port": 8000}
    ]
    assert (
        "labels"
        not in strategic_merge_patch("Service", SERVICE, {"metadata": {"labels": {"$patch": "delete"}}})[
            "metadata"
        ]
    )


def test_containers_merge_by_name_and_their_ports_by_container_port() -> None:
    pod = {
        "spec": {
            "containers": [{"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "name": "http"}]}]
        }
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "app", "image": "a:2", "ports": [{"containerPort": 9090}]},
                {"name": "side", "image": "s"},
            ]
        }
    }
    result = strategic_merge_patch("Pod", pod, patch)
    app, side = result["spec"]["containers"]
    assert app["image"] == "a:2" and [p["containerPort"] for p in app["ports"]] == [80, 9090]
    assert side == {"name": "side", "image": "s"}
