"""Kernel mode for real: kubegate's rendered ruleset, applied by its driver in a node namespace, carries
ClusterIP traffic to the pods behind it (root; skipped elsewhere, run in CI)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.services import change_sequence

from kubegate.ir.model import EndpointTable, RoutingTable
from kubegate.pipeline import load_and_translate
from kubegate.planes.render import NftOptions, render_nftables
from kubegate.planes.render.driver import ApplyError, NftDriver
from kubegate.planes.render.nftdiff import parse_table
from kubegate.translate.context import Options
from tests.netns.topology import Topology, require_netns

pytestmark = pytest.mark.root

MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
  - addresses: [{ip: 10.244.0.2}, {ip: 10.244.0.3}]
    ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
"""


@pytest.fixture
def topology() -> Iterator[Topology]:
    require_netns()
    topo = Topology()
    try:
        yield topo
    finally:
        topo.teardown()


def ruleset(tmp_path: Path, manifests: str = MANIFESTS) -> str:
    (tmp_path / "web.yaml").write_text(manifests)
    outcome = load_and_translate([str(tmp_path)], Options())
    assert outcome.problems() == []
    translation = outcome.translation
    return render_nftables(
        translation.routing, translation.endpoints, NftOptions(service_cidr="10.96.0.0/12")
    )


def test_clusterip_reaches_every_endpoint_and_never_answers_ping(topology: Topology, tmp_path: Path) -> None:
    node, pods = topology.node_with_pods(["10.244.0.2", "10.244.0.3"])
    driver = NftDriver(netns=node)
    assert topology.curl(node, "http://10.96.0.10/") is None  # nothing before the rules
    assert driver.apply(ruleset(tmp_path))

    seen = {topology.answer(node, "http://10.96.0.10/") for _ in range(40)}
    assert seen == {"pod-0", "pod-1"}
    # from a pod too, including itself (hairpin, masqueraded so the reply comes back the same way)
    from_pod = {topology.answer(pods[0], "http://10.96.0.10/") for _ in range(40)}
    assert from_pod == {"pod-0", "pod-1"}
    # no device answers for a ClusterIP
    ping = topology.run(node, "ping", "-c", "1", "-W", "1", "10.96.0.10", check=False)
    assert ping.returncode != 0
    # a Service without endpoints is refused at once, not left to time out
    refused = topology.run(node, "curl", "-s", "--max-time", "2", "http://10.96.0.11/", check=False)
    assert refused.returncode == 7  # curl: failed to connect (reset / unreachable)


def test_driver_keeps_the_last_good_rules_reapplies_on_drift_and_removes_its_table(
    topology: Topology, tmp_path: Path
) -> None:
    node, _ = topology.node_with_pods(["10.244.0.2"])
    driver = NftDriver(netns=node)
    good = ruleset(tmp_path, MANIFESTS.replace(", {ip: 10.244.0.3}", ""))
    driver.apply(good)
    assert not driver.apply(good)  # unchanged: nothing to do

    with pytest.raises(ApplyError, match="nft rejected the ruleset"):
        driver.apply("table inet kubegate { chain broken { this is not nft; } }")
    assert topology.answer(node, "http://10.96.0.10/") == "pod-0"

    topology.run(node, "nft", "delete", "table", "inet", "kubegate")
    assert driver.drifted()
    assert driver.reapply_if_drifted()
    assert topology.answer(node, "http://10.96.0.10/") == "pod-0"

    driver.remove()
    assert topology.run(node, "nft", "list", "tables").stdout.strip() == ""
    assert topology.curl(node, "http://10.96.0.10/") is None


def test_node_agent_follows_endpoint_changes_and_cleans_up(topology: Topology, tmp_path: Path) -> None:
    node, _ = topology.node_with_pods(["10.244.0.2", "10.244.0.3"])
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "web.yaml").write_text(MANIFESTS)
    agent = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            node,
            sys.executable,
            "-m",
            "kubegate.cli",
            "proxy",
            "--mode",
            "nftables",
            str(manifests),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    topology.processes.append(agent)
    try:
        topology.wait_http(node, "http://10.96.0.10/", seconds=20)
        assert {topology.answer(node, "http://10.96.0.10/") for _ in range(30)} == {"pod-0", "pod-1"}
        # scale down to one endpoint: within a bounded time only pod-0 answers
        (manifests / "web.yaml").write_text(MANIFESTS.replace(", {ip: 10.244.0.3}", ""))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if {topology.answer(node, "http://10.96.0.10/") for _ in range(10)} == {"pod-0"}:
                break
            time.sleep(0.2)
        assert {topology.answer(node, "http://10.96.0.10/") for _ in range(20)} == {"pod-0"}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
    assert agent.returncode == 0
    assert topology.run(node, "nft", "list", "tables").stdout.strip() == ""


def _normalised(listing: str) -> dict[tuple[str, str], tuple[tuple[str, ...], frozenset[str]]]:
    # nft lists objects in creation order and hash-set elements in any order: compare by name and content
    objects = parse_table(listing, "inet", "kubegate")
    return {key: (obj.declaration(), obj.elements()) for key, obj in objects.items()}


def _variants() -> list[tuple[RoutingTable, EndpointTable]]:
    return change_sequence(4, 3, kept=3)


@pytest.mark.parametrize("dispatch", ["inline", "rules", "vmap"])
def test_incremental_apply_leaves_the_table_a_full_load_would(topology: Topology, dispatch: str) -> None:
    incremental_ns = topology.netns("inc")
    full_ns = topology.netns("full")
    options = NftOptions(dispatch=dispatch)  # type: ignore[arg-type]
    stepwise = NftDriver(netns=incremental_ns)
    for routing, endpoints in _variants():
        ruleset = render_nftables(routing, endpoints, options)
        stepwise.apply(ruleset)
        fresh = NftDriver(netns=full_ns)
        fresh.remove()
        fresh.apply(ruleset)
        assert _normalised(stepwise.listing()) == _normalised(fresh.listing())
    # everything after the first load went by the small transaction, none fell back to a full replace
    assert stepwise.incremental_applies == len(_variants()) - 1
