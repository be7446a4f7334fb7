"""Render the LoadBalancer Services of the IR as an haproxy.cfg for a bare-metal load balancer.

Each TCP port of a LoadBalancer Service gets one ``frontend`` bound to every LoadBalancer IP and
external IP of the Service at the Service port, and one ``backend`` that spreads connections round-robin
over the cluster's nodes at the port's nodePort, with active TCP health checks. From there the node's
nftables rules (see ``nftables.py``) take the connection to a pod.

Names: ``fe:<namespace>.<name>:<proto>:<port>`` and ``be:...``, servers named after the node; anything
outside haproxy's name alphabet ``[A-Za-z0-9_.:-]`` becomes ``_``, and a name that collides after that
gets ``-<hash8>`` appended. Left out, each with a ``#`` comment naming it: UDP and SCTP ports (haproxy
proxies only TCP), ports without a nodePort, Services with no address to bind.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from kubegate.ir.model import L4Port, L4Service, RoutingTable

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


class HAProxyOptionsError(ValueError):
    """The haproxy renderer's options are unusable; the message names the option and the value."""


@dataclass(frozen=True, kw_only=True)
class HAProxyOptions:
    # the master's runtime API socket (the driver reloads through it; expose-fd for seamless reloads)
    runtime_socket: str = "/run/kubegate/haproxy.sock"
    # (node name, address) of every node that may receive nodePort traffic
    node_addresses: tuple[tuple[str, str], ...] = ()
    check_inter_ms: int = 2000
    check_fall: int = 3
    check_rise: int = 2
    timeout_connect_ms: int = 5000
    timeout_client_ms: int = 300_000
    timeout_server_ms: int = 300_000
    maxconn: int = 20_000


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ").replace("\r", " ")


def _address(text: str) -> str | None:
    """``ip:port`` prefix as haproxy writes it (IPv6 in brackets), None when ``text`` is no IP."""
    try:
        parsed = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(parsed) if parsed.version == 4 else f"[{parsed}]"


def _check_options(options: HAProxyOptions) -> None:
    if not options.runtime_socket.startswith("/") or any(c.isspace() for c in options.runtime_socket):
        raise HAProxyOptionsError(
            f"haproxy option runtime_socket: {options.runtime_socket!r} "
            "is not an absolute path without spaces"
        )
    for node, address in options.node_addresses:
        if _address(address) is None:
            raise HAProxyOptionsError(
                f"haproxy option node_addresses: node {node!r} has {address!r}, which is not an IP address"
            )
    for field in (
        "check_inter_ms",
        "check_fall",
        "check_rise",
        "timeout_connect_ms",
        "timeout_client_ms",
        "timeout_server_ms",
        "maxconn",
    ):
        value = getattr(options, field)
        if not isinstance(value, int) or value <= 0:
            raise HAProxyOptionsError(f"haproxy option {field}: {value!r} is not a positive integer")


class _Names:
    """Sanitised names, unique within one config."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, raw: str) -> str:
        name = _UNSAFE.sub("_", raw)
        if name in self.used:
            name = f"{name}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
        self.used.add(name)
        return name


def _bind_addresses(service: L4Service, notes: list[str]) -> list[str]:
    found: dict[str, None] = {}
    for text in (*service.load_balancer_ips, *service.external_ips):
        address = _address(text)
        if address is None:
            notes.append(_comment(f"{service.name}: {text!r} is not an IP address; not bound"))
        else:
            found.setdefault(address, None)
    return sorted(found, key=lambda a: ipaddress.ip_address(a.strip("[]")).packed.rjust(16, b"\0"))


def _claim(
    service: L4Service, port: int, binds: list[str], owners: dict[tuple[str, int], str], notes: list[str]
) -> list[str]:
    """The addresses this port may bind: two frontends on one address and port would share it
    (haproxy binds with SO_REUSEPORT) and split its traffic, so the first Service by name keeps it."""
    kept = []
    for address in binds:
        owner = owners.setdefault((address, port), service.name)
        if owner == service.name:
            kept.append(address)
        else:
            notes.append(_comment(f"{service.name}: {address}:{port} already used by {owner}; not bound"))
    return kept


def _proxy(service: L4Service, port: L4Port, binds: list[str], options: HAProxyOptions, names: _Names) -> str:
    namespace, _, name = service.name.partition("/")
    label = f"{namespace}.{name}:{port.protocol.lower()}:{port.port}"
    frontend = names.take(f"fe:{label}")
    backend = names.take(f"be:{label}")
    lines = [f"frontend {frontend}"]
    lines += [f"    bind {address}:{port.port}" for address in binds]
    lines += [f"    default_backend {backend}", "", f"backend {backend}", "    balance roundrobin"]
    lines.append(
        f"    default-server check inter {options.check_inter_ms}ms"
        f" fall {options.check_fall} rise {options.check_rise}"
    )
    servers = _Names()
    nodes = sorted(options.node_addresses)
    if not nodes:
        lines.append(_comment("no nodes configured: every connection fails until nodes are added"))
    for node, address in nodes:
        lines.append(f"    server {servers.take(node)} {_address(address)}:{port.node_port} check")
    return "\n".join(lines) + "\n"


def render_haproxy(routing: RoutingTable, options: HAProxyOptions | None = None) -> str:
    """haproxy.cfg text for every LoadBalancer Service in ``routing``.

    Raises HAProxyOptionsError for unusable options; Service ports haproxy cannot serve are left
    out, each named in a comment.
    """
    options = options or HAProxyOptions()
    _check_options(options)
    notes: list[str] = []
    proxies: list[str] = []
    names = _Names()
    owners: dict[tuple[str, int], str] = {}
    for service in sorted(routing.services, key=lambda s: s.name):
        if service.type != "LoadBalancer" or service.headless:
            continue
        binds = _bind_addresses(service, notes)
        if not binds:
            notes.append(_comment(f"{service.name}: no LoadBalancer or external IP yet; not served"))
            continue
        for port in sorted(service.ports, key=lambda p: (p.protocol, p.port, p.name)):
            where = f"{service.name} port {port.port}/{port.protocol}"
            if port.protocol != "TCP":
                notes.append(_comment(f"{where}: haproxy proxies only TCP; left out"))
            elif port.node_port is None or not 0 < port.node_port < 65536:
                notes.append(_comment(f"{where}: no nodePort to send traffic to; left out"))
            elif not 0 < port.port < 65536:
                notes.append(_comment(f"{where}: port out of range; left out"))
            elif kept := _claim(service, port.port, binds, owners, notes):
                proxies.append(_proxy(service, port, kept, options, names))
    head = [
        _comment("generated by kubegate; do not edit"),
        *notes,
        "global",
        "    master-worker",
        f"    stats socket {options.runtime_socket} mode 600 level admin expose-fd listeners",
        f"    maxconn {options.maxconn}",
        "",
        "defaults",
        "    mode tcp",
        f"    timeout connect {options.timeout_connect_ms}ms",
        f"    timeout client {options.timeout_client_ms}ms",
        f"    timeout server {options.timeout_server_ms}ms",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(proxies)
