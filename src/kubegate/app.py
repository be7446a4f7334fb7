"""`kubegate serve`: the long-running gateway on a directory of manifests.

One process (or one per worker with --workers, sharing the ports via SO_REUSEPORT) runs: the reconciler
watching the manifests, the built-in proxy publishing every new translation atomically, and the admin
listener (only in the first worker, which is also the one that writes the allocation state file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from kubegate.admin.metrics import metrics_handler
from kubegate.admin.server import AdminServer, Handler, Response
from kubegate.echo import start_echo
from kubegate.gateway.accesslog import AccessLogWriter, Format
from kubegate.ir.dump import dump_translation
from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.proxy.l4 import L4Proxy, L4Settings
from kubegate.planes.proxy.server import ProxyServer
from kubegate.reconcile import Reconciler, Source
from kubegate.sources.kubernetes.config import KubeConfigError, KubeConnection
from kubegate.sources.kubernetes.controller import ClusterController, ControllerSettings
from kubegate.sources.kubernetes.source import KubernetesSource
from kubegate.translate.context import Options, Translation

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # uvloop is optional: the stdlib loop works, slower
    uvloop = None

log = logging.getLogger("kubegate")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    paths: tuple[str, ...]
    options: Options
    listen: tuple[str, int] = ("0.0.0.0", 8080)
    tls_listen: tuple[str, int] | None = ("0.0.0.0", 8443)
    # where nodePorts listen (userspace L4 mode); LoadBalancer and external IPs listen on themselves.
    # None: no L4 listeners at all
    node_address: str | None = "0.0.0.0"
    admin_listen: tuple[str, int] | None = ("127.0.0.1", 10254)
    state_file: Path | None = None
    access_log: Format | None = "text"
    proxy: ProxySettings = field(default_factory=ProxySettings)
    drain_seconds: float = 10.0
    reuse_port: bool = False
    watch: bool = True
    # objects from this API server instead of `paths`
    kubernetes: KubeConnection | None = None
    # the one namespace to watch there; None: all namespaces
    kubernetes_namespace: str | None = None
    # leader election and status write-back with the Kubernetes source
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    # False in secondary worker processes: one process per replica campaigns and writes status
    writes_status: bool = True


# Called with every translation once it is serving (the first one included): where status writing to
# the API server attaches (Gateway.publish_hooks). Hooks must not block; they run on the event loop.
PublishHook = Callable[[Translation], None]


def make_source(config: ServeConfig) -> Source | None:
    """The Kubernetes source when configured; None for the manifest files."""
    if config.kubernetes is None:
        return None
    return KubernetesSource(
        config.kubernetes,
        namespace=config.kubernetes_namespace,
        controller_name=config.options.controller_name,
    )


def make_cluster(config: ServeConfig) -> ClusterController | None:
    """The cluster hooks of the Kubernetes source; None for the manifest files."""
    if config.kubernetes is None:
        return None
    client = config.kubernetes.lightkube_client() if config.writes_status else None
    return ClusterController(client, config.controller, writes=config.writes_status)


class ListenError(Exception):
    """A port that cannot be bound; the message names the address."""


class Gateway:
    """Everything `serve` runs in one process, startable and stoppable from tests."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.proxy: ProxyServer | None = None
        self.admin: AdminServer | None = None
        self.access_log = AccessLogWriter(config.access_log) if config.access_log else None
        self.cluster = make_cluster(config)
        self.reconciler = Reconciler(
            config.paths,
            config.options,
            self._publish,
            config.state_file,
            source=make_source(config),
            cluster=self.cluster,
        )
        self.publish_hooks: list[PublishHook] = []
        self.trigger = asyncio.Event()
        self.address: tuple[str, int] | None = None
        self.tls_address: tuple[str, int] | None = None
        self.l4: L4Proxy | None = None
        self._l4_lock = asyncio.Lock()
        self._l4_updates: set[asyncio.Task[None]] = set()
        self._l4_logged: set[tuple[str, str]] = set()
        self._watch_task: asyncio.Task[None] | None = None

    def _publish(self, translation: Translation) -> None:
        proxy = self.proxy
        if proxy is None:
            return
        previous = self.reconciler.translation
        # endpoint-only changes must not recompile the router
        if previous is None or previous.routing != translation.routing:
            proxy.update_routing(translation.routing)
            for error in proxy.tls_errors:
                log.error("TLS certificate %s", error)
        if previous is None or previous.endpoints != translation.endpoints:
            proxy.update_endpoints(translation.endpoints)
        if self.l4 is not None:
            task = asyncio.get_running_loop().create_task(self._update_l4(translation))
            self._l4_updates.add(task)
            task.add_done_callback(self._l4_updates.discard)
        self._run_publish_hooks(translation)

    def _run_publish_hooks(self, translation: Translation) -> None:
        for hook in self.publish_hooks:
            try:
                hook(translation)
            except Exception:
                # a failing hook (status writing) must not keep the new table from serving
                log.exception("publish hook %r failed", hook)

    async def _update_l4(self, translation: Translation) -> None:
        # updates run one at a time, in publish order, so an older table never overwrites a newer one
        async with self._l4_lock:
            assert self.l4 is not None
            await self.l4.update(translation.routing, translation.endpoints)
            self._log_l4_errors()

    def _log_l4_errors(self) -> None:
        # each listener error once, when it appears: every reload retries the listeners, and an address
        # this machine does not hold would otherwise repeat its error on every endpoint change
        assert self.l4 is not None
        errors = set(self.l4.errors)
        for service, message in sorted(errors - self._l4_logged):
            log.error("Service %s: %s", service, message)
        self._l4_logged = errors

    async def start(self) -> None:
        await self.reconciler.start()
        if self.cluster is not None:
            await self.cluster.start()
        self.reconciler.reload()
        translation = self.reconciler.translation
        assert translation is not None
        self.proxy = ProxyServer(
            translation.routing, translation.endpoints, self.config.proxy, self.access_log, "http"
        )
        host, port = self.config.listen
        try:
            self.address = await self.proxy.start(host, port, reuse_port=self.config.reuse_port)
        except OSError as error:
            raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        if self.config.tls_listen is not None:
            tls_host, tls_port = self.config.tls_listen
            try:
                self.tls_address = await self.proxy.start_tls(
                    tls_host, tls_port, reuse_port=self.config.reuse_port
                )
            except OSError as error:
                await self.proxy.close(0)
                raise ListenError(
                    f"cannot listen on {tls_host}:{tls_port} (TLS): {error.strerror or error}"
                ) from None
            for cert_error in self.proxy.tls_errors:
                log.error("TLS certificate %s", cert_error)
        if self.config.node_address is not None:
            self.l4 = L4Proxy(translation.routing, translation.endpoints, L4Settings())
            await self.l4.start(self.config.node_address)
            self._log_l4_errors()
        if self.config.admin_listen is not None:
            self.admin = AdminServer(self._admin_routes())
            admin_host, admin_port = self.config.admin_listen
            try:
                await self.admin.start(admin_host, admin_port)
            except OSError as error:
                await self.proxy.close(0)
                raise ListenError(
                    f"cannot listen on {admin_host}:{admin_port} (admin): {error.strerror or error}"
                ) from None
        if self.config.watch:
            self._watch_task = asyncio.create_task(self.reconciler.watch(self.trigger))
        self._run_publish_hooks(translation)

    def _admin_routes(self) -> dict[str, Handler]:
        metrics = metrics_handler(self.reconciler, lambda: self.proxy)

        def healthz() -> Response:
            return 200, "text/plain", b"ok\n"

        def readyz() -> Response:
            if self.reconciler.translation is None or self.proxy is None:
                return 503, "text/plain", b"not ready\n"
            return 200, "text/plain", b"ok\n"

        def debug_ir() -> Response:
            translation = self.reconciler.translation
            if translation is None:
                return 503, "text/plain", b"no configuration yet\n"
            return 200, "application/yaml", dump_translation(translation).encode()

        def debug_problems() -> Response:
            text = "".join(f"{problem}\n" for problem in self.reconciler.last_problems) or "no problems\n"
            return 200, "text/plain", text.encode()

        def debug_informers() -> Response:
            source = self.reconciler.source
            if not isinstance(source, KubernetesSource):
                return 404, "text/plain", b"not reading from the Kubernetes API\n"
            return 200, "text/plain", "".join(f"{line}\n" for line in source.describe()).encode()

        return {
            "/debug/informers": debug_informers,
            "/healthz": healthz,
            "/readyz": readyz,
            "/metrics": lambda: (200, "text/plain; version=0.0.4", metrics()),
            "/debug/ir": debug_ir,
            "/debug/problems": debug_problems,
        }

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.cluster is not None:
            await self.cluster.stop()
        await self.reconciler.stop()
        if self.admin is not None:
            await self.admin.close()
        if self.l4 is not None:
            async with self._l4_lock:
                await self.l4.close()
        if self.proxy is not None:
            await self.proxy.close(self.config.drain_seconds)
        if self.access_log is not None:
            self.access_log.flush()


async def _serve_until_signalled(config: ServeConfig) -> int:
    try:
        gateway = Gateway(config)
    except KubeConfigError as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return 2
    try:
        await gateway.start()
    except ListenError as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, gateway.trigger.set)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    assert gateway.address is not None
    log.info("serving HTTP on %s:%d (pid %d)", *gateway.address, os.getpid())
    if gateway.tls_address is not None:
        log.info("serving HTTPS on %s:%d", *gateway.tls_address)
    await stop.wait()
    log.info("shutting down: draining requests for up to %.0f s", config.drain_seconds)
    await gateway.stop()
    return 0


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine on uvloop when installed, else on the stdlib loop."""
    if uvloop is None:
        return int(asyncio.run(main))
    return int(uvloop.run(main))


def serve(config: ServeConfig, workers: int) -> int:
    """Run `workers` processes sharing the listening port; the first one alone writes state and admin."""
    if workers <= 1:
        return run_event_loop(_serve_until_signalled(config))
    children: list[int] = []
    for index in range(workers):
        worker_config = config if index == 0 else _secondary(config)
        pid = os.fork()
        if pid == 0:
            code = run_event_loop(_serve_until_signalled(_with_reuse_port(worker_config)))
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst


def _with_reuse_port(config: ServeConfig) -> ServeConfig:
    return replace(config, reuse_port=True)


def _secondary(config: ServeConfig) -> ServeConfig:
    return replace(config, admin_listen=None, state_file=None, writes_status=False)


def parse_listen(text: str, flag: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag} {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def loopback_backends(translation: Translation) -> list[tuple[str, str, int]]:
    """(name, ip, port) for every loopback endpoint: what `kubegate demo` starts echo backends for. An
    endpoint shared by several Services is named after all of them."""
    services: dict[tuple[str, int], list[str]] = {}
    for cluster, endpoints in sorted(translation.endpoints.clusters.items()):
        service = cluster.split(":", 1)[0]
        for endpoint in endpoints:
            if endpoint.ip.startswith("127.") or endpoint.ip == "::1":
                names = services.setdefault((endpoint.ip, endpoint.port), [])
                if service not in names:
                    names.append(service)
    return [(",".join(names), ip, port) for (ip, port), names in sorted(services.items())]


def demo_commands(translation: Translation, address: tuple[str, int]) -> list[str]:
    """curl commands for each HTTP route, LoadBalancer IP and nodePort the demo serves."""
    host, port = address
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    commands = []
    for vhost in translation.routing.virtual_hosts:
        for route in vhost.routes:
            if route.match == "Regex":
                continue
            name = vhost.host.replace("*", "demo") if vhost.host else ""
            header = f"-H 'Host: {name}' " if name else ""
            commands.append(f"curl {header}http://{target}:{port}{route.path}")
    for service in translation.routing.services:
        for l4 in service.ports:
            if l4.protocol != "TCP":
                continue
            commands.extend(
                f"curl http://{ip}:{l4.port}/   # {service.name} LoadBalancer"
                for ip in service.load_balancer_ips
            )
            if l4.node_port is not None:
                commands.append(f"curl http://127.0.0.1:{l4.node_port}/   # {service.name} nodePort")
    return commands


async def run_demo(config: ServeConfig) -> int:
    """Serve the manifests with echo backends on their loopback endpoints, and print curl commands."""
    gateway = Gateway(config)
    gateway.reconciler.reload()
    translation = gateway.reconciler.translation
    assert translation is not None
    backends = []
    for service, ip, port in loopback_backends(translation):
        try:
            backends.append(await start_echo(service, ip, port))
        except OSError as error:
            print(f"kubegate demo: cannot start the echo backend for {service} on {ip}:{port}: {error}")
    try:
        await gateway.start()
    except ListenError as error:
        print(f"kubegate: {error}", file=sys.stderr)
        return 2
    assert gateway.address is not None
    print(
        f"kubegate demo: serving {', '.join(config.paths)} on http://{gateway.address[0]}:{gateway.address[1]}"
    )
    print("try:")
    for command in demo_commands(translation, gateway.address):
        print(f"  {command}")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.trigger.set)
    await stop.wait()
    await gateway.stop()
    for backend in backends:
        backend.close()
    return 0


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))
