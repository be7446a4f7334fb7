"""More of the fake API server's HTTP semantics: patch flavours, finalizers, discovery, bad requests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx2
import pytest

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.client import WatchReader, call

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
SERVICES = "/api/v1/namespaces/default/services"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_strategic_merge_patch_behaves_as_merge_patch(server: FakeApiServer) -> None:
    call(server.url, "POST", CONFIGMAPS, configmap("c", a="1", b="2"))
    code, patched = call(server.url, "PATCH", f"{CONFIGMAPS}/c", {"data": {"a": None, "c": "3"}}, STRATEGIC)
    assert code == 200 and patched["data"] == {"b": "2", "c": "3"}


def test_json_patch_on_the_object_and_its_failure(server: FakeApiServer) -> None:
    call(server.url, "POST", CONFIGMAPS, configmap("c", a="1"))
    operations = [
        {"op": "replace", "path": "/data/a", "value": "9"},
        {"op": "add", "path": "/data/b", "value": "2"},
    ]
    code, patched = call(server.url, "PATCH", f"{CONFIGMAPS}/c", operations, JSON_PATCH)
    assert code == 200 and patched["data"] == {"a": "9", "b": "2"}
    code, status = call(
        server.url, "PATCH", f"{CONFIGMAPS}/c", [{"op": "test", "path": "/data/a", "value": "1"}], JSON_PATCH
    )
    assert code == 422 and status["kind"] == "Status"


def test_patch_with_resource_version_is_a_precondition(server: FakeApiServer) -> None:
    _, created = call(server.url, "POST", CONFIGMAPS, configmap("c", a="1"))
    stale = created["metadata"]["resourceVersion"]
    call(server.url, "PATCH", f"{CONFIGMAPS}/c", {"data": {"a": "2"}}, MERGE)
    code, status = call(
        server.url,
        "PATCH",
        f"{CONFIGMAPS}/c",
        {"metadata": {"resourceVersion": stale}, "data": {"a": "3"}},
        MERGE,
    )
    assert code == 409 and status["reason"] == "Conflict"


def test_unknown_patch_type_is_415(server: FakeApiServer) -> None:
    call(server.url, "POST", CONFIGMAPS, configmap("c"))
    code, status = call(server.url, "PATCH", f"{CONFIGMAPS}/c", {"data": {}}, "text/plain")
    assert code == 415 and status["reason"] == "UnsupportedMediaType"


def test_server_side_apply_creates_then_merges_and_needs_a_field_manager(server: FakeApiServer) -> None:
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: '1'\n"
    code, status = call(server.url, "PATCH", f"{CONFIGMAPS}/c", body, APPLY)
    assert code == 400 and "fieldManager" in status["message"]
    code, created = call(server.url, "PATCH", f"{CONFIGMAPS}/c?fieldManager=kubegate", body, APPLY)
    assert code == 201 and created["data"] == {"a": "1"}
    code, merged = call(
        server.url,
        "PATCH",
        f"{CONFIGMAPS}/c?fieldManager=kubegate",
        body.replace(b"a: '1'", b"b: '2'"),
        APPLY,
    )
    assert code == 200 and merged["data"] == {"a": "1", "b": "2"}


def test_generate_name(server: FakeApiServer) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}}
    names = {call(server.url, "POST", CONFIGMAPS, body)[1]["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5 and all(name.startswith("cfg-") and len(name) == 9 for name in names)
    code, status = call(server.url, "POST", CONFIGMAPS, {"metadata": {}})
    assert code == 422 and "name or generateName is required" in status["message"]


def test_finalizers_hold_deletion_until_cleared(server: FakeApiServer) -> None:
    body = configmap("c")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    call(server.url, "POST", CONFIGMAPS, body)
    watch = WatchReader(server.url, f"{CONFIGMAPS}?watch=1&resourceVersion={server.resource_version}").start()
    code, marked = call(server.url, "DELETE", f"{CONFIGMAPS}/c")
    assert code == 202 and marked["metadata"]["deletionTimestamp"]
    assert server.get("v1", "ConfigMap", "default", "c") is not None
    code, _ = call(server.url, "PATCH", f"{CONFIGMAPS}/c", {"metadata": {"finalizers": None}}, MERGE)
    assert code == 200
    assert server.get("v1", "ConfigMap", "default", "c") is None
    watch.wait_for(2)
    assert watch.summary() == [("MODIFIED", "c"), ("DELETED", "c")]
    server.drop_watches()


def test_delete_preconditions(server: FakeApiServer) -> None:
    _, created = call(server.url, "POST", CONFIGMAPS, configmap("c"))
    options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-it"}}
    code, status = call(server.url, "DELETE", f"{CONFIGMAPS}/c", options)
    assert code == 409 and "Precondition failed: UID in precondition: not-it" in status["message"]
    options["preconditions"] = {
        "uid": created["metadata"]["uid"],
        "resourceVersion": created["metadata"]["resourceVersion"],
    }
    code, deleted = call(server.url, "DELETE", f"{CONFIGMAPS}/c", options)
    assert code == 200 and deleted["metadata"]["name"] == "c"
    code, status = call(server.url, "DELETE", f"{CONFIGMAPS}/x", b"{not json")
    assert code == 400


def test_delete_collection_by_label(server: FakeApiServer) -> None:
    for name, team in (("a", "x"), ("b", "y"), ("c", "x")):
        call(
            server.url,
            "POST",
            CONFIGMAPS,
            {**configmap(name), "metadata": {"name": name, "labels": {"team": team}}},
        )
    code, deleted = call(server.url, "DELETE", f"{CONFIGMAPS}?labelSelector=team%3Dx")
    assert code == 200 and [i["metadata"]["name"] for i in deleted["items"]] == ["a", "c"]
    assert [o["metadata"]["name"] for o in server.objects("v1", "ConfigMap")] == ["b"]


def test_cluster_scoped_paths(server: FakeApiServer) -> None:
    ingress_class = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "kubegate", "namespace": "ignored"},
        "spec": {"controller": "example.com/kubegate"},
    }
    code, created = call(server.url, "POST", "/apis/networking.k8s.io/v1/ingressclasses", ingress_class)
    assert code == 201 and "namespace" not in created["metadata"]
    code, _ = call(server.url, "GET", "/apis/networking.k8s.io/v1/ingressclasses/kubegate")
    assert code == 200
    code, _ = call(server.url, "GET", "/apis/networking.k8s.io/v1/namespaces/default/ingressclasses/kubegate")
    assert code == 404
    code, namespaces = call(server.url, "GET", "/api/v1/namespaces")
    assert [n["metadata"]["name"] for n in namespaces["items"]] == [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]
    code, namespace = call(server.url, "GET", "/api/v1/namespaces/default")
    assert namespace["status"] == {"phase": "Active"}
    assert namespace["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default"}


def test_bad_requests_name_what_is_wrong(server: FakeApiServer) -> None:
    code, status = call(server.url, "POST", CONFIGMAPS, b"{")
    assert code == 400 and "not valid JSON" in status["message"]
    code, status = call(
        server.url, "POST", CONFIGMAPS, {"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "c"}}
    )
    assert code == 400 and "does not match the expected API version (v1)" in status["message"]
    code, status = call(
        server.url, "POST", CONFIGMAPS, {**configmap("c"), "metadata": {"name": "c", "namespace": "other"}}
    )
    assert code == 400 and "namespace of the provided object does not match" in status["message"]
    call(server.url, "POST", CONFIGMAPS, configmap("c"))
    code, status = call(server.url, "PUT", f"{CONFIGMAPS}/c", configmap("d"))
    assert code == 400 and "does not match the name on the URL" in status["message"]
    code, status = call(server.url, "POST", CONFIGMAPS, configmap("Not_Valid"))
    assert code == 422 and status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    code, status = call(
        server.url,
        "POST",
        SERVICES,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}},
    )
    assert code == 422 and "spec.ports: Required value" in status["message"]
    code, status = call(server.url, "GET", f"{CONFIGMAPS}?watch=1&resourceVersion=abc")
    assert code == 400
    code, status = call(server.url, "GET", f"{CONFIGMAPS}?watch=1&timeoutSeconds=soon")
    assert code == 400
    code, status = call(server.url, "POST", f"{CONFIGMAPS}?dryRun=All", configmap("e"))
    assert code == 400 and "dryRun" in status["message"]
    code, status = call(server.url, "POST", "/api/v1/services", {"metadata": {"name": "s"}})
    assert code == 405


def test_discovery_documents(server: FakeApiServer) -> None:
    _, api = call(server.url, "GET", "/api")
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    _, groups = call(server.url, "GET", "/apis")
    names = {group["name"] for group in groups["groups"]}
    assert {"networking.k8s.io", "discovery.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= names
    _, core = call(server.url, "GET", "/api/v1")
    by_name = {entry["name"]: entry for entry in core["resources"]}
    assert by_name["services"]["shortNames"] == ["svc"] and by_name["services"]["namespaced"] is True
    assert "services/status" in by_name and "namespaces/status" in by_name
    assert by_name["nodes"]["namespaced"] is False and "watch" in by_name["endpoints"]["verbs"]
    _, networking = call(server.url, "GET", "/apis/networking.k8s.io/v1")
    kinds = {entry["name"]: entry["kind"] for entry in networking["resources"]}
    assert kinds == {"ingresses": "Ingress", "ingresses/status": "Ingress", "ingressclasses": "IngressClass"}
    _, version = call(server.url, "GET", "/version")
    assert version["major"] == "1"
    code, _ = call(server.url, "GET", "/apis/example.com/v1")
    assert code == 404


def test_watch_on_one_object_by_field_selector(server: FakeApiServer) -> None:
    call(
        server.url,
        "POST",
        LEASES,
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"}},
    )
    call(
        server.url,
        "POST",
        LEASES,
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "b"}},
    )
    watch = WatchReader(server.url, f"{LEASES}?watch=1&fieldSelector=metadata.name%3Db").start()
    call(server.url, "PATCH", f"{LEASES}/a", {"spec": {"holderIdentity": "x"}}, MERGE)
    call(server.url, "PATCH", f"{LEASES}/b", {"spec": {"holderIdentity": "y"}}, MERGE)
    watch.wait_for(2)
    assert watch.summary() == [("ADDED", "b"), ("MODIFIED", "b")]
    server.drop_watches()


def test_send_initial_events_ends_with_the_marked_bookmark(server: FakeApiServer) -> None:
    call(server.url, "POST", CONFIGMAPS, configmap("a"))
    query = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    path = f"{CONFIGMAPS}?{query}"
    watch = WatchReader(server.url, path).start()
    watch.wait_for(1)
    deadline = time.monotonic() + 5
    while len(watch.events) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    first, marker = watch.events[:2]
    assert first["type"] == "ADDED" and marker["type"] == "BOOKMARK"
    assert marker["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    server.drop_watches()


def test_abrupt_drop_cuts_the_stream_and_watch_from_the_future_is_504(server: FakeApiServer) -> None:
    path = f"{CONFIGMAPS}?watch=1&resourceVersion={server.resource_version}"
    with httpx2.Client(base_url=server.url, timeout=5) as client, client.stream("GET", path) as response:
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while server.watch_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.drop_watches(abrupt=True)
        # No final chunk: the client sees a broken stream, not a clean end.
        with pytest.raises(httpx2.RemoteProtocolError):
            for _ in response.iter_lines():
                pass
    code, status = call(
        server.url, "GET", f"{CONFIGMAPS}?watch=1&resourceVersion={server.resource_version + 10}"
    )
    assert code == 504 and "Too large resource version" in status["message"]


def test_abandoned_watches_free_their_slot(server: FakeApiServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(f"GET {CONFIGMAPS}?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    deadline = time.monotonic() + 5
    while server.watch_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.watch_count() == 1
    client.close()
    while server.watch_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.watch_count() == 0


def test_concurrent_compare_and_swap_has_exactly_one_winner(server: FakeApiServer) -> None:
    _, lease = call(
        server.url,
        "POST",
        LEASES,
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"}, "spec": {}},
    )
    outcomes: list[int] = []
    lock = threading.Lock()

    def contend(identity: str) -> None:
        attempt = {**lease, "spec": {"holderIdentity": identity}}
        code, _ = call(server.url, "PUT", f"{LEASES}/leader", attempt)
        with lock:
            outcomes.append(code)

    threads = [threading.Thread(target=contend, args=(f"c{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == [200] + [409] * 7


def test_stop_ends_open_watches_and_refuses_connections() -> None:
    server = FakeApiServer()
    url = server.start()
    watch = WatchReader(url, f"{CONFIGMAPS}?watch=1").start()
    deadline = time.monotonic() + 5
    while server.watch_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()
    assert watch.ended.wait(5)
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    assert refused


def test_clean_drop_ends_the_stream_with_its_final_chunk(server: FakeApiServer) -> None:
    path = f"{CONFIGMAPS}?watch=1&resourceVersion={server.resource_version}"
    with httpx2.Client(base_url=server.url, timeout=5) as client, client.stream("GET", path) as response:
        deadline = time.monotonic() + 5
        while server.watch_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.drop_watches()
        assert list(response.iter_lines()) == []  # ended cleanly: no exception


def test_strict_mode_wants_namespaces_and_dns_hosts() -> None:
    def ingress(host: str) -> dict[str, Any]:
        backend = {"service": {"name": "web", "port": {"number": 80}}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "i"},
            "spec": {
                "rules": [
                    {
                        "host": host,
                        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                    }
                ]
            },
        }

    with FakeApiServer(strict=True) as strict:
        code, status = call(strict.url, "POST", "/api/v1/namespaces/shop/configmaps", configmap("c"))
        assert code == 404 and status["message"] == 'namespaces "shop" not found'
        call(
            strict.url,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        )
        code, _ = call(strict.url, "POST", "/api/v1/namespaces/shop/configmaps", configmap("c"))
        assert code == 201
        path = "/apis/networking.k8s.io/v1/namespaces/default/ingresses"
        for bad in ("Bad_Host.example", "192.0.2.1", "*.*.example"):
            code, status = call(strict.url, "POST", path, ingress(bad))
            assert code == 422 and f'spec.rules[0].host: Invalid value: "{bad}"' in status["message"], bad
        code, _ = call(strict.url, "POST", path, ingress("*.shop.example"))
        assert code == 201
    with FakeApiServer() as lenient:  # the default: scenario tests need not create Namespaces
        code, _ = call(lenient.url, "POST", "/api/v1/namespaces/shop/configmaps", configmap("c"))
        assert code == 201


def test_plain_defaults_secrets_and_endpoint_ports(server: FakeApiServer) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": "abc"}}
    stored = server.create(secret)
    assert stored["type"] == "Opaque" and stored["data"] == {"token": "YWJj"} and "stringData" not in stored
    endpoints = server.create(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "e"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}],
        }
    )
    assert endpoints["subsets"][0]["ports"] == [{"protocol": "TCP", "port": 80}]
    endpoint_slice = server.create(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "e-1"},
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [{"port": 80, "protocol": "UDP"}],
        }
    )
    assert endpoint_slice["ports"] == [{"port": 80, "protocol": "UDP"}]


def test_deleting_a_namespace_deletes_its_contents_first(server: FakeApiServer) -> None:
    server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    server.create({**configmap("c"), "metadata": {"name": "c", "namespace": "shop"}})
    server.create({**configmap("c"), "metadata": {"name": "c", "namespace": "default"}})
    since = server.resource_version
    code, _ = call(server.url, "DELETE", "/api/v1/namespaces/shop")
    assert code == 200
    assert server.get("v1", "ConfigMap", "shop", "c") is None
    assert server.get("v1", "ConfigMap", "default", "c") is not None
    contents = WatchReader(server.url, f"/api/v1/configmaps?watch=1&resourceVersion={since}&timeoutSeconds=1")
    namespaces = WatchReader(
        server.url, f"/api/v1/namespaces?watch=1&resourceVersion={since}&timeoutSeconds=1"
    )
    (content,) = contents.start().wait_for(1)
    (namespace,) = namespaces.start().wait_for(1)
    assert (content["type"], content["object"]["metadata"]["namespace"]) == ("DELETED", "shop")
    assert (namespace["type"], namespace["object"]["metadata"]["name"]) == ("DELETED", "shop")
    version = int(content["object"]["metadata"]["resourceVersion"])
    assert version < int(namespace["object"]["metadata"]["resourceVersion"])


def test_generation_only_on_the_kinds_kube_keeps_it_and_pod_status_on_create(server: FakeApiServer) -> None:
    service = server.create(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert "generation" not in service["metadata"]
    changed = server.patch("v1", "Service", "default", "s", {"spec": {"type": "NodePort"}})
    assert "generation" not in changed["metadata"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "c", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
            ]
        },
        "status": {"phase": "Running", "podIP": "10.0.0.9"},
    }
    created = server.create(pod)
    assert created["metadata"]["generation"] == 1
    assert created["status"] == {
        "phase": "Pending",
        "qosClass": "Guaranteed",
    }  # status given on create is dropped
    running = server.replace_status({**created, "status": {"phase": "Running", "podIP": "10.0.0.9"}})
    assert running["status"]["podIP"] == "10.0.0.9" and running["metadata"]["generation"] == 1


def test_concurrent_writers_and_a_watch_agree(server: FakeApiServer) -> None:
    start = server.resource_version
    watch = WatchReader(server.url, f"{CONFIGMAPS}?watch=1&resourceVersion={start}").start()

    def write(worker: int) -> None:
        for number in range(25):
            code, _ = call(server.url, "POST", CONFIGMAPS, configmap(f"w{worker}-{number}"))
            assert code == 201

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    events = watch.wait_for(200, timeout=10)
    server.drop_watches()
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert len(events) == 200 and {event["type"] for event in events} == {"ADDED"}
    assert versions == sorted(versions) and len(set(versions)) == 200
    assert versions == list(range(start + 1, start + 201))  # nothing else wrote: no gaps
    _, listed = call(server.url, "GET", CONFIGMAPS)
    assert len(listed["items"]) == 200


def test_node_ports_are_freed_when_a_service_stops_needing_them(server: FakeApiServer) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]},
    }
    server.create(body)
    other = {**body, "metadata": {"name": "other"}}
    code, status = call(server.url, "POST", SERVICES, other)
    assert code == 422 and "provided port is already allocated" in status["message"]
    server.patch("v1", "Service", "default", "np", {"spec": {"type": "ClusterIP"}})
    cluster_ip_only = server.get("v1", "Service", "default", "np")
    assert cluster_ip_only is not None and "nodePort" not in cluster_ip_only["spec"]["ports"][0]
    code, created = call(server.url, "POST", SERVICES, other)
    assert code == 201 and created["spec"]["ports"][0]["nodePort"] == 30080
