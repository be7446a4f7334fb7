"""Black-box: `serve --kubernetes` against the fake API server, with real echo backends on loopback.

Objects are created, changed and deleted through the fake; every assertion is on real HTTP traffic through
the gateway (or on what it reports), within a bounded time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from kubegate.app import Gateway, ServeConfig
from kubegate.cli import main
from kubegate.sources.kubernetes.config import KubeSettings, resolve
from kubegate.sources.kubernetes.controller import ControllerSettings
from kubegate.sources.kubernetes.source import KubernetesSource
from kubegate.translate.context import Options
from tests.fakes.apiserver import FakeApiServer
from tests.proxy.helpers import Client, echo_backends, get

HOST = "web.example.com"
CLASS = "kubegate"


def write_kubeconfig(path: Path, server: str) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }
    path.write_text(yaml.safe_dump(document))
    return path


# ----------------------------------------------------------------------------------------------------
# objects


def ingress_class(name: str = CLASS, controller: str = "kubegate.io/ingress-controller") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    }


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}], **spec},
    }


def endpoints(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": port}]}],
    }


def endpoint_slice(service_name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def ingress(
    name: str, *routes: tuple[str, str], host: str = HOST, class_name: str | None = CLASS
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": path,
                            "pathType": "Prefix",
                            "backend": {"service": {"name": backend, "port": {"number": 80}}},
                        }
                        for path, backend in routes
                    ]
                },
            }
        ]
    }
    if class_name is not None:
        spec["ingressClassName"] = class_name
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def backend(api: FakeApiServer, name: str, port: int, *, slices: bool = False) -> None:
    api.create(service(name))
    api.create(endpoint_slice(name, port) if slices else endpoints(name, port))


# ----------------------------------------------------------------------------------------------------
# the gateway and traffic


class GatedTransport(httpx2.AsyncBaseTransport):
    """The real network, except that watch requests wait while the gate is closed: a partition between
    kubegate and the API server that a test opens and closes."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.open = asyncio.Event()
        self.open.set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.params.get("watch") == "1":
            await self.open.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def gateway(
    api: FakeApiServer,
    tmp_path: Path,
    *,
    options: Options | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    namespace: str | None = None,
    controller: ControllerSettings | None = None,
) -> AsyncIterator[Gateway]:
    connection = resolve(
        KubeSettings(kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", api.url)), transport=transport
    )
    config = ServeConfig(
        paths=(),
        options=options or Options(serve_ingress_without_class=False, addresses_from_spec=True),
        listen=("127.0.0.1", 0),
        tls_listen=None,
        admin_listen=None,
        node_address=None,
        access_log=None,
        drain_seconds=0.5,
        kubernetes=connection,
        kubernetes_namespace=namespace,
        controller=controller or ControllerSettings(),
    )
    gw = Gateway(config)
    await asyncio.wait_for(gw.start(), 10)
    try:
        yield gw
    finally:
        await gw.stop()


def source_of(gw: Gateway) -> KubernetesSource:
    source = gw.reconciler.source
    assert isinstance(source, KubernetesSource)
    return source


async def fetch(gw: Gateway, path: str, host: str = HOST) -> tuple[int, str]:
    assert gw.address is not None
    client = await Client.connect(gw.address[1])
    try:
        client.send(get(path, host))
        response = await client.response()
        return response.status, response.json()["name"] if response.status == 200 else ""
    finally:
        await client.close()


async def eventually(
    gw: Gateway, path: str, expected: tuple[int, str], seconds: float = 5.0, host: str = HOST
) -> float:
    """Seconds until GET path answers as expected; fails after ``seconds``."""
    started = time.monotonic()
    last: tuple[int, str] = (0, "")
    while time.monotonic() - started < seconds:
        last = await fetch(gw, path, host)
        if last == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"GET {path}: still {last} after {seconds} s, expected {expected}")


async def watching(api: FakeApiServer, gw: Gateway) -> None:
    """Until every informer has its watch open on the fake (the first list alone does not mean that)."""
    informers = source_of(gw).informers
    deadline = time.monotonic() + 5
    while api.watch_count() < len(informers):
        assert time.monotonic() < deadline, f"{api.watch_count()} watches open"
        await asyncio.sleep(0.01)


def problems(gw: Gateway) -> list[str]:
    return [str(problem) for problem in gw.reconciler.last_problems]


# ----------------------------------------------------------------------------------------------------


async def test_traffic_follows_services_endpoints_and_ingresses(api: FakeApiServer, tmp_path: Path) -> None:
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        backend(api, "s1", ports["one"])
        backend(api, "s2", ports["two"], slices=True)
        api.create(ingress("web", ("/foo", "s1")))
        async with gateway(api, tmp_path) as gw:
            assert await fetch(gw, "/foo/x") == (200, "one")
            assert (await fetch(gw, "/bar"))[0] == 404

            api.replace(ingress("web", ("/foo", "s1"), ("/bar", "s2")))
            await eventually(gw, "/bar", (200, "two"))  # s2's endpoints come from an EndpointSlice

            api.replace(endpoints("s1", ports["two"]))
            await eventually(gw, "/foo", (200, "two"))

            api.delete("v1", "Endpoints", "default", "s1")
            await eventually(gw, "/foo", (503, ""))

            api.delete("networking.k8s.io/v1", "Ingress", "default", "web")
            await eventually(gw, "/bar", (404, ""))


async def test_only_our_ingress_class_is_served(api: FakeApiServer, tmp_path: Path) -> None:
    async with echo_backends("one") as ports:
        api.create(ingress_class())
        api.create(ingress_class("other", controller="example.com/other"))
        backend(api, "s1", ports["one"])
        api.create(ingress("ours", ("/ours", "s1")))
        api.create(ingress("theirs", ("/theirs", "s1"), class_name="other"))
        api.create(ingress("classless", ("/none", "s1"), class_name=None))
        # broken ones: ours is reported, the other controller's is none of our business
        api.create(ingress("our-bad", ("/x", "s1"), host="Bad_Ours"))
        api.create(ingress("their-bad", ("/y", "s1"), host="Bad_Theirs", class_name="other"))
        async with gateway(api, tmp_path) as gw:
            assert await fetch(gw, "/ours") == (200, "one")
            assert (await fetch(gw, "/theirs"))[0] == 404
            assert (await fetch(gw, "/none"))[0] == 404
            reported = problems(gw)
            assert any("Ingress default/our-bad spec.rules[0].host" in p for p in reported), reported
            assert not any("their-bad" in p for p in reported), reported
        # --watch-ingress-without-class
        options = Options(serve_ingress_without_class=True, addresses_from_spec=True)
        async with gateway(api, tmp_path, options=options) as gw:
            assert await fetch(gw, "/none") == (200, "one")
            assert (await fetch(gw, "/theirs"))[0] == 404


async def test_namespace_scoping(api: FakeApiServer, tmp_path: Path) -> None:
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        for namespace, port in (("team", ports["one"]), ("default", ports["two"])):
            api.create({**service("s1"), "metadata": {"name": "s1", "namespace": namespace}})
            api.create({**endpoints("s1", port), "metadata": {"name": "s1", "namespace": namespace}})
            routed = ingress("web", (f"/{namespace}", "s1"))
            api.create({**routed, "metadata": {"name": "web", "namespace": namespace}})
        async with gateway(api, tmp_path, namespace="team") as gw:
            assert await fetch(gw, "/team") == (200, "one")  # the IngressClass is cluster-wide: seen
            assert (await fetch(gw, "/default"))[0] == 404


async def test_debug_informers_shows_each_watch(api: FakeApiServer, tmp_path: Path) -> None:
    api.create(ingress_class())
    connection = resolve(KubeSettings(kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", api.url)))
    config = ServeConfig(
        paths=(),
        options=Options(serve_ingress_without_class=False, addresses_from_spec=True),
        listen=("127.0.0.1", 0),
        tls_listen=None,
        admin_listen=("127.0.0.1", 0),
        node_address=None,
        access_log=None,
        kubernetes=connection,
    )
    gw = Gateway(config)
    await asyncio.wait_for(gw.start(), 10)
    try:
        assert gw.admin is not None
        async with httpx2.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{gw.admin.port}/debug/informers")
        assert response.status_code == 200
        lines = response.text.splitlines()
        assert lines[0].startswith(f"source {api.url} (all namespaces): synced")
        (classes,) = [line for line in lines if line.startswith("IngressClass:")]
        assert "objects=1 lists=1" in classes
    finally:
        await gw.stop()


async def test_a_dropped_watch_resumes_without_a_relist(api: FakeApiServer, tmp_path: Path) -> None:
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        backend(api, "s1", ports["one"])
        backend(api, "s2", ports["two"])
        api.create(ingress("web", ("/foo", "s1")))
        async with gateway(api, tmp_path) as gw:
            assert await fetch(gw, "/foo") == (200, "one")
            await watching(api, gw)
            api.drop_watches(abrupt=True)
            api.replace(ingress("web", ("/foo", "s2")))
            await eventually(gw, "/foo", (200, "two"))
            informers = source_of(gw).informers
            deadline = time.monotonic() + 5
            while not all(informer.watches >= 2 for informer in informers):
                assert time.monotonic() < deadline, [(str(i), i.watches) for i in informers]
                await asyncio.sleep(0.02)
            assert all(informer.lists == 1 for informer in informers), [(str(i), i.lists) for i in informers]


async def test_a_deletion_in_a_compacted_gap_is_noticed(api: FakeApiServer, tmp_path: Path) -> None:
    transport = GatedTransport()
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        backend(api, "s1", ports["one"])
        backend(api, "s2", ports["two"])
        api.create(ingress("gone", ("/gone", "s1")))
        api.create(ingress("stays", ("/stays", "s2")))
        async with gateway(api, tmp_path, transport=transport) as gw:
            assert await fetch(gw, "/gone") == (200, "one")
            # partition: watches end and cannot reopen; the deletion's event is compacted away
            transport.open.clear()
            api.drop_watches(abrupt=True)
            api.delete("networking.k8s.io/v1", "Ingress", "default", "gone")
            api.compact()
            await asyncio.sleep(0.1)
            assert await fetch(gw, "/gone") == (200, "one")  # not seen yet
            transport.open.set()
            await eventually(gw, "/gone", (404, ""))
            assert await fetch(gw, "/stays") == (200, "two")
            ingresses = next(i for i in source_of(gw).informers if i.resource.kind == "Ingress")
            assert ingresses.expirations >= 1 and ingresses.lists >= 2


async def test_a_410_mid_stream_relists(api: FakeApiServer, tmp_path: Path) -> None:
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        backend(api, "s1", ports["one"])
        backend(api, "s2", ports["two"])
        api.create(ingress("web", ("/foo", "s1")))
        async with gateway(api, tmp_path) as gw:
            assert await fetch(gw, "/foo") == (200, "one")
            await watching(api, gw)
            api.expire_watches()
            api.replace(ingress("web", ("/foo", "s2")))
            await eventually(gw, "/foo", (200, "two"))
            informers = source_of(gw).informers
            assert all(informer.expirations >= 1 for informer in informers), [
                (str(i), i.expirations) for i in informers
            ]


async def test_a_bad_object_is_reported_and_the_others_keep_serving(
    api: FakeApiServer, tmp_path: Path
) -> None:
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        backend(api, "s1", ports["one"])
        backend(api, "s2", ports["two"])
        api.create(ingress("web", ("/foo", "s1")))
        # the fake, unlike kube-apiserver, does not validate hosts: an object only our decoder refuses
        api.create(ingress("broken", ("/broken", "s2"), host="Bad_Host.example.com"))
        async with gateway(api, tmp_path) as gw:
            assert await fetch(gw, "/foo") == (200, "one")
            (text,) = [p for p in problems(gw) if "broken" in p]
            assert text.startswith("kubernetes Ingress default/broken spec.rules[0].host: ")
            # a later bad edit of a good object keeps its last good version serving
            api.replace(ingress("web", ("/foo", "s2"), host="Also_Bad"))
            deadline = time.monotonic() + 5
            while not any("Ingress default/web spec.rules[0].host" in p for p in problems(gw)):
                assert time.monotonic() < deadline, problems(gw)
                await asyncio.sleep(0.02)
            assert await fetch(gw, "/foo") == (200, "one")
            # fixing the broken one serves it
            api.replace(ingress("broken", ("/broken", "s2")))
            await eventually(gw, "/broken", (200, "two"))


async def test_cluster_ips_and_node_ports_come_from_the_api_server(
    api: FakeApiServer, tmp_path: Path
) -> None:
    api.create(service("np", type="NodePort"))
    stored = api.get("v1", "Service", "default", "np")
    assert stored is not None
    cluster_ip, node_port = stored["spec"]["clusterIP"], stored["spec"]["ports"][0]["nodePort"]
    # our own ranges differ from the API server's: its values are followed anyway
    options = Options(
        serve_ingress_without_class=False,
        addresses_from_spec=True,
        service_cidr="10.200.0.0/16",
        node_port_range=(32000, 32100),
    )
    async with gateway(api, tmp_path, options=options) as gw:
        translation = gw.reconciler.translation
        assert translation is not None
        (described,) = [s for s in translation.routing.services if s.name == "default/np"]
        assert described.cluster_ips == (cluster_ip,)
        assert described.ports[0].node_port == node_port
        assert not [d for d in translation.diagnostics if d.object.name == "np"]


async def test_one_change_among_a_thousand_ingresses_is_decoded_once_and_served_fast(
    api: FakeApiServer, tmp_path: Path
) -> None:
    async with echo_backends("one", "two") as ports:
        api.create(ingress_class())
        backend(api, "s1", ports["one"])
        backend(api, "s2", ports["two"])
        for index in range(1000):
            api.create(ingress(f"web{index}", (f"/app{index}", "s1")))
        async with gateway(api, tmp_path) as gw:
            assert await fetch(gw, "/app999") == (200, "one")
            source = source_of(gw)
            generation = source.generation
            # warm: the translator's memo is filled by the first translation
            samples = []
            for round_ in range(3):
                target = "s2" if round_ % 2 == 0 else "s1"
                api.replace(ingress("web500", ("/app500", target)))
                samples.append(await eventually(gw, "/app500", (200, "two" if target == "s2" else "one")))
            assert source.generation == generation + 3  # one decoded change each, nothing else
            print(
                f"change-to-traffic with 1,000 Ingresses: {', '.join(f'{s * 1e3:.0f} ms' for s in samples)}"
            )
            # the target is 200 ms; allow for a shared, loaded test machine
            assert min(samples) < 0.5, samples


# ----------------------------------------------------------------------------------------------------
# the command line


def test_path_and_kubernetes_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "examples", "--kubernetes"]) == 2
    assert "PATH (examples) and --kubernetes exclude each other" in capsys.readouterr().err


def test_serve_needs_a_path_or_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "give a manifest PATH, or --kubernetes" in capsys.readouterr().err


def test_kubernetes_flags_need_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "examples", "--context", "x"]) == 2
    assert "--context needs --kubernetes" in capsys.readouterr().err


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--kubernetes", "--kubeconfig", str(tmp_path / "missing")]) == 2
    assert f"kubeconfig {tmp_path / 'missing'}: file not found" in capsys.readouterr().err


def test_serve_kubernetes_as_a_process(api: FakeApiServer, tmp_path: Path) -> None:

    api.create(ingress_class())
    api.create(service("s1"))
    # the backend is this test's own socket: the process proxies to it
    with socket.socket() as backend_socket:
        backend_socket.bind(("127.0.0.1", 0))
        backend_socket.listen()
        api.create(endpoints("s1", backend_socket.getsockname()[1]))
        api.create(ingress("web", ("/", "s1")))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            listen_port = probe.getsockname()[1]
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "kubegate.cli", "serve", "--kubernetes", "--workers", "1"),
                *("--listen", f"127.0.0.1:{listen_port}", "--tls-listen", "off"),
                *("--admin-listen", "127.0.0.1:0", "--node-address", "off", "--access-log", "off"),
                *("--drain-timeout", "0.5"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            answer = _first_request_through(listen_port, backend_socket, seconds=20)
            assert answer.startswith(b"GET /hello HTTP/1.1")
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "synced" in err


def _first_request_through(listen_port: int, backend_socket: socket.socket, seconds: float) -> bytes:
    """Send GET /hello to the gateway until it is up; return what reached the backend."""

    deadline = time.monotonic() + seconds
    backend_socket.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            client = socket.create_connection(("127.0.0.1", listen_port), timeout=1)
        except OSError:
            time.sleep(0.1)
            continue
        with client:
            client.sendall(f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            try:
                upstream, _ = backend_socket.accept()
            except TimeoutError:
                continue
            with upstream:
                upstream.settimeout(2)
                received: bytes = upstream.recv(65536)
                return received
    raise AssertionError(f"no request reached the backend in {seconds} s")
