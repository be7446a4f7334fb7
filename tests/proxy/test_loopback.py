"""The proxy over real loopback sockets, against echo and purpose-built backends."""

from __future__ import annotations

import asyncio

from kubegate.ir.model import Backend, Cluster, Endpoint, EndpointTable, Route, RoutingTable, VirtualHost
from kubegate.planes.proxy.http import ProxySettings
from tests.proxy.helpers import Client, echo_backends, get, prefix, proxy, table_for


async def test_routes_by_host_and_path_and_rewrites() -> None:
    async with echo_backends("a", "b") as ports:
        routing = table_for(
            {
                "a.example.com": (prefix("/", "a"),),
                "": (prefix("/api", "b", rewrite_target="/v1"), prefix("/", "a")),
            }
        )
        async with proxy(routing, {"a": [ports["a"]], "b": [ports["b"]]}) as (_, port):
            c = await Client.connect(port)
            c.send(get("/x", host="A.example.com:8080"))
            r = await c.response()
            assert r.status == 200
            assert r.json()["name"] == "a"
            c.send(get("/api/users?id=3", host="other"))
            r = await c.response()
            body = r.json()
            assert (body["name"], body["path"], body["query"]) == ("b", "/v1/users", "id=3")
            headers = {k.lower(): v for k, v in body["headers"]}
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-host"] == "other"
            assert headers["host"] == "other"
            await c.close()


async def test_keep_alive_reuses_upstream_connections() -> None:
    async with (
        echo_backends("a") as ports,
        proxy(table_for({"": (prefix("/", "a"),)}), {"a": [ports["a"]]}) as (
            server,
            port,
        ),
    ):
        for _ in range(3):
            c = await Client.connect(port)
            for i in range(5):
                c.send(get(f"/r{i}"))
                r = await c.response()
                assert r.status == 200
                assert r.json()["path"] == f"/r{i}"
            await c.close()
        assert server.pool.opened == {("127.0.0.1", ports["a"]): 1}
        assert server.stats.requests == 15


async def test_pipelined_requests_answer_in_order() -> None:
    async with (
        echo_backends("a") as ports,
        proxy(table_for({"": (prefix("/", "a"),)}), {"a": [ports["a"]]}) as (
            _,
            port,
        ),
    ):
        c = await Client.connect(port)
        c.send(get("/one") + get("/two") + get("/three"))
        paths = [(await c.response()).json()["path"] for _ in range(3)]
        assert paths == ["/one", "/two", "/three"]
        await c.close()


async def test_http10_client_is_closed_unless_keep_alive() -> None:
    async with (
        echo_backends("a") as ports,
        proxy(table_for({"": (prefix("/", "a"),)}), {"a": [ports["a"]]}) as (
            _,
            port,
        ),
    ):
        c = await Client.connect(port)
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        r = await c.response()
        assert r.status == 200 and r.json()["path"] == "/old"
        assert await c.closed()
        c = await Client.connect(port)
        c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = await c.response()
        assert r.header("Connection") == "keep-alive"
        c.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await c.response()).json()["path"] == "/b"
        await c.close()


async def test_head_has_no_body_and_connection_stays_usable() -> None:
    async with (
        echo_backends("a") as ports,
        proxy(table_for({"": (prefix("/", "a"),)}), {"a": [ports["a"]]}) as (
            server,
            port,
        ),
    ):
        c = await Client.connect(port)
        c.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        r = await c.response(head=True)
        assert r.status == 200
        assert int(r.header("Content-Length") or 0) > 0
        c2 = await Client.connect(port)
        c2.send(get("/after"))
        assert (await c2.response()).json()["path"] == "/after"
        assert server.pool.opened == {("127.0.0.1", ports["a"]): 1}
        await c.close()
        await c2.close()


async def test_weighted_backends_and_external_name() -> None:

    async with echo_backends("heavy", "never", "ext") as ports:
        split = Route(
            match="Prefix",
            path="/",
            backends=(Backend(cluster="heavy", weight=100), Backend(cluster="never", weight=0)),
        )
        ext = Route(match="Prefix", path="/ext", backends=(Backend(cluster="ext"),))
        routing = RoutingTable(
            virtual_hosts=(VirtualHost(host="", routes=(ext, split)),),
            clusters=(Cluster(name="ext", service="ns/ext", port=ports["ext"], external_name="localhost"),),
        )
        table = EndpointTable(
            clusters={
                "heavy": (Endpoint(ip="127.0.0.1", port=ports["heavy"]),),
                "never": (Endpoint(ip="127.0.0.1", port=ports["never"]),),
            }
        )
        async with proxy(routing, table) as (_, port):
            c = await Client.connect(port)
            for _ in range(20):
                c.send(get("/w"))
                assert (await c.response()).json()["name"] == "heavy"
            c.send(get("/ext/x"))
            assert (await c.response()).json()["name"] == "ext"
            await c.close()


async def test_hash_balancing_is_sticky_per_key_through_the_proxy() -> None:
    async with echo_backends("e1", "e2", "e3") as ports:
        routing = RoutingTable(
            virtual_hosts=(VirtualHost(host="", routes=(prefix("/", "svc"),)),),
            clusters=(
                Cluster(name="svc", service="ns/svc", port=80, balance="hash", hash_by="$http_x_user"),
            ),
        )
        table = EndpointTable(
            clusters={"svc": tuple(Endpoint(ip="127.0.0.1", port=p) for p in ports.values())}
        )
        async with proxy(routing, table) as (_, port):
            c = await Client.connect(port)
            owners: dict[str, set[str]] = {}
            for i in range(60):
                user = f"user-{i % 12}"
                c.send(get("/", extra=f"X-User: {user}\r\n"))
                owners.setdefault(user, set()).add((await c.response()).json()["name"])
            await c.close()
            assert all(len(names) == 1 for names in owners.values())
            assert len(set().union(*owners.values())) > 1


async def test_idle_upstream_connections_expire_and_pool_is_capped() -> None:

    settings = ProxySettings(upstream_idle_timeout=0.2, upstream_max_idle=2)
    async with (
        echo_backends("a") as ports,
        proxy(table_for({"": (prefix("/", "a"),)}), {"a": [ports["a"]]}, settings) as (server, port),
    ):
        address = ("127.0.0.1", ports["a"])
        clients = [await Client.connect(port) for _ in range(4)]
        for c in clients:
            c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        # four concurrent requests need four upstream connections; only two stay idle
        for c in clients:
            assert (await c.response()).status == 200
        assert server.pool.opened[address] >= 2
        assert server.pool.idle_count(address) <= 2
        await asyncio.sleep(0.5)
        assert server.pool.idle_count(address) == 0
        clients[0].send(get("/again"))
        assert (await clients[0].response()).status == 200
        for c in clients:
            await c.close()
