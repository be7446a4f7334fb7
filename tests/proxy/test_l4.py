"""The userspace L4 data plane, over loopback: LoadBalancer IPs in 127.0.100.0/24 and nodePorts."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import cast

import pytest

from kubegate.ir.model import Endpoint, EndpointTable, L4Port, L4Service, RoutingTable
from kubegate.planes.proxy.l4 import L4Proxy, L4Settings, Listener, listeners

pytestmark = pytest.mark.timeout(30)

LB = "127.0.100.1"


def free_port(ip: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


def refusing_port() -> int:
    # nothing listens there once the probe socket is closed
    return free_port()


class Echo:
    """A TCP server that answers each line with 'name:line' and, on EOF, 'name:eof:<bytes seen>'."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Echo:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = 0
        with suppress(ConnectionError):
            while line := await reader.readline():
                seen += len(line)
                writer.write(f"{self.name}:".encode() + line)
                await writer.drain()
            writer.write(f"{self.name}:eof:{seen}\n".encode())
            await writer.drain()
        writer.close()

    def endpoint(self) -> Endpoint:
        return Endpoint(ip="127.0.0.1", port=self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@asynccontextmanager
async def echoes(*names: str) -> AsyncIterator[list[Echo]]:
    servers = [await Echo(n).start() for n in names]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def service(
    name: str, port: int, *, lb: tuple[str, ...] = (LB,), node_port: int | None = None, **kw: object
) -> L4Service:
    return L4Service(
        name=name,
        type="LoadBalancer",
        load_balancer_ips=lb,
        ports=(L4Port(name="p", protocol="TCP", port=port, cluster=name, node_port=node_port),),
        **kw,  # type: ignore[arg-type]
    )


def tables(
    services: tuple[L4Service, ...], eps: dict[str, list[Endpoint]]
) -> tuple[RoutingTable, EndpointTable]:
    return RoutingTable(services=services), EndpointTable(clusters={k: tuple(v) for k, v in eps.items()})


async def ask(ip: str, port: int, line: bytes = b"hi\n", source: str | None = None) -> bytes:
    """One request over a fresh connection; the reply line."""
    reader, writer = await asyncio.open_connection(ip, port, local_addr=(source, 0) if source else None)
    try:
        writer.write(line)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@asynccontextmanager
async def running(
    routing: RoutingTable, endpoints: EndpointTable, settings: L4Settings | None = None, **kw: object
) -> AsyncIterator[L4Proxy]:
    proxy = L4Proxy(routing, endpoints, settings, **kw)  # type: ignore[arg-type]
    await proxy.start("127.0.0.1")
    try:
        yield proxy
    finally:
        await proxy.close()


def test_listeners_cover_node_ports_lb_and_external_ips() -> None:
    svc = L4Service(
        name="ns/web",
        type="LoadBalancer",
        cluster_ips=("10.96.0.5",),
        external_ips=("192.0.2.7",),
        load_balancer_ips=("127.0.100.3",),
        ports=(
            L4Port(name="http", protocol="TCP", port=80, cluster="c80", node_port=30080),
            L4Port(name="dns", protocol="UDP", port=53, cluster="c53", node_port=30053),
        ),
    )
    plain = L4Service(name="ns/internal", type="ClusterIP", cluster_ips=("10.96.0.6",), ports=svc.ports)
    got = listeners(RoutingTable(services=(svc, plain)), "0.0.0.0")
    assert got == {
        Listener("TCP", "0.0.0.0", 30080, "c80", "ns/web"),
        Listener("UDP", "0.0.0.0", 30053, "c53", "ns/web"),
        Listener("TCP", "127.0.100.3", 80, "c80", "ns/web"),
        Listener("UDP", "127.0.100.3", 53, "c53", "ns/web"),
        Listener("TCP", "192.0.2.7", 80, "c80", "ns/web"),
        Listener("UDP", "192.0.2.7", 53, "c53", "ns/web"),
    }


async def test_round_robin_over_three_endpoints_on_lb_ip_and_node_port() -> None:
    async with echoes("a", "b", "c") as eps:
        port, node_port = free_port(LB), free_port()
        routing, table = tables(
            (service("web", port, node_port=node_port),), {"web": [e.endpoint() for e in eps]}
        )
        async with running(routing, table):
            names = [(await ask(LB, port)).split(b":")[0] for _ in range(6)]
            assert sorted(names[:3]) == [b"a", b"b", b"c"]
            assert names[3:] == names[:3]
            assert await ask("127.0.0.1", node_port) in (b"a:hi\n", b"b:hi\n", b"c:hi\n")


async def test_client_ip_affinity_sticks_until_timeout() -> None:
    now = [1000.0]
    async with echoes("a", "b", "c") as eps:
        port = free_port(LB)
        svc = service("web", port, session_affinity="ClientIP", affinity_timeout_seconds=60)
        routing, table = tables((svc,), {"web": [e.endpoint() for e in eps]})
        async with running(routing, table, clock=lambda: now[0]):
            first = await ask(LB, port, source="127.0.0.1")
            for _ in range(4):
                now[0] += 30  # each use renews the 60 s
                assert await ask(LB, port, source="127.0.0.1") == first
            # another client is balanced independently: round robin gives it the next endpoint
            other = await ask(LB, port, source="127.0.0.2")
            assert other != first
            now[0] += 61  # expired: the client is balanced afresh, onto the third endpoint
            assert await ask(LB, port, source="127.0.0.1") != first


async def test_refused_endpoint_is_retried_on_the_next() -> None:
    async with echoes("b") as eps:
        port = free_port(LB)
        dead = Endpoint(ip="127.0.0.1", port=refusing_port())
        routing, table = tables((service("web", port),), {"web": [dead, eps[0].endpoint()]})
        async with running(routing, table):
            for _ in range(4):
                assert await ask(LB, port) == b"b:hi\n"


async def test_no_endpoints_closes_the_connection() -> None:
    port = free_port(LB)
    routing, table = tables((service("web", port),), {"web": []})
    async with running(routing, table):
        reader, writer = await asyncio.open_connection(LB, port)
        writer.write(b"hi\n")
        try:
            got = await asyncio.wait_for(reader.read(100), 5)
        except ConnectionResetError:
            got = b""
        assert got == b""
        writer.close()


async def test_half_close_still_delivers_the_reply() -> None:
    async with echoes("a") as eps:
        port = free_port(LB)
        routing, table = tables((service("web", port),), {"web": [eps[0].endpoint()]})
        async with running(routing, table):
            reader, writer = await asyncio.open_connection(LB, port)
            writer.write(b"one\ntwo\n")
            writer.write_eof()
            # the echo answers the EOF only after it saw it: the proxy passed the half-close through
            got = await asyncio.wait_for(reader.read(), 5)
            assert got == b"a:one\na:two\na:eof:8\n"
            writer.close()


async def test_large_transfer_is_bounded_while_the_endpoint_stalls() -> None:
    """While the endpoint does not read, the client can push only socket buffers plus the proxy's limit."""
    received = hashlib.sha256()
    total = 0
    reading = asyncio.Event()
    done = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal total
        await reading.wait()
        while chunk := await reader.read(1 << 16):
            received.update(chunk)
            total += len(chunk)
        writer.write(str(total).encode())
        await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = free_port(LB)
    routing, table = tables(
        (service("web", port),), {"web": [Endpoint(ip="127.0.0.1", port=server.sockets[0].getsockname()[1])]}
    )
    size = 96 << 20
    block = bytes(range(256)) * 4096  # 1 MiB
    sent = hashlib.sha256()
    try:
        async with running(routing, table):
            reader, writer = await asyncio.open_connection(LB, port)
            pushed = 0
            with suppress(TimeoutError):
                while pushed < size:
                    writer.write(block)
                    await asyncio.wait_for(writer.drain(), 0.5)
                    sent.update(block)
                    pushed += len(block)
            # loopback socket buffers are a few MiB each; unbounded proxy buffering would take it all
            assert pushed < 48 << 20
            sent.update(block)  # the block whose drain timed out is still queued
            pushed += len(block)
            reading.set()
            while pushed < size:
                writer.write(block)
                await writer.drain()
                sent.update(block)
                pushed += len(block)
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), 20)
            assert int(reply) == size
            await asyncio.wait_for(done.wait(), 5)
            assert received.digest() == sent.digest()
            writer.close()
    finally:
        server.close()


async def test_idle_connection_is_closed() -> None:
    async with echoes("a") as eps:
        port = free_port(LB)
        routing, table = tables((service("web", port),), {"web": [eps[0].endpoint()]})
        async with running(routing, table, L4Settings(tcp_idle_timeout=0.2)):
            reader, writer = await asyncio.open_connection(LB, port)
            writer.write(b"hi\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"a:hi\n"
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                got = await asyncio.wait_for(reader.read(100), 5)
            except ConnectionResetError:
                got = b""
            assert got == b""
            assert loop.time() - started < 2
            writer.close()


async def test_update_opens_closes_listeners_and_swaps_endpoints() -> None:
    async with echoes("a", "b") as (a, b):
        old_port, new_port = free_port(LB), free_port(LB)
        routing, table = tables((service("web", old_port),), {"web": [a.endpoint()]})
        async with running(routing, table) as proxy:
            reader, writer = await asyncio.open_connection(LB, old_port)
            writer.write(b"before\n")
            assert await reader.readline() == b"a:before\n"

            routing2, table2 = tables((service("web", new_port),), {"web": [b.endpoint()]})
            await proxy.update(routing2, table2)
            assert proxy.errors == []
            assert proxy.bound() == {Listener("TCP", LB, new_port, "web", "web")}
            with pytest.raises(ConnectionRefusedError):
                await ask(LB, old_port)
            assert await ask(LB, new_port) == b"b:hi\n"
            # the connection accepted on the removed listener carries on to its endpoint
            writer.write(b"after\n")
            assert await reader.readline() == b"a:after\n"
            writer.close()

            # endpoints only: the listener stays, new connections go to the new set
            await proxy.update(routing2, tables((), {"web": [a.endpoint()]})[1])
            assert await ask(LB, new_port) == b"a:hi\n"


async def test_taken_port_is_reported_and_others_still_serve() -> None:
    async with echoes("a") as eps:
        taken = socket.socket()
        taken.bind(("127.0.100.2", 0))
        taken.listen()
        try:
            port = free_port(LB)
            busy = service("ns/busy", taken.getsockname()[1], lb=("127.0.100.2",))
            good = service("ns/good", port)
            # TEST-NET-1 is on no interface of this machine
            elsewhere = service("ns/elsewhere", 80, lb=("192.0.2.1",))
            # the same address as ns/good: the first Service by name keeps it
            twin = service("ns/twin", port)
            routing, table = tables((busy, good, elsewhere, twin), {"ns/good": [eps[0].endpoint()]})
            async with running(routing, table) as proxy:
                errors = dict(proxy.errors)
                assert sorted(errors) == ["ns/busy", "ns/elsewhere", "ns/twin"]
                assert f"127.0.100.2:{taken.getsockname()[1]}" in errors["ns/busy"]
                assert "in use" in errors["ns/busy"]
                assert "192.0.2.1:80" in errors["ns/elsewhere"]
                assert "claimed by Service ns/good" in errors["ns/twin"]
                assert await ask(LB, port) == b"a:hi\n"
        finally:
            taken.close()


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.name.encode() + b":" + data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


async def test_udp_sessions_balance_reply_and_expire() -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_datagram_endpoint(functools.partial(UdpEcho, n), local_addr=("127.0.0.1", 0))
        for n in "ab"
    ]
    port = free_port(LB, socket.SOCK_DGRAM)
    svc = L4Service(
        name="dns",
        type="LoadBalancer",
        load_balancer_ips=(LB,),
        ports=(L4Port(name="dns", protocol="UDP", port=port, cluster="dns"),),
    )
    eps = [Endpoint(ip="127.0.0.1", port=t.get_extra_info("sockname")[1]) for t, _ in servers]
    routing, table = tables((svc,), {"dns": eps})
    clients = []
    try:
        async with running(routing, table, L4Settings(udp_idle_timeout=0.3)):
            for _ in range(2):
                clients.append(await loop.create_datagram_endpoint(UdpClient, remote_addr=(LB, port)))

            async def query(i: int, data: bytes) -> bytes:
                transport, client = clients[i]
                transport.sendto(data)
                return await asyncio.wait_for(client.replies.get(), 5)

            first = await query(0, b"q1")
            second = await query(1, b"q1")
            assert {first, second} == {b"a:q1", b"b:q1"}
            # a session keeps its endpoint
            assert (await query(0, b"q2"))[:2] == first[:2]
            assert (await query(1, b"q2"))[:2] == second[:2]
            # once idle past the timeout it is gone; round robin gives the next session the other endpoint
            await asyncio.sleep(0.8)
            again = await query(1, b"q3")
            assert again[:2] != second[:2]
    finally:
        for t, _ in clients:
            t.close()
        for t, _ in servers:
            t.close()


async def test_udp_affinity_and_sessions_follow_endpoint_removal() -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_datagram_endpoint(functools.partial(UdpEcho, n), local_addr=("127.0.0.1", 0))
        for n in "ab"
    ]
    port = free_port(LB, socket.SOCK_DGRAM)
    svc = L4Service(
        name="dns",
        type="LoadBalancer",
        load_balancer_ips=(LB,),
        ports=(L4Port(name="dns", protocol="UDP", port=port, cluster="dns"),),
        session_affinity="ClientIP",
    )
    eps = {
        n: Endpoint(ip="127.0.0.1", port=t.get_extra_info("sockname")[1])
        for n, (t, _) in zip("ab", servers, strict=True)
    }
    routing, table = tables((svc,), {"dns": list(eps.values())})
    clients = []
    try:
        async with running(routing, table) as proxy:
            for _ in range(3):
                clients.append(await loop.create_datagram_endpoint(UdpClient, remote_addr=(LB, port)))

            async def query(i: int, data: bytes) -> bytes:
                transport, client = clients[i]
                transport.sendto(data)
                return await asyncio.wait_for(client.replies.get(), 5)

            # three sockets, one client IP: one endpoint for all of them
            names = {(await query(i, b"q"))[:1] for i in range(3)}
            assert len(names) == 1
            kept = names.pop().decode()
            other = "b" if kept == "a" else "a"
            # the sticky endpoint goes away: live sessions move rather than talk into the void
            await proxy.update(routing, tables((), {"dns": [eps[other]]})[1])
            assert await query(0, b"q") == f"{other}:q".encode()
    finally:
        for t, _ in clients:
            t.close()
        for t, _ in servers:
            t.close()
