"""Render the L4 part of the IR as one nftables table, in the layout of kube-proxy's nftables mode.

The output is a complete file for ``nft -f``: with ``NftOptions.replace`` it starts with
``table F T`` + ``delete table F T`` so loading it replaces the previous ruleset in one atomic
transaction (dynamic affinity sets start empty again after a replace; established connections keep
their conntrack NAT state).

Layout (names are fixed so the driver and humans can find them):

- map ``service-ips`` (``ip daddr . meta l4proto . th dport : verdict``): ClusterIPs go to the
  Service port chain ``svc-*``; external IPs and LoadBalancer IPs go to the external chain ``ext-*``.
- map ``service-nodeports`` (``meta l4proto . th dport : verdict``) to ``ext-*``, consulted only for
  destinations local to the node (``fib daddr type local``, 127.0.0.0/8 excluded unless
  ``allow_localhost_nodeports``), or only for ``node_addresses`` when those are given.
- ``svc-*``: ClientIP affinity checks (``ip saddr @aff-* goto ep-*``), then
  ``numgen random mod N vmap`` over the endpoint chains ``ep-*``.
- ``ext-*``: externalTrafficPolicy Cluster marks for masquerade and goes to ``svc-*``; Local picks
  only endpoints on ``node_name`` without masquerade (traffic the node itself sends still takes the
  Cluster path, as in kube-proxy) and drops when there is none.
- ``ep-*``: masquerade mark for hairpin (``ip saddr`` is the endpoint itself), affinity update, DNAT.
  ``NftOptions.dispatch`` chooses how ``svc-*`` picks: ``vmap`` (above, kube-proxy's), ``rules`` (one
  ``numgen random mod N-i == 0 goto`` rule per endpoint) or ``inline`` (those rules carry the affinity
  update and DNAT themselves, so there are no ``ep-*`` chains and hairpin traffic is masqueraded in
  postrouting by the set ``hairpin-endpoints``). Anonymous vmaps and per-endpoint chains are what make
  big transactions slow in the kernel; see the option's comment for measurements.
- Service ports without endpoints are rejected in filter chains (``reject`` is not allowed in nat
  chains): TCP gets a reset, others ICMP port-unreachable. Other traffic to ClusterIPs (ping, unused
  ports) is rejected after DNAT, from ``cluster-ips`` and the optional ``service_cidr``.

Chain and set names: ``<kind>-<hash8>-<namespace>/<name>/<proto>/<port name or number>``; endpoint
chains and affinity sets append ``__<ip>/<port>``. ``hash8`` is the first 8 hex digits of a SHA-256 of
the Service port's identity, so names stay unique and stable when the readable middle part is
sanitised to nft's identifier alphabet ``[A-Za-z0-9_./-]`` or cut short (names stay within
``MAX_NAME`` characters; the endpoint tail is never cut).

Order: maps and sets first with sorted elements, then the fixed chains, then the chains of each
Service (sorted by name; ports by protocol and number; endpoints by address and port).

IPv6: not supported yet. IPv6 ClusterIPs, external/LoadBalancer IPs and endpoints are left out, each
named in a ``#`` comment; the rules match IPv4 only (also in an ``inet`` table).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kubegate.ir.model import Endpoint, EndpointTable, L4Port, L4Service, RoutingTable

MAX_NAME = 200
# room left for "aff-", the hash and "__<ipv4>/<port>" within MAX_NAME
_READABLE = MAX_NAME - len("aff-12345678-") - len("__255.255.255.255/65535")
_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
_REJECT = "goto reject-chain"


class RenderOptionsError(ValueError):
    """The renderer's options are unusable; the message names the option and the value."""


@dataclass(frozen=True, kw_only=True)
class NftOptions:
    table: str = "kubegate"
    family: Literal["inet", "ip"] = "inet"
    # the node this ruleset runs on: externalTrafficPolicy Local keeps only its endpoints
    node_name: str = ""
    # when given, nodePorts answer only on these IPv4 addresses instead of every local address
    node_addresses: tuple[str, ...] = ()
    # e.g. "10.96.0.0/12": unallocated addresses in it are rejected like unused ClusterIP ports
    service_cidr: str = ""
    # masquerade all Service traffic, not only external and hairpin traffic
    masquerade_all: bool = False
    allow_localhost_nodeports: bool = False
    masquerade_mark: int = 0x4000
    # start with "table; delete table" so loading the file replaces the table atomically
    replace: bool = True
    # how a Service port picks an endpoint: "vmap" is kube-proxy's one `numgen ... vmap` lookup (O(1)
    # a packet); "rules" is one numgen rule per endpoint, without anonymous maps, which the kernel
    # loads far faster at scale (measured with nft 1.0.6 / kernel 6.18, nft -c: 3,000 Services x 10
    # endpoints 18.8 s with "vmap", 3.4 s with "rules"; the vmap cost grows faster than linearly)
    # "inline" is "rules" with the DNAT written into the Service port chain: no per-endpoint chains;
    # hairpin traffic is then masqueraded in postrouting from the set hairpin-endpoints (saddr . daddr).
    # 10,000 Services x 10 endpoints: nft -c 230 s "vmap", 10.7 s "rules", 2.6 s "inline".
    dispatch: Literal["vmap", "rules", "inline"] = "vmap"


@dataclass(frozen=True, slots=True)
class _Ep:
    ip: str
    address: int
    port: int
    local: bool
    chain: str
    affinity_set: str
    # the statements that send a connection to this endpoint (affinity update, DNAT)
    action: str


@dataclass
class _Out:
    """Everything collected while walking the Services, joined once at the end (linear)."""

    service_ips: list[tuple[int, int, str, int, str]]
    nodeports: list[tuple[str, int, str]]
    no_endpoint_ips: list[tuple[int, int, str, int, str]]
    no_endpoint_nodeports: list[tuple[str, int, str]]
    cluster_ips: dict[int, str]
    sets: list[str]
    chains: list[str]
    notes: list[str]


def _check_options(options: NftOptions) -> None:
    if options.family not in ("inet", "ip"):
        raise RenderOptionsError(f"nftables option family: {options.family!r} is not 'inet' or 'ip'")
    if not _IDENTIFIER.match(options.table):
        raise RenderOptionsError(
            f"nftables option table: {options.table!r} is not a valid table name "
            "(a letter or '_', then letters, digits, '_' or '-', at most 64 characters)"
        )
    for address in options.node_addresses:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise RenderOptionsError(
                f"nftables option node_addresses: {address!r} is not an IPv4 address"
            ) from None
    if options.service_cidr:
        try:
            ipaddress.IPv4Network(options.service_cidr, strict=False)
        except ValueError:
            raise RenderOptionsError(
                f"nftables option service_cidr: {options.service_cidr!r} is not an IPv4 network"
            ) from None
    if options.dispatch not in ("vmap", "rules", "inline"):
        raise RenderOptionsError(
            f"nftables option dispatch: {options.dispatch!r} is not 'vmap', 'rules' or 'inline'"
        )
    if not 0 < options.masquerade_mark < 2**32:
        raise RenderOptionsError(
            f"nftables option masquerade_mark: {options.masquerade_mark:#x} is not a 32-bit non-zero mark"
        )


def _comment(text: str) -> str:
    # a newline in a name taken from the IR must not end the comment and inject rules
    return "# " + text.replace("\n", " ").replace("\r", " ")


class _Addresses:
    """Parses and classifies addresses once per render (endpoint IPs repeat across Services)."""

    def __init__(self) -> None:
        self._cache: dict[str, int | str | None] = {}

    def v4(self, text: str) -> int | str | None:
        """The IPv4 address as an int; None for IPv6; the text itself when it is no address."""
        try:
            return self._cache[text]
        except KeyError:
            pass
        result: int | str | None
        try:
            # inet_pton is strict dotted-quad (unlike inet_aton) and far faster than ipaddress
            result = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except OSError:
            try:
                socket.inet_pton(socket.AF_INET6, text)
                result = None
            except OSError:
                result = text
        self._cache[text] = result
        return result


def _dispatch(eps: list[_Ep], affinity: bool, mode: str) -> list[str]:
    """Rules that pick one endpoint: remembered clients first, then a uniform random choice."""
    # "inline" writes the endpoint's statements (affinity update, DNAT) into the rule itself: DNAT
    # is a terminal verdict, so the rules after a match never run
    targets = [ep.action if mode == "inline" else f"goto {ep.chain}" for ep in eps]
    rules = (
        [f"ip saddr @{ep.affinity_set} {t}" for ep, t in zip(eps, targets, strict=True)] if affinity else []
    )
    if len(eps) == 1:
        rules.append(targets[0])
    elif mode in ("rules", "inline"):
        # endpoint i is taken with probability 1/(N-i) when none before it was: uniform overall
        count = len(eps)
        rules += [f"numgen random mod {count - i} == 0 {t}" for i, t in enumerate(targets[:-1])]
        rules.append(targets[-1])
    else:
        choices = ", ".join(f"{i} : goto {ep.chain}" for i, ep in enumerate(eps))
        rules.append(f"numgen random mod {len(eps)} vmap {{ {choices} }}")
    return rules


def _chain(out: _Out, name: str, rules: Iterable[str]) -> None:
    out.chains.append(f"\tchain {name} {{\n" + "".join(f"\t\t{rule}\n" for rule in rules) + "\t}\n")


class _Renderer:
    def __init__(self, endpoints: EndpointTable, options: NftOptions) -> None:
        self.endpoints = endpoints
        self.options = options
        self.addresses = _Addresses()
        self.out = _Out([], [], [], [], {}, [], [], [])
        # map keys already taken, so a conflict in the IR never yields a ruleset nft refuses
        self.ip_keys: dict[tuple[int, str, int], str] = {}
        self.nodeport_keys: dict[tuple[str, int], str] = {}
        self.dnat = "dnat ip to" if options.family == "inet" else "dnat to"
        # endpoint addresses for the postrouting hairpin check of the "inline" dispatch
        self.hairpin: set[int] = set()

    def v4_list(self, service: L4Service, what: str, addresses: Iterable[str]) -> list[int]:
        found: set[int] = set()
        for text in addresses:
            value = self.addresses.v4(text)
            if value is None:
                self.out.notes.append(_comment(f"{service.name}: IPv6 {what} {text} left out (IPv4 only)"))
            elif isinstance(value, str):
                self.out.notes.append(_comment(f"{service.name}: {what} {text!r} is not an IP address"))
            else:
                found.add(value)
        return sorted(found)

    def claim_ip(self, service: L4Service, ip: int, proto: str, port: int) -> bool:
        owner = self.ip_keys.setdefault((ip, proto, port), service.name)
        if owner != service.name:
            address = ipaddress.IPv4Address(ip)
            self.out.notes.append(
                _comment(f"{service.name}: {address} {proto} {port} already used by {owner}; left out")
            )
        return owner == service.name

    def claim_nodeport(self, service: L4Service, proto: str, port: int) -> bool:
        owner = self.nodeport_keys.setdefault((proto, port), service.name)
        if owner != service.name:
            self.out.notes.append(
                _comment(f"{service.name}: nodePort {proto} {port} already used by {owner}; left out")
            )
        return owner == service.name

    def endpoint_list(self, port: L4Port, prefix: str, affinity: bool, timeout: int) -> list[_Ep]:
        unique: dict[tuple[int, int], Endpoint] = {}
        for ep in self.endpoints.clusters.get(port.cluster, ()):
            value = self.addresses.v4(ep.ip)
            if value is None:
                self.out.notes.append(_comment(f"{port.cluster}: IPv6 endpoint {ep.ip} left out (IPv4 only)"))
            elif isinstance(value, str):
                self.out.notes.append(_comment(f"{port.cluster}: endpoint {ep.ip!r} is not an IP address"))
            elif not 0 < ep.port < 65536:
                note = f"{port.cluster}: endpoint {ep.ip} port {ep.port} out of range"
                self.out.notes.append(_comment(note))
            else:
                unique.setdefault((value, ep.port), ep)
        node = self.options.node_name
        proto = port.protocol.lower()
        result = []
        for key in sorted(unique):
            ep = unique[key]
            # an IPv4 address and a port need no sanitising, and they identify the endpoint exactly
            tail = f"{prefix}__{ep.ip}/{ep.port}"
            update = f"update @aff-{tail} {{ ip saddr timeout {timeout}s }} " if affinity else ""
            result.append(
                _Ep(
                    ip=ep.ip,
                    address=key[0],
                    port=ep.port,
                    local=bool(node) and ep.node == node,
                    chain=f"ep-{tail}",
                    affinity_set=f"aff-{tail}" if affinity else "",
                    action=f"{update}meta l4proto {proto} {self.dnat} {ep.ip}:{ep.port}",
                )
            )
        return result

    def add_service(self, service: L4Service) -> None:
        if service.headless or service.type == "ExternalName":
            return
        cluster_ips = self.v4_list(service, "ClusterIP", service.cluster_ips)
        external = self.v4_list(service, "external IP", (*service.external_ips, *service.load_balancer_ips))
        self.out.cluster_ips.update((ip, str(ipaddress.IPv4Address(ip))) for ip in cluster_ips)
        for port in sorted(service.ports, key=lambda p: (p.protocol, p.port, p.name)):
            self.add_port(service, port, cluster_ips, external)

    def add_port(self, service: L4Service, port: L4Port, cluster_ips: list[int], external: list[int]) -> None:
        proto = port.protocol.lower()
        if not 0 < port.port < 65536:
            self.out.notes.append(_comment(f"{service.name}: port {port.port} out of range; left out"))
            return
        readable = f"{service.name}/{proto}/{port.name or port.port}"
        # "<hash8>-<readable>": the hash keeps names unique when the readable part is cut short
        digest = hashlib.sha256(f"{service.name}|{port.protocol}|{port.port}".encode()).hexdigest()[:8]
        prefix = f"{digest}-{_UNSAFE.sub('_', readable)[:_READABLE]}"
        node_port = port.node_port if service.type in ("NodePort", "LoadBalancer") else None
        if node_port is not None and not 0 < node_port < 65536:
            self.out.notes.append(_comment(f"{service.name}: nodePort {node_port} out of range; left out"))
            node_port = None
        affinity = service.session_affinity == "ClientIP"
        timeout = max(1, service.affinity_timeout_seconds)
        eps = self.endpoint_list(port, prefix, affinity, timeout)
        out = self.out
        cluster_ips = [ip for ip in cluster_ips if self.claim_ip(service, ip, proto, port.port)]
        external = [ip for ip in external if self.claim_ip(service, ip, proto, port.port)]
        if node_port is not None and not self.claim_nodeport(service, proto, node_port):
            node_port = None
        if not eps:
            for ip in (*cluster_ips, *external):
                out.no_endpoint_ips.append((ip, 0, proto, port.port, _REJECT))
            if node_port is not None:
                out.no_endpoint_nodeports.append((proto, node_port, _REJECT))
            return
        svc_chain = f"svc-{prefix}"
        inline = self.options.dispatch == "inline"
        for ep in eps:
            if affinity:
                out.sets.append(
                    f"\tset {ep.affinity_set} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n"
                    f"\t\ttimeout {timeout}s\n\t}}\n"
                )
            if inline:
                self.hairpin.add(ep.address)
            else:
                # one string per endpoint chain: this loop runs for every endpoint of every Service
                out.chains.append(
                    f"\tchain {ep.chain} {{\n\t\tip saddr {ep.ip} jump mark-for-masquerade\n"
                    f"\t\t{ep.action}\n\t}}\n"
                )
        masquerade_all = ["jump mark-for-masquerade"] if self.options.masquerade_all else []
        _chain(out, svc_chain, [*masquerade_all, *_dispatch(eps, affinity, self.options.dispatch)])
        for ip in cluster_ips:
            out.service_ips.append((ip, 0, proto, port.port, f"goto {svc_chain}"))
        if not external and node_port is None:
            return
        ext_chain = f"ext-{prefix}"
        if service.external_traffic_policy == "Local":
            local = [ep for ep in eps if ep.local]
            ext_rules = [
                *masquerade_all,
                # the node's own traffic has no client address to preserve: use every endpoint
                "fib saddr type local jump mark-for-masquerade",
                f"fib saddr type local goto {svc_chain}",
                *(_dispatch(local, affinity, self.options.dispatch) if local else ["drop"]),
            ]
        else:
            ext_rules = ["jump mark-for-masquerade", f"goto {svc_chain}"]
        _chain(out, ext_chain, ext_rules)
        for ip in external:
            out.service_ips.append((ip, 1, proto, port.port, f"goto {ext_chain}"))
        if node_port is not None:
            out.nodeports.append((proto, node_port, f"goto {ext_chain}"))

    def text(self) -> str:
        options = self.options
        out = self.out
        head = f"{options.family} {options.table}"
        lines: list[str] = [_comment("generated by kubegate; do not edit")]
        lines.extend(out.notes)
        if options.replace:
            lines += [f"table {head}", f"delete table {head}"]
        lines.append(f"table {head} {{")
        lines.append(
            _map(
                "service-ips",
                "ipv4_addr . inet_proto . inet_service",
                (
                    f"{ipaddress.IPv4Address(ip)} . {proto} . {port} : {verdict}"
                    for ip, _, proto, port, verdict in sorted(out.service_ips)
                ),
            )
        )
        lines.append(
            _map(
                "service-nodeports",
                "inet_proto . inet_service",
                (f"{proto} . {port} : {verdict}" for proto, port, verdict in sorted(out.nodeports)),
            )
        )
        lines.append(
            _map(
                "no-endpoint-services",
                "ipv4_addr . inet_proto . inet_service",
                (
                    f"{ipaddress.IPv4Address(ip)} . {proto} . {port} : {verdict}"
                    for ip, _, proto, port, verdict in sorted(out.no_endpoint_ips)
                ),
            )
        )
        lines.append(
            _map(
                "no-endpoint-nodeports",
                "inet_proto . inet_service",
                (
                    f"{proto} . {port} : {verdict}"
                    for proto, port, verdict in sorted(out.no_endpoint_nodeports)
                ),
            )
        )
        ips = ", ".join(out.cluster_ips[ip] for ip in sorted(out.cluster_ips))
        elements = f"\t\telements = {{ {ips} }}\n" if ips else ""
        lines.append(f"\tset cluster-ips {{\n\t\ttype ipv4_addr\n{elements}\t}}\n")
        if options.dispatch == "inline":
            pairs = ", ".join(f"{a} . {a}" for a in map(ipaddress.IPv4Address, sorted(self.hairpin)))
            elements = f"\t\telements = {{ {pairs} }}\n" if pairs else ""
            lines.append(f"\tset hairpin-endpoints {{\n\t\ttype ipv4_addr . ipv4_addr\n{elements}\t}}\n")
        lines.extend(out.sets)
        lines.extend(self.fixed_chains())
        lines.extend(out.chains)
        lines.append("}\n")
        return "\n".join(lines)

    def fixed_chains(self) -> list[str]:
        options = self.options
        mark = f"{options.masquerade_mark:#x}"
        if options.node_addresses:
            local = "ip daddr { " + ", ".join(sorted(set(options.node_addresses))) + " }"
        else:
            local = "fib daddr type local"
            if options.family == "inet":
                local += " meta nfproto ipv4"
            if not options.allow_localhost_nodeports:
                # kube-proxy's nftables mode has no localhost nodePorts (they need route_localnet)
                local += " ip daddr != 127.0.0.0/8"
        reject_cidr = []
        if options.service_cidr:
            network = ipaddress.IPv4Network(options.service_cidr, strict=False)
            reject_cidr.append(f"ip daddr {network} reject")
        out = _Out([], [], [], [], {}, [], [], [])
        hairpin = []
        if options.dispatch == "inline":
            # a pod reaching itself through its Service: after DNAT, source and destination are equal
            hairpin.append("ct status dnat ip saddr . ip daddr @hairpin-endpoints masquerade fully-random")
        base = [
            ("nat-prerouting", "nat", "prerouting", -100, ["jump services"]),
            ("nat-output", "nat", "output", -100, ["jump services"]),
            ("nat-postrouting", "nat", "postrouting", 100, ["jump masquerading"]),
            # filter chains run after DNAT (-100): what is still addressed to a ClusterIP was not served
            (
                "filter-input",
                "filter",
                "input",
                -10,
                ["ct state new jump nodeport-endpoints-check", "ct state new jump service-endpoints-check"],
            ),
            (
                "filter-forward",
                "filter",
                "forward",
                -10,
                ["ct state new jump service-endpoints-check", "ct state new jump cluster-ips-check"],
            ),
            (
                "filter-output",
                "filter",
                "output",
                -10,
                ["ct state new jump service-endpoints-check", "ct state new jump cluster-ips-check"],
            ),
        ]
        for name, kind, hook, priority, rules in base:
            _chain(out, name, [f"type {kind} hook {hook} priority {priority}; policy accept;", *rules])
        _chain(
            out,
            "services",
            [
                "ip daddr . meta l4proto . th dport vmap @service-ips",
                f"{local} meta l4proto . th dport vmap @service-nodeports",
            ],
        )
        _chain(out, "mark-for-masquerade", [f"meta mark set meta mark or {mark}"])
        _chain(
            out,
            "masquerading",
            [
                *hairpin,
                f"meta mark & {mark} == 0 return",
                f"meta mark set meta mark xor {mark}",
                "masquerade fully-random",
            ],
        )
        _chain(out, "reject-chain", ["meta l4proto tcp reject with tcp reset", "reject"])
        _chain(
            out, "service-endpoints-check", ["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]
        )
        _chain(
            out,
            "nodeport-endpoints-check",
            [f"{local} meta l4proto . th dport vmap @no-endpoint-nodeports"],
        )
        _chain(out, "cluster-ips-check", ["ip daddr @cluster-ips reject", *reject_cidr])
        return out.chains


def _map(name: str, key_type: str, elements: Iterable[str]) -> str:
    body = ",\n\t\t\t".join(elements)
    block = f"\t\telements = {{\n\t\t\t{body}\n\t\t}}\n" if body else ""
    return f"\tmap {name} {{\n\t\ttype {key_type} : verdict\n{block}\t}}\n"


def render_nftables(
    routing: RoutingTable, endpoints: EndpointTable, options: NftOptions | None = None
) -> str:
    """The nftables ruleset (text for ``nft -f``) for every Service in ``routing``.

    Raises RenderOptionsError for unusable options; problems in the IR (IPv6 or malformed addresses,
    two Services claiming one address and port) leave the affected part out, named in a comment.
    """
    options = options or NftOptions()
    _check_options(options)
    renderer = _Renderer(endpoints, options)
    for service in sorted(routing.services, key=lambda s: s.name):
        renderer.add_service(service)
    return renderer.text()
