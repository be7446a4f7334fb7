"""Black-box: a real gateway on a loopback port, serving a manifest directory that changes under it."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme

from kubegate.app import Gateway, ServeConfig
from kubegate.ir.model import RoutingTable
from kubegate.translate.context import Options, Pool
from tests.proxy.helpers import Client, echo_backends, get

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}}}
subsets:
  - addresses: [{{ip: 127.0.0.1}}]
    ports: [{{name: http, port: {port}}}]
"""

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web}}
spec:
  rules:
    - host: foo.bar.com
      http:
        paths:
{paths}
"""

PATH = """\
          - path: {path}
            pathType: Prefix
            backend: {{service: {{name: {service}, port: {{number: 80}}}}}}
"""


def ingress(*routes: tuple[str, str]) -> str:
    return INGRESS.format(paths="".join(PATH.format(path=p, service=s) for p, s in routes))


@asynccontextmanager
async def gateway(manifests: Path) -> AsyncIterator[Gateway]:
    config = ServeConfig(
        paths=(str(manifests),),
        options=Options(),
        listen=("127.0.0.1", 0),
        tls_listen=("127.0.0.1", 0),
        admin_listen=("127.0.0.1", 0),
        node_address=None,
        access_log=None,
        drain_seconds=1.0,
    )
    gw = Gateway(config)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def fetch(port: int, path: str, host: str = "foo.bar.com") -> tuple[int, str]:
    client = await Client.connect(port)
    try:
        client.send(get(path, host))
        response = await client.response()
        name = response.json()["name"] if response.status == 200 else ""
        return response.status, name
    finally:
        await client.close()


async def eventually(port: int, path: str, expected: tuple[int, str], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        last = await fetch(port, path)
        if last == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"GET {path}: still {last} after {seconds} s, expected {expected}")


async def test_routes_by_the_manifests_and_follows_file_changes(tmp_path: Path) -> None:
    async with echo_backends("one", "two") as ports:
        (tmp_path / "svc.yaml").write_text(
            SERVICE.format(name="s1", port=ports["one"])
            + "---\n"
            + SERVICE.format(name="s2", port=ports["two"])
        )
        (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1")))
        async with gateway(tmp_path) as gw:
            assert gw.address is not None
            port = gw.address[1]
            assert await fetch(port, "/foo/x") == (200, "one")
            assert (await fetch(port, "/bar"))[0] == 404
            assert (await fetch(port, "/foo", host="other.example"))[0] == 404

            (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1"), ("/bar", "s2")))
            await eventually(port, "/bar", (200, "two"))

            # an endpoint-only change: s1 now points at the second backend, and routes are not recompiled
            proxy = gw.proxy
            assert proxy is not None
            recompiles: list[object] = []
            original = proxy.update_routing

            def counting(table: RoutingTable) -> None:
                recompiles.append(table)
                original(table)

            proxy.update_routing = counting  # type: ignore[method-assign]
            (tmp_path / "svc.yaml").write_text(
                SERVICE.format(name="s1", port=ports["two"])
                + "---\n"
                + SERVICE.format(name="s2", port=ports["two"])
            )
            await eventually(port, "/foo", (200, "two"))
            assert recompiles == []


async def test_a_broken_edit_keeps_the_last_good_configuration(tmp_path: Path) -> None:
    async with echo_backends("one") as ports:
        (tmp_path / "svc.yaml").write_text(SERVICE.format(name="s1", port=ports["one"]))
        (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1")))
        async with gateway(tmp_path) as gw:
            assert gw.address is not None
            port = gw.address[1]
            assert await fetch(port, "/foo") == (200, "one")
            # pathType removed: invalid in networking.k8s.io/v1
            (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1")).replace("pathType: Prefix", ""))
            (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
            deadline = time.monotonic() + 5
            while gw.reconciler.reloads < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert gw.reconciler.reloads >= 2
            assert any("pathType" in str(p) for p in gw.reconciler.last_problems)
            assert any("broken.yaml" in str(p) for p in gw.reconciler.last_problems)
            assert await fetch(port, "/foo") == (200, "one")


async def test_no_request_fails_while_manifests_change_100_times(tmp_path: Path) -> None:
    async with echo_backends("one", "two") as ports:
        services = (
            SERVICE.format(name="s1", port=ports["one"])
            + "---\n"
            + SERVICE.format(name="s2", port=ports["two"])
        )
        (tmp_path / "svc.yaml").write_text(services)
        (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1")))
        async with gateway(tmp_path) as gw:
            assert gw.address is not None
            port = gw.address[1]
            failures: list[str] = []
            sent = 0
            stop = asyncio.Event()

            async def traffic() -> None:
                nonlocal sent
                client = await Client.connect(port)
                try:
                    while not stop.is_set() and sent < 20_000:
                        client.send(get("/foo/stable", "foo.bar.com"))
                        response = await client.response()
                        sent += 1
                        if response.status != 200:
                            failures.append(f"{response.status} {bytes(response.body)[:80]!r}")
                finally:
                    await client.close()

            workers = [asyncio.create_task(traffic()) for _ in range(4)]
            try:
                for change in range(100):
                    extra = [(f"/extra-{change}", "s2")] if change % 2 else []
                    (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1"), *extra))
                    # force a reload per change instead of relying on watch timing
                    gw.reconciler.reload()
                    await asyncio.sleep(0.01)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            assert gw.reconciler.store.version >= 100
            assert sent > 100
            assert failures == []
            # the last change (99, odd) added /extra-99: it must be serving
            assert await fetch(port, "/extra-99") == (200, "two")


async def test_https_listener_serves_ingress_tls_from_a_secret(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("foo.bar.com")
    secret = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: foo-tls}\ntype: kubernetes.io/tls\ndata:\n"
        f"  tls.crt: {base64.b64encode(cert.cert_chain_pems[0].bytes()).decode()}\n"
        f"  tls.key: {base64.b64encode(cert.private_key_pem.bytes()).decode()}\n"
    )
    async with echo_backends("one") as ports:
        (tmp_path / "svc.yaml").write_text(SERVICE.format(name="s1", port=ports["one"]))
        tls = "  tls: [{hosts: [foo.bar.com], secretName: foo-tls}]\n"
        (tmp_path / "ing.yaml").write_text(ingress(("/foo", "s1")).replace("spec:\n", "spec:\n" + tls, 1))
        (tmp_path / "secret.yaml").write_text(secret)
        async with gateway(tmp_path) as gw:
            assert gw.address is not None and gw.tls_address is not None
            client_context = ssl.create_default_context()
            ca.configure_trust(client_context)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gw.tls_address[1], ssl=client_context, server_hostname="foo.bar.com"
            )
            client = Client(reader, writer)
            client.send(get("/foo", "foo.bar.com"))
            response = await client.response()
            assert response.status == 200
            assert response.json()["name"] == "one"
            assert ("X-Forwarded-Proto", "https") in [tuple(h) for h in response.json()["headers"]]
            await client.close()
            # plain HTTP to a host with TLS is redirected (ingress-nginx ssl-redirect default)
            plain = await Client.connect(gw.address[1])
            plain.send(get("/foo?x=1", "foo.bar.com"))
            redirect = await plain.response()
            await plain.close()
            assert redirect.status == 308
            location = redirect.header("Location") or ""
            assert location.startswith("https://foo.bar.com") and location.endswith("/foo?x=1")


def _l4_config(path: Path, **changes: Any) -> ServeConfig:
    """Serve ``path`` on loopback, nodePorts and LoadBalancer IPs on 127.0.0.1, no TLS or admin listener."""
    settings: dict[str, Any] = {"options": Options(), **changes}
    return ServeConfig(
        paths=(str(path),),
        listen=("127.0.0.1", 0),
        tls_listen=None,
        admin_listen=None,
        node_address="127.0.0.1",
        access_log=None,
        drain_seconds=1.0,
        **settings,
    )


async def test_a_loadbalancer_service_answers_on_its_external_ip_and_nodeport(tmp_path: Path) -> None:
    lb_pool = "127.0.123.0/24"
    with socket.socket() as probe:
        probe.bind(("127.0.123.1", 0))
        service_port = probe.getsockname()[1]
    async with echo_backends("lb") as ports:
        (tmp_path / "svc.yaml").write_text(
            SERVICE.format(name="shop", port=ports["lb"])
            .replace("spec:\n", "spec:\n  type: LoadBalancer\n", 1)
            .replace("port: 80}", f"port: {service_port}}}", 1)
        )
        config = _l4_config(
            tmp_path, options=Options(pools=(Pool(name="test", addresses=(lb_pool,), avoid_buggy_ips=True),))
        )
        gw = Gateway(config)
        await gw.start()
        try:
            translation = gw.reconciler.translation
            assert translation is not None
            (service,) = translation.routing.services
            assert service.load_balancer_ips == ("127.0.123.1",)
            node_port = service.ports[0].node_port
            assert node_port is not None
            for address, port in (("127.0.123.1", service_port), ("127.0.0.1", node_port)):
                reader, writer = await asyncio.open_connection(address, port)
                client = Client(reader, writer)
                client.send(get("/", "anything"))
                response = await client.response()
                await client.close()
                assert response.json()["name"] == "lb", (address, port)
        finally:
            await gw.stop()


async def test_an_address_this_machine_lacks_is_reported_once_not_on_every_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # an external IP from a documentation range: no interface here has it, so it cannot be bound
    (tmp_path / "svc.yaml").write_text(
        SERVICE.format(name="ext", port=9).replace("spec:\n", "spec:\n  externalIPs: [192.0.2.10]\n", 1)
    )
    config = _l4_config(tmp_path, watch=False)
    caplog.set_level(logging.ERROR, logger="kubegate")
    gw = Gateway(config)
    await gw.start()
    try:
        for port in (10, 11, 12):
            # an endpoint change: another reload, the listeners retried
            (tmp_path / "svc.yaml").write_text(
                SERVICE.format(name="ext", port=port).replace(
                    "spec:\n", "spec:\n  externalIPs: [192.0.2.10]\n", 1
                )
            )
            gw.reconciler.reload()
            await asyncio.sleep(0.1)
    finally:
        await gw.stop()
    reported = [r for r in caplog.records if "192.0.2.10" in r.getMessage()]
    assert len(reported) == 1, [r.getMessage() for r in reported]
    assert "cannot listen on TCP 192.0.2.10:80" in reported[0].getMessage()
