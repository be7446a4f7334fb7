"""The proxy over real loopback sockets, against echo and purpose-built backends."""

from __future__ import annotations

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
