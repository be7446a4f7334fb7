"""The fake API server checked against a real client: Debian's kubectl.

Every outcome asserted here is what kubectl prints or returns against a real cluster for the same
commands. kubectl validates against the server (``fieldValidation``), which the fake advertises through a
minimal ``/openapi/v3``, so no ``--validate=false`` is needed. ``kubectl explain`` has no schemas to show,
and the imperative generators (``kubectl create secret ...``) send protobuf, which the fake refuses with
415; ``--dry-run=client -o yaml | kubectl create -f -`` is the way around.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.apiserver import FakeApiServer

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (Debian package kubernetes-client) not installed"
)

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
"""

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: site
spec:
  ingressClassName: kubegate
  rules:
  - host: HOST
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: web, port: {number: 80}}}
"""


class Kubectl:
    def __init__(self, server: FakeApiServer, home: Path) -> None:
        self.server = server
        self.home = home
        self.kubeconfig = server.write_kubeconfig(str(home / "kubeconfig"))

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        return subprocess.run(
            [KUBECTL, "--kubeconfig", self.kubeconfig, "--request-timeout=10s", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def get_json(self, *args: str) -> Any:
        return json.loads(self.ok("get", *args, "-o", "json"))

    def write(self, name: str, text: str) -> str:
        path = self.home / name
        path.write_text(text)
        return str(path)


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        yield Kubectl(server, tmp_path)


def test_create_then_second_create_says_already_exists(kubectl: Kubectl) -> None:
    manifest = kubectl.write("svc.yaml", SERVICE)
    assert kubectl.ok("create", "-f", manifest).strip() == "service/web created"
    again = kubectl.run("create", "-f", manifest)
    assert again.returncode == 1
    assert "Error from server (AlreadyExists): error when creating" in again.stderr
    assert 'services "web" already exists' in again.stderr
    stored = kubectl.server.get("v1", "Service", "default", "web")
    assert stored is not None and stored["spec"]["ports"][0]["targetPort"] == 8080


def test_get_json_shows_server_filled_fields(kubectl: Kubectl) -> None:
    kubectl.ok("create", "-f", kubectl.write("svc.yaml", SERVICE))
    service = kubectl.get_json("service", "web")
    assert service["kind"] == "Service" and service["metadata"]["namespace"] == "default"
    assert service["metadata"]["uid"] and service["metadata"]["resourceVersion"]
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["clusterIP"].startswith("10.96.")
    listing = kubectl.get_json("svc", "--all-namespaces")
    assert listing["kind"] == "List"
    assert [item["metadata"]["name"] for item in listing["items"]] == ["web"]
    missing = kubectl.run("get", "svc", "nope")
    assert missing.returncode == 1
    assert 'Error from server (NotFound): services "nope" not found' in missing.stderr


def test_get_table_columns_match_a_real_cluster(kubectl: Kubectl) -> None:
    kubectl.ok("create", "-f", kubectl.write("svc.yaml", SERVICE))
    header, row = kubectl.ok("get", "svc").splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    cells = row.split()
    assert cells[:5] == ["web", "ClusterIP", cells[2], "<none>", "80/TCP"]
    assert cells[2].startswith("10.96.")
    assert kubectl.ok("get", "ns", "-o", "name").split() == [
        "namespace/default",
        "namespace/kube-node-lease",
        "namespace/kube-public",
        "namespace/kube-system",
    ]


def test_watch_prints_the_current_object_then_changes(kubectl: Kubectl) -> None:
    kubectl.ok("create", "-f", kubectl.write("svc.yaml", SERVICE))
    assert KUBECTL is not None
    process = subprocess.Popen(
        [
            KUBECTL,
            "--kubeconfig",
            kubectl.kubeconfig,
            "get",
            "svc",
            "-w",
            "-o",
            "json",
            "--output-watch-events",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HOME": str(kubectl.home), "PATH": "/usr/bin:/bin"},
    )
    deadline = threading.Timer(20, process.kill)  # a hung kubectl ends the reads below (EOF)
    deadline.start()
    try:
        decoder = json.JSONDecoder()
        buffer = ""
        events: list[dict[str, Any]] = []
        assert process.stdout is not None
        changed = False
        while len(events) < 2:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "kubectl ended"
            buffer += line
            try:
                event, _ = decoder.raw_decode(buffer.strip())
            except ValueError:
                continue
            buffer = ""
            events.append(event)
            if not changed:
                kubectl.server.patch("v1", "Service", "default", "web", {"metadata": {"labels": {"v": "2"}}})
                changed = True
    finally:
        deadline.cancel()
        process.kill()
        process.wait(timeout=10)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    assert events[1]["object"]["metadata"]["labels"] == {"app": "web", "v": "2"}


def test_replace_changes_spec_and_a_stale_replace_conflicts(kubectl: Kubectl) -> None:
    kubectl.ok("create", "-f", kubectl.write("svc.yaml", SERVICE))
    stored = kubectl.get_json("svc", "web")
    changed = SERVICE.replace("8080", "9090")
    assert kubectl.ok("replace", "-f", kubectl.write("svc2.yaml", changed)).strip() == "service/web replaced"
    assert kubectl.get_json("svc", "web")["spec"]["ports"][0]["targetPort"] == 9090
    stale = kubectl.write("stale.json", json.dumps(stored))
    conflict = kubectl.run("replace", "-f", stale)
    assert conflict.returncode == 1
    assert "Error from server (Conflict)" in conflict.stderr
    assert "the object has been modified; please apply your changes to the latest version" in conflict.stderr


def test_apply_creates_then_configures_then_is_unchanged(kubectl: Kubectl) -> None:
    first = kubectl.write("ing.yaml", INGRESS.replace("HOST", "a.example"))
    assert kubectl.ok("apply", "-f", first).strip() == "ingress.networking.k8s.io/site created"
    second = kubectl.write("ing2.yaml", INGRESS.replace("HOST", "b.example"))
    assert kubectl.ok("apply", "-f", second).strip() == "ingress.networking.k8s.io/site configured"
    assert kubectl.ok("apply", "-f", second).strip() == "ingress.networking.k8s.io/site unchanged"
    stored = kubectl.get_json("ingress", "site")
    assert stored["spec"]["rules"][0]["host"] == "b.example"
    assert stored["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in stored["metadata"]["annotations"]


def test_server_side_apply(kubectl: Kubectl) -> None:
    manifest = kubectl.write("ing.yaml", INGRESS.replace("HOST", "a.example"))
    assert kubectl.ok("apply", "--server-side", "-f", manifest).strip() == (
        "ingress.networking.k8s.io/site serverside-applied"
    )
    assert kubectl.get_json("ingress", "site")["spec"]["rules"][0]["host"] == "a.example"


def test_invalid_objects_are_refused_with_the_field_named(kubectl: Kubectl) -> None:
    broken = INGRESS.replace("HOST", "a.example").replace("        pathType: Prefix\n", "")
    result = kubectl.run("create", "-f", kubectl.write("bad.yaml", broken))
    assert result.returncode == 1
    # kubectl's own wording for a 422 Invalid Status with causes, as against a real cluster
    assert result.stderr.strip() == (
        'The Ingress "site" is invalid: spec.rules[0].http.paths[0].pathType: Required value: '
        "pathType must be specified"
    )


def test_delete_then_delete_again_is_not_found(kubectl: Kubectl) -> None:
    manifest = kubectl.write("svc.yaml", SERVICE)
    kubectl.ok("create", "-f", manifest)
    assert kubectl.ok("delete", "-f", manifest).strip() == 'service "web" deleted'
    again = kubectl.run("delete", "-f", manifest)
    assert again.returncode == 1
    assert 'services "web" not found' in again.stderr
    assert kubectl.server.get("v1", "Service", "default", "web") is None


def test_namespaced_and_cluster_scoped_resources_from_stdin(kubectl: Kubectl) -> None:
    manifests = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Namespace
        metadata: {name: apps}
        ---
        apiVersion: networking.k8s.io/v1
        kind: IngressClass
        metadata: {name: kubegate}
        spec: {controller: example.com/kubegate}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: settings, namespace: apps}
        data: {mode: fast}
        """
    )
    out = kubectl.ok("create", "-f", "-", stdin=manifests)
    assert out.split("\n")[:3] == [
        "namespace/apps created",
        "ingressclass.networking.k8s.io/kubegate created",
        "configmap/settings created",
    ]
    assert kubectl.get_json("configmap", "settings", "-n", "apps")["data"] == {"mode": "fast"}
    assert kubectl.server.get("networking.k8s.io/v1", "IngressClass", "", "kubegate") is not None
    kubectl.ok("delete", "namespace", "apps")
    assert kubectl.server.get("v1", "ConfigMap", "apps", "settings") is None


def record_event(kubectl: Kubectl) -> None:
    kubectl.ok("create", "-f", kubectl.write("svc.yaml", SERVICE))
    service = kubectl.server.get("v1", "Service", "default", "web")
    assert service is not None
    kubectl.server.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Service",
                "namespace": "default",
                "name": "web",
                "uid": service["metadata"]["uid"],
            },
            "reason": "Synced",
            "message": "routes published by kubegate",
            "type": "Normal",
            "source": {"component": "kubegate"},
            "count": 1,
        }
    )


def test_describe_lists_the_objects_events(kubectl: Kubectl) -> None:
    record_event(kubectl)
    described = kubectl.ok("describe", "service", "web")
    assert "IP:                       10.96." in described
    events = described.split("Events:", 1)[1].splitlines()
    assert any(
        line.split()[:2] == ["Normal", "Synced"] and "routes published by kubegate" in line for line in events
    )


def test_apply_changing_one_of_two_ports_keeps_the_other(kubectl: Kubectl) -> None:
    two_ports = SERVICE + "  - name: https\n    port: 443\n    targetPort: 8443\n"
    kubectl.ok("apply", "-f", kubectl.write("svc.yaml", two_ports))
    kubectl.ok("apply", "-f", kubectl.write("svc2.yaml", two_ports.replace("8080", "9090")))
    spec = kubectl.get_json("svc", "web")["spec"]
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(80, 9090), (443, 8443)]
    assert not [key for key in spec if key.startswith("$")]
    kubectl.ok("label", "svc", "web", "tier=edge")
    kubectl.ok("annotate", "svc", "web", "note=x")
    metadata = kubectl.get_json("svc", "web")["metadata"]
    assert metadata["labels"] == {"app": "web", "tier": "edge"} and metadata["annotations"]["note"] == "x"


def test_human_watch_prints_table_rows_for_changes(kubectl: Kubectl) -> None:
    kubectl.ok("create", "-f", kubectl.write("svc.yaml", SERVICE))
    assert KUBECTL is not None
    process = subprocess.Popen(
        [KUBECTL, "--kubeconfig", kubectl.kubeconfig, "get", "svc", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HOME": str(kubectl.home), "PATH": "/usr/bin:/bin"},
    )
    deadline = threading.Timer(20, process.kill)  # a hung kubectl ends the reads below (EOF)
    deadline.start()
    try:
        assert process.stdout is not None
        header = process.stdout.readline().split()
        first = process.stdout.readline().split()
        kubectl.server.patch("v1", "Service", "default", "web", {"spec": {"type": "NodePort"}})
        second = process.stdout.readline().split()
    finally:
        deadline.cancel()
        process.kill()
        process.wait(timeout=10)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert first[:2] == ["web", "ClusterIP"] and first[4] == "80/TCP"
    assert second[:2] == ["web", "NodePort"] and second[4].startswith("80:3") and second[4].endswith("/TCP")


def test_get_events_prints_kubes_event_columns(kubectl: Kubectl) -> None:
    record_event(kubectl)
    header, row = kubectl.ok("get", "events").splitlines()
    assert header.split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert row.split()[1:] == ["Normal", "Synced", "service/web", "routes", "published", "by", "kubegate"]


def test_imperative_generators_need_the_manifest_path(kubectl: Kubectl) -> None:
    # kubectl's typed generators (create secret/configmap/service/...) send protobuf, which the fake does not
    # decode: it says so with a 415 instead of misreading the body. Their manifests work as usual.
    refused = kubectl.run("create", "secret", "generic", "token", "--from-literal=key=value")
    assert refused.returncode == 1
    assert "unknown format: application/vnd.kubernetes.protobuf" in refused.stderr
    manifest = kubectl.ok(
        "create", "secret", "generic", "token", "--from-literal=key=value", "--dry-run=client", "-o", "yaml"
    )
    assert kubectl.ok("create", "-f", "-", stdin=manifest).strip() == "secret/token created"
    assert kubectl.get_json("secret", "token")["data"] == {"key": "dmFsdWU="}


def test_get_follows_pages_past_kubectls_chunk_size(kubectl: Kubectl) -> None:
    for number in range(620):  # kubectl asks for 500 at a time
        kubectl.server.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{number:04}"}}
        )
    names = kubectl.ok("get", "configmaps", "-o", "name").split()
    assert len(names) == 620 and names[0] == "configmap/c0000" and names[-1] == "configmap/c0619"
    assert len(kubectl.ok("get", "configmaps", "--no-headers").splitlines()) == 620
    assert any("limit=500" in path and "continue=" in path for _, path in kubectl.server.requests)
