"""The whole picture for real: two nodes, pods on each, an external client, kubegate's node agents
(`proxy --mode nftables`), its HAProxy load balancer and its userspace listener, all in network namespaces
(root; skipped elsewhere). See cluster.py for the layout.

Services (manifests written to a directory every kubegate process watches):
- web: LoadBalancer 192.168.50.200 (HAProxy in the "lb" namespace), ClusterIP 10.96.0.10, nodePort 30080
- edge: LoadBalancer 192.168.50.201 (`kubegate serve` in the "gw" namespace), nodePort 30081
- local: NodePort 30082 with externalTrafficPolicy Local, one endpoint, on node1

The tests share one cluster (building it costs seconds) and run in file order; each one sets the endpoints
it needs itself, and the one that takes a node down comes last.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns.cluster import CLIENT_IP, Cluster, ProbeLine
from tests.netns.topology import Topology, require_netns

pytestmark = pytest.mark.root

WEB_LB, EDGE_LB = "192.168.50.200", "192.168.50.201"
LB_HOST, GW_HOST = "192.168.50.20", "192.168.50.30"
WEB_CLUSTER_IP = "10.96.0.10"
WEB_PORT, EDGE_PORT, LOCAL_PORT = 30080, 30081, 30082
# every process translates with the same settings, so all agree on the LoadBalancer IPs
TRANSLATE = ("--pool", "192.168.50.192/28", "--service-cidr", "10.96.0.0/12")
ALL_PODS = ("node1-pod0", "node1-pod1", "node2-pod0", "node2-pod1")
# a rule change must be in force within this many seconds
CONVERGE_SECONDS = 10.0

SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  loadBalancerIP: 192.168.50.200
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: edge}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.11
  loadBalancerIP: 192.168.50.201
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  clusterIP: 10.96.0.12
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30082}]
"""


def endpoint_slice(cluster: Cluster, service: str, pods: tuple[str, ...], not_ready: frozenset[str]) -> str:
    endpoints = (
        "".join(
            f"  - addresses: [{cluster.pod(name).ip}]\n"
            f"    conditions: {{ready: {'false' if name in not_ready else 'true'}}}\n"
            f"    nodeName: {cluster.pod(name).node}\n"
            for name in pods
        )
        or "  []\n"
    )
    return (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: {service}-1, labels: {{kubernetes.io/service-name: {service}}}}}\n"
        "addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\n"
        f"endpoints:\n{endpoints}"
    )


class Manifests:
    """The manifest directory the kubegate processes watch; endpoint edits replace a file atomically, as
    a controller writing the API would (a reader never sees half a file)."""

    def __init__(self, cluster: Cluster, directory: Path) -> None:
        self.cluster = cluster
        self.directory = directory
        directory.mkdir()
        (directory / "services.yaml").write_text(SERVICES)
        self.staging = directory.parent / "staging"
        self.staging.mkdir()

    def endpoints(self, service: str, pods: tuple[str, ...], not_ready: frozenset[str] = frozenset()) -> None:
        staged = self.staging / f"{service}-slice.yaml"
        staged.write_text(endpoint_slice(self.cluster, service, pods, not_ready))
        os.replace(staged, self.directory / f"{service}-slice.yaml")


@dataclass(frozen=True)
class Env:
    cluster: Cluster
    manifests: Manifests


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_netns()
    if shutil.which("haproxy") is None:
        pytest.skip("needs haproxy (Debian package haproxy)")
    workdir = tmp_path_factory.mktemp("cluster")
    topo = Topology()
    cluster = Cluster(topo, workdir)
    try:
        cluster = Cluster.build(topo, workdir)
        manifests = Manifests(cluster, workdir / "manifests")
        manifests.endpoints("web", ALL_PODS)
        manifests.endpoints("edge", ("node1-pod1", "node2-pod1"))
        manifests.endpoints("local", ("node1-pod0",))
        paths = str(manifests.directory)
        for node in cluster.nodes:
            cluster.kubegate(
                node.netns,
                f"agent-{node.name}",
                "proxy",
                "--mode",
                "nftables",
                "--node-name",
                node.name,
                "--node-address",
                node.address,
                *TRANSLATE,
                paths,
            )
        # the load balancer host binds every LoadBalancer IP haproxy serves; 192.168.50.201 lives on the
        # gateway host, so, as on a keepalived pair, haproxy may bind an address it does not hold
        lb = cluster.lan_host("lb", LB_HOST, WEB_LB)
        topo.run(lb, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")
        nodes = [f"--node-address={node.name}={node.address}" for node in cluster.nodes]
        cluster.kubegate(
            lb,
            "loadbalancer",
            "loadbalancer",
            "--mode",
            "haproxy",
            *nodes,
            "--config",
            str(workdir / "haproxy.cfg"),
            "--runtime-socket",
            str(workdir / "haproxy.sock"),
            *TRANSLATE,
            paths,
        )
        # the userspace gateway relays to pod IPs itself: it needs routes to the pod networks
        gw = cluster.lan_host("gw", GW_HOST, EDGE_LB)
        for node in cluster.nodes:
            topo.run(gw, "ip", "route", "add", node.pod_cidr, "via", node.address)
        cluster.kubegate(
            gw,
            "serve",
            "serve",
            "--listen",
            f"{GW_HOST}:8080",
            "--tls-listen",
            "off",
            "--node-address",
            GW_HOST,
            "--workers",
            "1",
            "--access-log",
            "off",
            *TRANSLATE,
            paths,
        )
        for node in cluster.nodes:
            cluster.wait_http(node.netns, f"http://{WEB_CLUSTER_IP}/", seconds=30)
        cluster.wait_http(cluster.client, f"http://{WEB_LB}/", seconds=30)
        cluster.wait_http(cluster.client, f"http://{EDGE_LB}/", seconds=30)
        yield Env(cluster, manifests)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.teardown()


@pytest.fixture(autouse=True)
def process_logs(env: Env, request: pytest.FixtureRequest) -> Iterator[None]:
    """The kubegate and haproxy logs, printed after a test that failed (pytest shows them with it)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(env.cluster.logs())


def test_clusterip_reaches_every_endpoint_from_pods_and_nodes_and_never_answers_ping(env: Env) -> None:
    cluster = env.cluster
    url = f"http://{WEB_CLUSTER_IP}/"
    for node in cluster.nodes:
        assert cluster.seen(node.netns, url, 40) == set(ALL_PODS), node.name
    # a pod reaches endpoints on its own node, on the other node and itself (hairpin)
    for pod in ("node1-pod0", "node2-pod1"):
        assert cluster.seen(cluster.pod(pod).netns, url, 40) == set(ALL_PODS), pod
    for where in (cluster.nodes[0].netns, cluster.pod("node1-pod0").netns):
        ping = cluster.topo.run(where, "ping", "-c", "1", "-W", "1", WEB_CLUSTER_IP, check=False)
        # no echo reply: the rules reject it, so ping hears "port unreachable" at once
        assert ping.returncode != 0 and "bytes from" not in ping.stdout, ping.stdout
        assert "Port Unreachable" in ping.stdout, ping.stdout
    # the client outside the cluster has no way to the ClusterIP
    assert cluster.topo.curl(cluster.client, url) is None


def test_nodeport_answers_on_both_nodes_for_pods_on_either_node(env: Env) -> None:
    cluster = env.cluster
    for node in cluster.nodes:
        assert cluster.seen(cluster.client, f"http://{node.address}:{WEB_PORT}/", 40) == set(ALL_PODS)
        # policy Cluster masquerades: a pod never sees the external client's address
        sources = {
            answer.split()[1]
            for answer in cluster.seen(cluster.client, f"http://{node.address}:{WEB_PORT}/client", 20)
            if answer
        }
        assert CLIENT_IP not in sources and sources


def test_external_traffic_policy_local_keeps_the_client_address_and_only_local_endpoints(env: Env) -> None:
    cluster = env.cluster
    node1, node2 = cluster.nodes
    # the node with the endpoint serves it without masquerade: the pod sees the real client
    via_node1 = cluster.seen(cluster.client, f"http://{node1.address}:{LOCAL_PORT}/client", 10)
    assert via_node1 == {f"node1-pod0 {CLIENT_IP}"}
    # the node without one drops external traffic instead of forwarding it (connect times out)
    assert cluster.seen(cluster.client, f"http://{node2.address}:{LOCAL_PORT}/", 2, timeout=1.0) == {None}
    # the node's own traffic has no client address to keep and takes the Cluster path
    assert cluster.seen(node2.netns, f"http://{node2.address}:{LOCAL_PORT}/", 5) == {"node1-pod0"}


def haproxy_sessions(socket_path: Path, backend: str) -> dict[str, int]:
    """Sessions each server of `backend` has carried, from haproxy's runtime API (`show stat` CSV)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(socket_path))
        conn.sendall(b"show stat\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    header, *rows = data.decode().splitlines()
    columns = header.lstrip("# ").split(",")
    found = {}
    for row in csv.DictReader(rows, fieldnames=columns):
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND"):
            found[row["svname"]] = int(row["stot"])
    return found


def test_loadbalancer_ip_through_haproxy_reaches_pods_on_both_nodes(env: Env) -> None:
    socket_path = env.cluster.workdir / "haproxy.sock"
    before = haproxy_sessions(socket_path, "be:default.web:tcp:80")
    answers = env.cluster.bodies(env.cluster.client, f"http://{WEB_LB}/", 40)
    assert None not in answers
    assert set(answers) == set(ALL_PODS)
    # round robin over both nodes' nodePorts
    after = haproxy_sessions(socket_path, "be:default.web:tcp:80")
    assert set(after) == {"node1", "node2"}
    assert all(after[node] - before.get(node, 0) >= 15 for node in after), (before, after)


def test_loadbalancer_ip_through_the_userspace_listener(env: Env) -> None:
    answers = env.cluster.bodies(env.cluster.client, f"http://{EDGE_LB}/", 20)
    assert None not in answers
    assert set(answers) == {"node1-pod1", "node2-pod1"}
    # its nodePorts listen in userspace on the gateway's own address
    assert env.cluster.seen(env.cluster.client, f"http://{GW_HOST}:{EDGE_PORT}/", 10) == {
        "node1-pod1",
        "node2-pod1",
    }


def _refused(cluster: Cluster, netns: str, url: str) -> float:
    """Seconds the connection took to be refused (curl's own clock, so a loaded machine's process start-up
    is not counted); fails when it got an answer or timed out instead."""
    result = cluster.topo.run(
        netns, "curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", "--max-time", "3", url, check=False
    )
    assert result.returncode == 7, f"{url} from {netns}: curl exit {result.returncode}, not refused (7)"
    return float(result.stdout)


def test_a_service_scaled_to_zero_is_refused_at_once_and_comes_back(env: Env) -> None:
    cluster, manifests = env.cluster, env.manifests
    node1 = cluster.nodes[0]
    by_node_port = f"http://{node1.address}:{EDGE_PORT}/"
    by_cluster_ip = "http://10.96.0.11/"
    manifests.endpoints("edge", ())
    deadline = time.monotonic() + CONVERGE_SECONDS
    while cluster.topo.curl(cluster.client, by_node_port) is not None:
        assert time.monotonic() < deadline, f"{by_node_port} still answered {CONVERGE_SECONDS} s later"
        time.sleep(0.1)
    # refused (TCP reset), not left to time out: a client learns at once that nothing serves it
    assert _refused(cluster, cluster.client, by_node_port) < 1.0
    assert _refused(cluster, cluster.pod("node2-pod0").netns, by_cluster_ip) < 1.0
    manifests.endpoints("edge", ("node1-pod1", "node2-pod1"))
    cluster.wait_seen(cluster.client, by_node_port, {"node1-pod1", "node2-pod1"}, CONVERGE_SECONDS)
    cluster.wait_seen(cluster.client, f"http://{EDGE_LB}/", {"node1-pod1", "node2-pod1"}, CONVERGE_SECONDS)


def _one_flow(lines: list[ProbeLine]) -> set[str]:
    """What a keep-alive probe saw: every request answered, on one connection, by one endpoint."""
    assert all(line.ok for line in lines), [line for line in lines if not line.ok][:3]
    assert len({line.local_port for line in lines}) == 1, "the connection was re-opened"
    return {line.text for line in lines}


def test_scaling_updates_rules_in_bounded_time_and_keeps_established_flows(env: Env) -> None:
    cluster, manifests = env.cluster, env.manifests
    node1, node2 = cluster.nodes
    by_node1 = f"http://{node1.address}:{WEB_PORT}/"
    manifests.endpoints("web", ("node1-pod0", "node2-pod0"))
    cluster.wait_seen(cluster.client, by_node1, {"node1-pod0", "node2-pod0"}, CONVERGE_SECONDS)

    # flows held open across the changes: a pod on its ClusterIP, the client on node2's nodePort (the
    # endpoint may be on node1: DNAT on node2, masquerade, forwarded over the LAN); and a client opening a
    # new connection for every request
    held = [
        cluster.probe(cluster.pod("node1-pod1").netns, WEB_CLUSTER_IP, 80, "keep"),
        cluster.probe(cluster.client, node2.address, WEB_PORT, "keep"),
    ]
    fresh = cluster.probe(cluster.client, node1.address, WEB_PORT, "new")
    first = [probe.wait_first() for probe in (*held, fresh)]
    assert all(line.ok for line in first), first
    kept = tuple(sorted({line.text for line in first[:2]}))

    timings = {}
    changed = time.time()
    manifests.endpoints("web", ALL_PODS)
    timings["scale up"] = cluster.wait_seen(cluster.client, by_node1, set(ALL_PODS), CONVERGE_SECONDS)
    # down to the endpoints the held flows use: the others lose their rules, the flows must not notice
    manifests.endpoints("web", kept)
    timings["scale down"] = cluster.wait_seen(cluster.client, by_node1, set(kept), CONVERGE_SECONDS)
    assert cluster.seen(cluster.pod("node2-pod0").netns, f"http://{WEB_CLUSTER_IP}/", 20) == set(kept)
    settled = time.time()
    print(f"rules in force after: {', '.join(f'{k} {v:.2f} s' for k, v in timings.items())}")
    for probe in (*held, fresh):
        probe.wait_after(settled)  # the probes go on for a while on the final rules

    for probe, line in zip(held, first[:2], strict=True):
        lines = probe.stop()
        assert _one_flow(lines) == {line.text}
        assert lines[0].at < changed < settled < lines[-1].at  # the one flow spanned both changes
    new_lines = fresh.stop()
    assert all(line.ok for line in new_lines), [line for line in new_lines if not line.ok][:3]
    # connections opened once the rules settled went only to the endpoints left
    assert {line.text for line in new_lines if line.at > settled} <= set(kept)


def _wait_all_answer(cluster: Cluster, url: str, run: int, seconds: float) -> float:
    """Seconds until `run` requests in a row succeed (1 s each at most)."""
    start = time.monotonic()
    streak = 0
    while streak < run:
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{url}: no {run} successes in a row within {seconds} s\n{cluster.logs()}")
        streak = streak + 1 if cluster.topo.curl(cluster.client, url, timeout=1.0) is not None else 0
    return time.monotonic() - start


def test_loadbalancer_ip_keeps_serving_through_haproxy_when_a_node_goes_down(env: Env) -> None:
    cluster, manifests = env.cluster, env.manifests
    manifests.endpoints("web", ALL_PODS)
    url = f"http://{WEB_LB}/"
    cluster.wait_seen(cluster.client, url, set(ALL_PODS), CONVERGE_SECONDS)

    node1 = cluster.nodes[0]
    cluster.topo.run(node1.netns, "ip", "link", "set", "lan0", "down")
    # what Kubernetes does once the node stops reporting: its endpoints turn not ready
    manifests.endpoints("web", ALL_PODS, not_ready=frozenset({"node1-pod0", "node1-pod1"}))
    took = _wait_all_answer(cluster, url, run=10, seconds=30)
    print(f"LoadBalancer IP serving again {took:.1f} s after node1 went down")
    answers = cluster.bodies(cluster.client, url, 30)
    assert None not in answers
    assert set(answers) == {"node2-pod0", "node2-pod1"}
    # haproxy's active health check is what took node1 out of the rotation
    log = (cluster.workdir / "haproxy.log").read_text(errors="replace")
    assert "node1 is DOWN" in log, log[-2000:]
