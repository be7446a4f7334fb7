"""HTTP semantics of the fake API server, checked the way a client sees them."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.client import WatchReader, call
from tests.fakes.errors import ApiError

MERGE = "application/merge-patch+json"
SERVICES = "/api/v1/namespaces/default/services"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"


def service(name: str, labels: dict[str, str] | None = None, port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"selector": {"app": name}, "ports": [{"port": port}]},
    }


def ingress(name: str, host: str = "a.example") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ]
        },
    }


def test_create_get_and_second_create_conflicts(server: FakeApiServer) -> None:
    code, created = call(server.url, "POST", SERVICES, service("web"))
    assert code == 201
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) == server.resource_version
    assert created["spec"]["clusterIP"].startswith("10.") and created["spec"]["ports"][0]["targetPort"] == 80

    code, fetched = call(server.url, "GET", f"{SERVICES}/web")
    assert code == 200 and fetched == created

    code, status = call(server.url, "POST", SERVICES, service("web"))
    assert code == 409
    assert status["kind"] == "Status" and status["reason"] == "AlreadyExists"
    assert status["message"] == 'services "web" already exists'


def test_missing_objects_are_404_status_everywhere(server: FakeApiServer) -> None:
    for method in ("GET", "DELETE"):
        code, status = call(server.url, method, f"{SERVICES}/ghost")
        assert (code, status["reason"], status["code"]) == (404, "NotFound", 404), method
        assert status["message"] == 'services "ghost" not found'
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost"}}
    code, status = call(server.url, "PUT", "/api/v1/namespaces/default/configmaps/ghost", configmap)
    assert (code, status["message"]) == (404, 'configmaps "ghost" not found')
    code, status = call(server.url, "PATCH", "/apis/networking.k8s.io/v1/namespaces/x/ingresses/y", {}, MERGE)
    assert code == 404 and status["message"] == 'ingresses.networking.k8s.io "y" not found'
    code, status = call(server.url, "GET", "/api/v1/widgets")
    assert code == 404 and status["kind"] == "Status"


def test_every_write_bumps_one_global_resource_version(server: FakeApiServer) -> None:
    start = server.resource_version
    _, svc = call(server.url, "POST", SERVICES, service("a"))
    _, ing = call(server.url, "POST", "/apis/networking.k8s.io/v1/namespaces/default/ingresses", ingress("i"))
    assert int(svc["metadata"]["resourceVersion"]) == start + 1
    assert int(ing["metadata"]["resourceVersion"]) == start + 2
    code, listed = call(server.url, "GET", "/api/v1/services")
    assert code == 200 and listed["kind"] == "ServiceList"
    assert listed["metadata"]["resourceVersion"] == str(start + 2)


def test_generation_follows_spec_not_status(server: FakeApiServer) -> None:
    path = "/apis/networking.k8s.io/v1/namespaces/default/ingresses"
    _, created = call(server.url, "POST", path, ingress("i"))
    assert created["metadata"]["generation"] == 1
    status = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
    _, after_status = call(server.url, "PATCH", f"{path}/i/status", status, MERGE)
    assert after_status["metadata"]["generation"] == 1
    assert after_status["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.1"}]
    _, after_spec = call(
        server.url,
        "PATCH",
        f"{path}/i",
        {"spec": {"rules": ingress("i", "b.example")["spec"]["rules"]}},
        MERGE,
    )
    assert after_spec["metadata"]["generation"] == 2
    assert after_spec["spec"]["rules"][0]["host"] == "b.example"


def test_status_subresource_and_main_resource_ignore_each_others_part(server: FakeApiServer) -> None:
    _, created = call(server.url, "POST", SERVICES, service("web"))
    sneaky = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}, "spec": {"type": "NodePort"}}
    _, main = call(server.url, "PATCH", f"{SERVICES}/web", sneaky, MERGE)
    assert main["spec"]["type"] == "NodePort" and main["status"] == created["status"]
    _, status = call(
        server.url, "PATCH", f"{SERVICES}/web/status", {**sneaky, "spec": {"type": "ClusterIP"}}, MERGE
    )
    assert status["spec"]["type"] == "NodePort"
    assert status["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.9"}]
    _, put = call(server.url, "PUT", f"{SERVICES}/web", {**status, "status": {}})
    assert put["status"] == status["status"]


def test_stale_put_is_409_conflict_and_unconditional_put_wins(server: FakeApiServer) -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kubegate"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    _, first = call(server.url, "POST", LEASES, lease)
    stale = first["metadata"]["resourceVersion"]
    _, second = call(server.url, "PUT", f"{LEASES}/kubegate", {**first, "spec": {"holderIdentity": "b"}})
    assert second["spec"]["holderIdentity"] == "b"
    code, status = call(server.url, "PUT", f"{LEASES}/kubegate", {**first, "spec": {"holderIdentity": "c"}})
    assert code == 409 and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    assert first["metadata"]["resourceVersion"] == stale
    unconditional = {**lease, "spec": {"holderIdentity": "d"}}
    code, forced = call(server.url, "PUT", f"{LEASES}/kubegate", unconditional)
    assert code == 200 and forced["spec"]["holderIdentity"] == "d"


def test_no_op_update_keeps_the_resource_version(server: FakeApiServer) -> None:
    _, created = call(server.url, "POST", SERVICES, service("web"))
    before = server.resource_version
    _, same = call(server.url, "PUT", f"{SERVICES}/web", created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert server.resource_version == before


def test_label_and_field_selectors(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("a", {"tier": "web", "env": "prod"}))
    call(server.url, "POST", SERVICES, service("b", {"tier": "db"}))
    call(server.url, "POST", "/api/v1/namespaces/kube-system/services", service("c", {"tier": "web"}))

    def names(query: str) -> list[str]:
        code, listed = call(server.url, "GET", f"/api/v1/services?{query}")
        assert code == 200, listed
        return [item["metadata"]["name"] for item in listed["items"]]

    assert names("labelSelector=tier%3Dweb") == ["a", "c"]
    assert names("labelSelector=tier!%3Dweb") == ["b"]
    assert names("labelSelector=tier+in+(db,cache)") == ["b"]
    assert names("labelSelector=tier+notin+(db)") == ["a", "c"]
    assert names("labelSelector=env") == ["a"]
    assert names("labelSelector=!env") == ["b", "c"]
    assert names("labelSelector=tier%3Dweb,env%3Dprod") == ["a"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert names("fieldSelector=metadata.namespace!%3Ddefault") == ["c"]
    code, status = call(server.url, "GET", "/api/v1/services?fieldSelector=spec.type%3DNodePort")
    assert code == 400 and "field label not supported: spec.type" in status["message"]
    code, status = call(server.url, "GET", "/api/v1/services?labelSelector=tier+in+db")
    assert code == 400 and status["reason"] == "BadRequest"


def test_list_items_carry_no_type_but_watch_objects_do(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("web"))
    _, listed = call(server.url, "GET", SERVICES)
    assert "kind" not in listed["items"][0] and listed["apiVersion"] == "v1"
    watch = WatchReader(server.url, f"{SERVICES}?watch=1&timeoutSeconds=1").start()
    (event,) = watch.wait_for(1)
    assert event["object"]["kind"] == "Service" and event["object"]["apiVersion"] == "v1"


def test_watch_replays_after_a_version_then_follows(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("a"))
    since = server.resource_version
    call(server.url, "POST", SERVICES, service("b"))
    call(server.url, "PATCH", f"{SERVICES}/a", {"metadata": {"labels": {"x": "1"}}}, MERGE)
    watch = WatchReader(server.url, f"{SERVICES}?watch=true&resourceVersion={since}").start()
    assert watch.wait_for(2) and watch.summary() == [("ADDED", "b"), ("MODIFIED", "a")]
    call(server.url, "DELETE", f"{SERVICES}/b")
    events = watch.wait_for(3)
    assert watch.summary()[2] == ("DELETED", "b")
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[-1] == server.resource_version
    server.drop_watches()
    assert watch.ended.wait(5) and watch.error is None


def test_watch_without_version_starts_with_synthetic_added(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("a"))
    call(server.url, "POST", SERVICES, service("b"))
    call(server.url, "DELETE", f"{SERVICES}/a")
    for version in ("", "&resourceVersion=0"):
        watch = WatchReader(server.url, f"{SERVICES}?watch=1&timeoutSeconds=1{version}").start()
        watch.wait_for(1)
        assert watch.ended.wait(5)
        assert watch.summary() == [("ADDED", "b")]


def test_watch_from_compacted_version_is_200_with_410_error_event(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("a"))
    old = server.resource_version
    call(server.url, "POST", SERVICES, service("b"))
    server.compact()
    watch = WatchReader(server.url, f"{SERVICES}?watch=1&resourceVersion={old}").start()
    assert watch.ended.wait(5) and watch.error is None
    (event,) = watch.events
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert event["object"]["message"].startswith(f"too old resource version: {old} ")
    # From the current version it works again: the client's relist gives that version.
    _, listed = call(server.url, "GET", SERVICES)
    fresh = WatchReader(
        server.url, f"{SERVICES}?watch=1&resourceVersion={listed['metadata']['resourceVersion']}"
    )
    fresh.start()
    call(server.url, "POST", SERVICES, service("c"))
    assert fresh.wait_for(1) and fresh.summary() == [("ADDED", "c")]
    server.drop_watches()


def test_exact_list_at_an_old_version_and_410_once_compacted(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("a"))
    then = server.resource_version
    call(server.url, "POST", SERVICES, service("b"))
    call(server.url, "DELETE", f"{SERVICES}/a")
    code, listed = call(server.url, "GET", f"{SERVICES}?resourceVersion={then}&resourceVersionMatch=Exact")
    assert code == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    assert listed["metadata"]["resourceVersion"] == str(then)
    server.compact()
    code, status = call(server.url, "GET", f"{SERVICES}?resourceVersion={then}&resourceVersionMatch=Exact")
    assert code == 410 and status["reason"] == "Expired"


def test_mid_stream_expiry_sends_error_event_and_ends(server: FakeApiServer) -> None:
    watch = WatchReader(server.url, f"{SERVICES}?watch=1&resourceVersion={server.resource_version}").start()
    call(server.url, "POST", SERVICES, service("a"))
    watch.wait_for(1)
    server.expire_watches()
    assert watch.ended.wait(5)
    assert [e["type"] for e in watch.changes()] == ["ADDED", "ERROR"]
    assert watch.changes()[1]["object"]["code"] == 410


def test_bookmarks_carry_only_the_current_version(server: FakeApiServer) -> None:
    start = server.resource_version
    path = f"{SERVICES}?watch=1&resourceVersion={start}&allowWatchBookmarks=true&timeoutSeconds=1"
    watch = WatchReader(server.url, path).start()
    call(server.url, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}})
    assert watch.ended.wait(5)
    bookmarks = [e for e in watch.events if e["type"] == "BOOKMARK"]
    assert bookmarks and not watch.changes()  # a ConfigMap is not a Service, but it moves the version
    last = bookmarks[-1]["object"]
    assert last["kind"] == "Service" and set(last["metadata"]) == {"resourceVersion"}
    assert last["metadata"]["resourceVersion"] == str(server.resource_version)


def test_no_bookmarks_unless_asked_and_timeout_ends_stream(server: FakeApiServer) -> None:
    started = time.monotonic()
    watch = WatchReader(server.url, f"{SERVICES}?watch=1&resourceVersion=1&timeoutSeconds=1").start()
    assert watch.ended.wait(5)
    assert 0.9 <= time.monotonic() - started < 3
    assert watch.events == [] and watch.error is None


def test_label_selected_watch_sees_objects_enter_and_leave(server: FakeApiServer) -> None:
    call(server.url, "POST", SERVICES, service("a", {"team": "x"}))
    path = f"{SERVICES}?watch=1&resourceVersion={server.resource_version}&labelSelector=team%3Dx"
    watch = WatchReader(server.url, path).start()
    call(server.url, "PATCH", f"{SERVICES}/a", {"metadata": {"labels": {"team": "y"}}}, MERGE)
    call(server.url, "PATCH", f"{SERVICES}/a", {"metadata": {"labels": {"team": "x"}}}, MERGE)
    watch.wait_for(2)
    assert watch.summary() == [("DELETED", "a"), ("ADDED", "a")]
    server.drop_watches()


def test_a_slow_watcher_does_not_block_writers(server: FakeApiServer) -> None:
    # A client that opens a watch and never reads: writes must still complete promptly.
    host, port = server.url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)))
    idle.sendall(f"GET {SERVICES}?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    deadline = time.monotonic() + 5
    while server.watch_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    for number in range(200):
        server.create(
            {**service(f"s{number}"), "metadata": {"name": f"s{number}", "labels": {"pad": "x" * 60}}}
        )
    assert time.monotonic() - started < 5
    idle.close()


def test_direct_manipulation_tells_watchers(server: FakeApiServer) -> None:
    watch = WatchReader(server.url, f"{SERVICES}?watch=1&resourceVersion={server.resource_version}").start()
    created = server.create(service("web"))
    created["spec"]["ports"] = [{"port": 8080}]
    server.replace(created)
    server.delete("v1", "Service", "default", "web")
    watch.wait_for(3)
    assert watch.summary() == [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    assert server.get("v1", "Service", "default", "web") is None
    with pytest.raises(ApiError) as refused:
        server.delete("v1", "Service", "default", "web")
    assert refused.value.code == 404
    server.drop_watches()


def test_requests_are_recorded(server: FakeApiServer) -> None:
    call(server.url, "GET", "/api/v1/services?limit=500")
    assert ("GET", "/api/v1/services?limit=500") in server.requests


def test_stored_objects_do_not_share_dicts_with_callers(server: FakeApiServer) -> None:
    mine = service("web", {"app": "web"})
    server.create(mine)
    mine["metadata"]["labels"]["app"] = "changed"
    fetched = server.get("v1", "Service", "default", "web")
    assert fetched is not None and fetched["metadata"]["labels"] == {"app": "web"}
    fetched["spec"]["ports"].clear()
    again = server.get("v1", "Service", "default", "web")
    assert again is not None and again["spec"]["ports"][0]["port"] == 80


def test_put_creates_only_the_kinds_kube_creates_on_update(server: FakeApiServer) -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "new"}, "spec": {}}
    code, created = call(server.url, "PUT", f"{LEASES}/new", lease)
    assert code == 201 and created["metadata"]["uid"]
    stale = {**lease, "metadata": {"name": "other", "resourceVersion": "1"}}
    code, status = call(server.url, "PUT", f"{LEASES}/other", stale)
    assert code == 404 and status["reason"] == "NotFound"
    code, status = call(
        server.url, "PUT", "/apis/networking.k8s.io/v1/namespaces/default/ingresses/i", ingress("i")
    )
    assert code == 404


def test_pages_follow_continue_and_show_one_snapshot(server: FakeApiServer) -> None:
    for name in ("a", "b", "c", "d", "e"):
        call(server.url, "POST", SERVICES, service(name))
    code, first = call(server.url, "GET", f"{SERVICES}?limit=2")
    assert code == 200 and [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 3
    snapshot = first["metadata"]["resourceVersion"]
    # writes between pages do not show: every page is cut from the first page's version
    call(server.url, "DELETE", f"{SERVICES}/c")
    call(server.url, "POST", SERVICES, service("bb"))
    names = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        code, page = call(server.url, "GET", f"{SERVICES}?limit=2&continue={token}")
        assert code == 200 and page["metadata"]["resourceVersion"] == snapshot
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["a", "b", "c", "d", "e"]
    code, status = call(
        server.url, "GET", f"{SERVICES}?limit=2&continue={first['metadata']['continue']}&resourceVersion=1"
    )
    assert code == 400 and "not allowed when using continue" in status["message"]
    code, status = call(server.url, "GET", f"{SERVICES}?limit=2&continue=bm90LWpzb24=")
    assert code == 400 and "continue key is not valid" in status["message"]
    server.compact()
    code, status = call(server.url, "GET", f"{SERVICES}?limit=2&continue={first['metadata']['continue']}")
    assert (
        code == 410 and status["reason"] == "Expired" and "continue parameter is too old" in status["message"]
    )
    code, selected = call(server.url, "GET", f"{SERVICES}?limit=1&labelSelector=app")
    assert code == 200 and "remainingItemCount" not in selected["metadata"]
