"""The HAProxy LoadBalancer for real: a LoadBalancer Service's external IP, in front of a "node" whose
nodePort is a loopback echo backend, reloaded without dropping an established connection."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubegate.echo import start_echo
from kubegate.loadbalancer import HAProxyLoadBalancer, LoadBalancerConfig
from kubegate.planes.render import HAProxyOptions
from kubegate.planes.render.driver import ApplyError
from kubegate.translate.context import Options, Pool
from tests.proxy.helpers import Client, get

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (Debian package)")

LB_NET = "127.0.125.0/24"
LB_IP = "127.0.125.1"
HAPROXY_MAXCONN = 1000

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: shop}}
spec:
  type: LoadBalancer
  ports: [{{name: http, port: {port}, nodePort: {node_port}}}]
"""


def free_port(address: str, low: int = 0, high: int = 0) -> int:
    """A port free on `address` now (in [low, high] when given, for nodePorts)."""
    for candidate in range(low, high + 1) if low else [0]:
        with socket.socket() as probe:
            try:
                probe.bind((address, candidate))
            except OSError:
                continue
            port: int = probe.getsockname()[1]
            return port
    raise RuntimeError(f"no free port on {address} in {low}-{high}")


@pytest.fixture
async def node_ports() -> AsyncIterator[tuple[int, int]]:
    """Two echo backends standing in for two nodePorts of node1."""
    first = free_port("127.0.0.1", 31000, 32767)
    one = await start_echo("node1", "127.0.0.1", first)
    second = free_port("127.0.0.1", first + 1, 32767)
    two = await start_echo("node1", "127.0.0.1", second)
    try:
        yield first, second
    finally:
        one.close()
        two.close()


async def request(port: int, address: str = LB_IP) -> str:
    reader, writer = await asyncio.open_connection(address, port)
    client = Client(reader, writer)
    client.send(get("/", "shop.example"))
    response = await client.response()
    await client.close()
    name: str = response.json()["name"]
    return name


async def test_external_ip_reaches_the_nodeport_and_survives_a_reload(
    tmp_path: Path, node_ports: tuple[int, int]
) -> None:
    node_port, node_port2 = node_ports
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    port = free_port(LB_IP)
    (manifests / "shop.yaml").write_text(SERVICE.format(port=port, node_port=node_port))
    lb = HAProxyLoadBalancer(
        LoadBalancerConfig(
            paths=(str(manifests),),
            options=Options(pools=(Pool(name="t", addresses=(LB_NET,), avoid_buggy_ips=True),)),
            haproxy=HAProxyOptions(
                runtime_socket=str(tmp_path / "haproxy.sock"),
                node_addresses=(("node1", "127.0.0.1"),),
                maxconn=HAPROXY_MAXCONN,
            ),
            config_path=tmp_path / "haproxy.cfg",
        )
    )
    lb.start()
    try:
        assert lb.driver.running()
        assert await request(port) == "node1"
        # a connection established before the reload keeps working after it
        reader, writer = await asyncio.open_connection(LB_IP, port)
        held = Client(reader, writer)
        held.send(get("/", "shop.example"))
        assert (await held.response()).json()["name"] == "node1"

        second_ip = "127.0.125.2"  # the next address of the pool goes to the second Service
        second = free_port(second_ip)
        (manifests / "shop.yaml").write_text(
            SERVICE.format(port=port, node_port=node_port)
            + "---\n"
            + SERVICE.format(port=second, node_port=node_port2).replace("name: shop", "name: shop2")
        )
        lb.reconciler.reload()
        assert lb.driver.reloads == 1
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                assert await request(second, second_ip) == "node1"
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        held.send(get("/", "shop.example"))
        assert (await held.response()).json()["name"] == "node1"
        await held.close()

        # a configuration haproxy refuses is reported and never replaces the running one
        running = lb.driver.config_path.read_text()
        with pytest.raises(ApplyError, match="haproxy rejected the configuration"):
            lb.driver.apply("global\n    no-such-keyword 1\n")
        assert lb.driver.config_path.read_text() == running
        assert await request(second, second_ip) == "node1"
    finally:
        await lb.stop()
