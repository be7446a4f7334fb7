"""`kubegate proxy --kubernetes`: the node agent renders its nftables rules from the API server's Services
and endpoints, with the API server's ClusterIPs and nodePorts and only the LoadBalancer IPs a Service's
status shows. The kernel is replaced by a driver that records what it was asked to apply (the netns
tests apply real rules from files)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kubegate.agent import AgentConfig, NftablesAgent
from kubegate.cli import main
from kubegate.planes.render import NftOptions
from kubegate.planes.render.nftables import RenderedNftables
from kubegate.sources.kubernetes.config import KubeSettings, resolve
from kubegate.translate.context import Options
from tests.fakes.apiserver import FakeApiServer
from tests.kubernetes.test_serve_kubernetes import endpoints, service, write_kubeconfig


class RecordingDriver:
    """Stands in for NftDriver: keeps the text of every ruleset it is given."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.last_incremental = False

    def apply(self, rendered: RenderedNftables) -> bool:
        self.applied.append(rendered.text())
        return True

    def reapply_if_drifted(self) -> bool:
        return False

    def remove(self) -> None:
        self.applied.append("")


async def until(driver: RecordingDriver, needle: str, seconds: float = 5.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if driver.applied and needle in driver.applied[-1]:
            return driver.applied[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{needle!r} not in the applied rules after {seconds} s")


async def test_the_agent_follows_the_api_server(api: FakeApiServer, tmp_path: Path) -> None:
    web = api.create(service("web", type="NodePort"))
    api.create(endpoints("web", 8080))
    cluster_ip = web["spec"]["clusterIP"]
    node_port = web["spec"]["ports"][0]["nodePort"]
    connection = resolve(KubeSettings(kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", api.url)))
    driver = RecordingDriver()
    agent = NftablesAgent(
        AgentConfig(
            paths=(),
            options=Options(addresses_from_spec=True),
            nft=NftOptions(node_name="node1"),
            kubernetes=connection,
        ),
        driver=driver,  # type: ignore[arg-type]
    )
    async with asyncio.timeout(20):
        await agent.reconciler.start()
        watch = asyncio.create_task(agent.reconciler.watch(agent.trigger))
        try:
            agent.reconciler.reload()
            rules = await until(driver, cluster_ip)
            # the API server's addresses, not ones of our own
            assert f"{node_port}" in rules and "127.0.0.1" in rules
            # an endpoint change reaches the rules
            api.replace(endpoints("web", 9090))
            await until(driver, "9090")
            # a LoadBalancer IP is rendered once the status shows it (the gateway's leader writes it)
            shop = api.create(service("shop", type="LoadBalancer"))
            api.create(endpoints("shop", 7070))
            await until(driver, shop["spec"]["clusterIP"])
            assert "127.0.100.1" not in driver.applied[-1]
            stored = api.get("v1", "Service", "default", "shop")
            assert stored is not None
            stored["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.100.1"}]}}
            api.replace_status(stored)
            await until(driver, "127.0.100.1")
        finally:
            watch.cancel()
            await agent.reconciler.stop()
    # a node agent reads no Ingresses, classes or Secrets (its service account may not)
    paths = {path.split("?")[0] for method, path in api.requests if method == "GET"}
    assert not [p for p in paths if "ingress" in p or "secrets" in p]


def test_proxy_needs_a_path_or_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy"]) == 2
    assert "proxy: give a manifest PATH, or --kubernetes" in capsys.readouterr().err
