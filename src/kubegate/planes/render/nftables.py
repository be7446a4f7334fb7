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
  postrouting by the set ``hairpin-endpoints``, which leaves out endpoints known to run on another node
  than ``node_name``: a pod's packets to a Service are translated on its own node, so only a pod on this
  node can meet itself here; on a big cluster that is a few dozen addresses, not one per endpoint).
  Anonymous vmaps and per-endpoint chains are what make big transactions slow in the kernel; see the
  option's comment for measurements.
- ``map`` dispatch: no chain per Service. ``service-ips`` sends a ClusterIP to the shared chain
  ``pick-N`` (N: the port's endpoint count), whose DNAT takes its target from the data map
  ``endpoints-N`` keyed by ``ip daddr . meta l4proto . th dport . numgen random mod N``; external IPs
  go through ``ext-pick-N`` (masquerade mark first), nodePorts through ``nodeport-pick-N`` and
  ``nodeport-endpoints-N`` (keyed without the address). One map per N, not one per Service: the kernel
  checks every element of a map against every rule bound to it, so binding one big map from each
  Service's chain is quadratic (2,000 rules on a 100,000-element map: 11 s). Hairpin as for
  ``inline``. Services with ClientIP affinity or externalTrafficPolicy Local keep ``inline`` chains.
- Service ports without endpoints are rejected in filter chains (``reject`` is not allowed in nat
  chains): TCP gets a reset, others ICMP port-unreachable. Other traffic to ClusterIPs (ping, unused
  ports) is rejected after DNAT, from ``cluster-ips`` and the optional ``service_cidr``.

Chain and set names: ``<kind>-<hash8>-<namespace>/<name>/<proto>/<port name or number>``; endpoint
chains and affinity sets append ``__<ip>/<port>``. ``hash8`` is the first 8 hex digits of a SHA-256 of
the Service port's identity, so names stay unique and stable when the readable middle part is
sanitised to nft's identifier alphabet ``[A-Za-z0-9_./-]`` or cut short (names stay within
``MAX_NAME`` characters; the endpoint tail is never cut).

Order: maps and sets first with sorted elements (``endpoints-N`` maps in Service order), then the
fixed chains and the ``pick-N`` chains, then the chains of each Service (sorted by name; ports by
protocol and number; endpoints by address and port).

Rendering again: ``NftRenderer`` keeps, per Service, what it rendered from that Service and its
endpoints alone (a part) and what it contributes to the table (a group: its sets and chains, and its
elements of the shared maps). While the Service and its endpoints compare equal and no claim on its
addresses changed owner, the same group object is reused, and ``nftdiff.incremental_structured`` skips
it by identity; element counts across groups keep an element two Services share, and each rendering
carries the elements that appeared or vanished since the previous one. ``render_nftables``
is one fresh ``NftRenderer`` render, as text.

IPv6: not supported yet. IPv6 ClusterIPs, external/LoadBalancer IPs and endpoints are left out, each
named in a ``#`` comment; the rules match IPv4 only (also in an ``inet`` table).
"""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import itertools
import operator
import re
import socket
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple

from kubegate.ir.model import Endpoint, EndpointTable, L4Port, L4Service, RoutingTable
from kubegate.planes.render.nftdiff import NftGroup, NftObject

MAX_NAME = 200
# room left for "aff-", the hash and "__<ipv4>/<port>" within MAX_NAME
_READABLE = MAX_NAME - len("aff-12345678-") - len("__255.255.255.255/65535")
_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
_REJECT = "goto reject-chain"
_MISSING = object()
_SET_NAME = operator.itemgetter(0)
_ELEMENT = operator.itemgetter(1)


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
    # "map" has no chain per Service at all: Services of N endpoints share one chain pick-N whose one
    # DNAT looks up `daddr . l4proto . dport . numgen random mod N` in the data map endpoints-N (and
    # nodePorts `l4proto . dport . numgen` in nodeport-endpoints-N), so the table has a few dozen rules
    # whatever its size. An endpoint change is then only map elements, which the kernel commits without
    # re-validating the table (any rule or jump added makes it walk every rule: 80 ms at 10,000 Services
    # "inline"). Services with ClientIP affinity or externalTrafficPolicy Local keep "inline" chains.
    # 10,000 x 10, nft -f: 1.8 s "map", 4.5 s "inline" (kernel 6.18, nft 1.0.6).
    dispatch: Literal["vmap", "rules", "inline", "map"] = "vmap"


class _Ep(NamedTuple):
    # a NamedTuple: built 100,000 times in a 10,000-Service render, 3x cheaper than a frozen dataclass
    ip: str
    address: int
    port: int
    local: bool
    # on this node or on no node we know of: a pod that can reach itself through this node's rules
    maybe_local: bool
    chain: str
    affinity_set: str
    # the statements that send a connection to this endpoint (affinity update, DNAT)
    action: str


@dataclass(frozen=True, slots=True)
class _PortPart:
    """One Service port rendered on its own: everything but what depends on other Services (claims)."""

    proto: str
    port: int
    # notes written before this port's claims (range problems, unusable endpoints)
    notes: tuple[str, ...]
    # False when the port number is out of range: only the note remains
    usable: bool
    node_port: int | None
    svc_chain: str
    ext_chain: str
    # affinity sets, endpoint chains and the Service chain; all empty without endpoints
    sets: tuple[NftObject, ...]
    chains: tuple[NftObject, ...]
    # written only when an external IP or the nodePort survives the claims
    ext: NftObject | None
    # the port has endpoints (else its addresses go to the no-endpoint maps)
    served: bool = False
    # "map" dispatch without affinity or Local policy: the endpoint count N (shared chain pick-N and
    # map endpoints-N) and each endpoint's map data by index ("index : address . port"); 0 when the port
    # has chains of its own
    pick: int = 0
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _ServicePart:
    """A Service rendered from its own inputs alone; reused while the Service and its endpoints stay equal."""

    service: L4Service
    endpoints: tuple[tuple[Endpoint, ...], ...]
    notes: tuple[str, ...]
    cluster_ips: tuple[int, ...]
    external: tuple[int, ...]
    ports: tuple[_PortPart, ...]
    # endpoint addresses for the postrouting hairpin check of the "inline" dispatch
    hairpin: tuple[int, ...]


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
    if options.dispatch not in ("vmap", "rules", "inline", "map"):
        raise RenderOptionsError(
            f"nftables option dispatch: {options.dispatch!r} is not 'vmap', 'rules', 'inline' or 'map'"
        )
    if not 0 < options.masquerade_mark < 2**32:
        raise RenderOptionsError(
            f"nftables option masquerade_mark: {options.masquerade_mark:#x} is not a 32-bit non-zero mark"
        )


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector: a first render at 10,000 Services allocates over a million small
    objects (tuples, strings) and none of them forms a cycle, yet every few hundred allocations the
    collector runs and its older generations walk all of them again (about 10% of the render)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _comment(text: str) -> str:
    # a newline in a name taken from the IR must not end the comment and inject rules
    return "# " + text.replace("\n", " ").replace("\r", " ")


class _Addresses:
    """Parses and classifies addresses once (endpoint IPs repeat across Services and renders)."""

    def __init__(self) -> None:
        self._cache: dict[str, int | str | None] = {}
        # address -> its dotted quad, for writing elements back out
        self._dotted: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()
        self._dotted.clear()

    def v4(self, text: str) -> int | str | None:
        """The IPv4 address as an int; None for IPv6; the text itself when it is no address."""
        # .get, not try/except: on a first render nearly every lookup misses, and exceptions cost
        result = self._cache.get(text, _MISSING)
        if result is not _MISSING:
            return result  # type: ignore[return-value]
        try:
            # inet_pton is strict dotted-quad (no leading zeros, unlike inet_aton), so the text is
            # already the canonical form, and far faster than ipaddress
            result = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
            self._dotted[result] = text
        except OSError:
            try:
                socket.inet_pton(socket.AF_INET6, text)
                result = None
            except OSError:
                result = text
        self._cache[text] = result
        return result

    def dotted(self, address: int) -> str:
        text = self._dotted.get(address)
        if text is None:
            # inet_ntoa: the same dotted quad as ipaddress, at a tenth of the cost
            text = self._dotted[address] = socket.inet_ntoa(address.to_bytes(4, "big"))
        return text


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


def _chain(name: str, rules: Iterable[str]) -> NftObject:
    body = tuple(rules)
    text = f"\tchain {name} {{\n" + "".join(f"\t\t{rule}\n" for rule in body) + "\t}\n"
    return NftObject("chain", name, body, text=text)


def _set(name: str, declaration: str, elements: list[str], *, inline: bool) -> NftObject:
    """A set or map (``declaration``: its type or typeof line) with ``elements`` in the order given;
    ``inline`` writes them on one line."""
    kind = "map" if " : " in declaration else "set"
    if not elements:
        block = ""
    elif inline:
        block = f"\t\telements = {{ {', '.join(elements)} }}\n"
    else:
        body = ",\n\t\t\t".join(elements)
        block = f"\t\telements = {{\n\t\t\t{body}\n\t\t}}\n"
    text = f"\t{kind} {name} {{\n\t\t{declaration}\n{block}\t}}\n"
    return NftObject(kind, name, (declaration,), frozenset(elements), text=text)


class _ServiceRenderer:
    """Renders one Service from its own inputs; what depends on other Services is left to the assembly."""

    def __init__(self, options: NftOptions, addresses: _Addresses) -> None:
        self.options = options
        self.addresses = addresses
        self.dnat = "dnat ip to" if options.family == "inet" else "dnat to"

    def v4_list(self, service: L4Service, what: str, addresses: Iterable[str], notes: list[str]) -> list[int]:
        found: set[int] = set()
        for text in addresses:
            value = self.addresses.v4(text)
            if value is None:
                notes.append(_comment(f"{service.name}: IPv6 {what} {text} left out (IPv4 only)"))
            elif isinstance(value, str):
                notes.append(_comment(f"{service.name}: {what} {text!r} is not an IP address"))
            else:
                found.add(value)
        return sorted(found)

    def usable(
        self, port: L4Port, endpoints: tuple[Endpoint, ...]
    ) -> tuple[list[tuple[tuple[int, int], Endpoint]], list[str]]:
        """The endpoints that can be used, one per (address, port), sorted; notes on the others."""
        notes: list[str] = []
        unique: dict[tuple[int, int], Endpoint] = {}
        for ep in endpoints:
            value = self.addresses.v4(ep.ip)
            if value is None:
                notes.append(_comment(f"{port.cluster}: IPv6 endpoint {ep.ip} left out (IPv4 only)"))
            elif isinstance(value, str):
                notes.append(_comment(f"{port.cluster}: endpoint {ep.ip!r} is not an IP address"))
            elif not 0 < ep.port < 65536:
                notes.append(_comment(f"{port.cluster}: endpoint {ep.ip} port {ep.port} out of range"))
            else:
                unique.setdefault((value, ep.port), ep)
        return sorted(unique.items()), notes

    def endpoint_list(
        self,
        port: L4Port,
        usable: list[tuple[tuple[int, int], Endpoint]],
        prefix: str,
        affinity: bool,
        timeout: int,
    ) -> list[_Ep]:
        node = self.options.node_name
        proto = port.protocol.lower()
        result = []
        for key, ep in usable:
            # an IPv4 address and a port need no sanitising, and they identify the endpoint exactly
            tail = f"{prefix}__{ep.ip}/{ep.port}"
            update = f"update @aff-{tail} {{ ip saddr timeout {timeout}s }} " if affinity else ""
            result.append(
                _Ep(
                    ip=ep.ip,
                    address=key[0],
                    port=ep.port,
                    local=bool(node) and ep.node == node,
                    maybe_local=not (node and ep.node and ep.node != node),
                    chain=f"ep-{tail}",
                    affinity_set=f"aff-{tail}" if affinity else "",
                    action=f"{update}meta l4proto {proto} {self.dnat} {ep.ip}:{ep.port}",
                )
            )
        return result

    def service(self, service: L4Service, endpoints: tuple[tuple[Endpoint, ...], ...]) -> _ServicePart:
        notes: list[str] = []
        cluster_ips = self.v4_list(service, "ClusterIP", service.cluster_ips, notes)
        external = self.v4_list(
            service, "external IP", (*service.external_ips, *service.load_balancer_ips), notes
        )
        hairpin: set[int] = set()
        ports = [
            self.port(service, port, eps, hairpin)
            for port, eps in sorted(
                zip(service.ports, endpoints, strict=True),
                key=lambda pair: (pair[0].protocol, pair[0].port, pair[0].name),
            )
        ]
        return _ServicePart(
            service=service,
            endpoints=endpoints,
            notes=tuple(notes),
            cluster_ips=tuple(cluster_ips),
            external=tuple(external),
            ports=tuple(ports),
            hairpin=tuple(sorted(hairpin)),
        )

    def port(
        self, service: L4Service, port: L4Port, endpoints: tuple[Endpoint, ...], hairpin: set[int]
    ) -> _PortPart:
        proto = port.protocol.lower()
        if not 0 < port.port < 65536:
            note = _comment(f"{service.name}: port {port.port} out of range; left out")
            return _PortPart(proto, port.port, (note,), False, None, "", "", (), (), None)
        notes: list[str] = []
        node_port = port.node_port if service.type in ("NodePort", "LoadBalancer") else None
        if node_port is not None and not 0 < node_port < 65536:
            notes.append(_comment(f"{service.name}: nodePort {node_port} out of range; left out"))
            node_port = None
        affinity = service.session_affinity == "ClientIP"
        timeout = max(1, service.affinity_timeout_seconds)
        usable, endpoint_notes = self.usable(port, endpoints)
        notes += endpoint_notes
        dispatch = self.options.dispatch
        if dispatch == "map" and usable and not affinity and service.external_traffic_policy == "Cluster":
            # no chains (so no chain names to make): only each endpoint's address and port, as map data
            node = self.options.node_name
            # "index : address . port", the map data of each endpoint after the key's head
            targets = tuple(f"{index} : {ep.ip} . {ep.port}" for index, (_, ep) in enumerate(usable))
            if node:
                hairpin.update(address for (address, _), ep in usable if not ep.node or ep.node == node)
            else:
                hairpin.update(address for (address, _), _ in usable)
            return _PortPart(
                proto, port.port, tuple(notes), True, node_port, "", "", (), (), None,
                served=True, pick=len(usable), targets=targets,
            )  # fmt: skip
        readable = f"{service.name}/{proto}/{port.name or port.port}"
        # "<hash8>-<readable>": the hash keeps names unique when the readable part is cut short
        digest = hashlib.sha256(f"{service.name}|{port.protocol}|{port.port}".encode()).hexdigest()[:8]
        prefix = f"{digest}-{_UNSAFE.sub('_', readable)[:_READABLE]}"
        svc_chain, ext_chain = f"svc-{prefix}", f"ext-{prefix}"
        if not usable:
            return _PortPart(
                proto, port.port, tuple(notes), True, node_port, svc_chain, ext_chain, (), (), None
            )
        if dispatch == "map":
            dispatch = "inline"  # what the shared chains cannot express gets chains of its own
        eps = self.endpoint_list(port, usable, prefix, affinity, timeout)
        sets: list[NftObject] = []
        chains: list[NftObject] = []
        for ep in eps:
            if affinity:
                body = ("type ipv4_addr", "flags dynamic,timeout", f"timeout {timeout}s")
                text = f"\tset {ep.affinity_set} {{\n" + "".join(f"\t\t{line}\n" for line in body) + "\t}\n"
                sets.append(NftObject("set", ep.affinity_set, body, text=text))
            if dispatch == "inline":
                if ep.maybe_local:
                    hairpin.add(ep.address)
            else:
                chains.append(_chain(ep.chain, (f"ip saddr {ep.ip} jump mark-for-masquerade", ep.action)))
        masquerade_all = ["jump mark-for-masquerade"] if self.options.masquerade_all else []
        chains.append(_chain(svc_chain, [*masquerade_all, *_dispatch(eps, affinity, dispatch)]))
        if service.external_traffic_policy == "Local":
            local = [ep for ep in eps if ep.local]
            ext_rules = [
                *masquerade_all,
                # the node's own traffic has no client address to preserve: use every endpoint
                "fib saddr type local jump mark-for-masquerade",
                f"fib saddr type local goto {svc_chain}",
                *(_dispatch(local, affinity, dispatch) if local else ["drop"]),
            ]
        else:
            ext_rules = ["jump mark-for-masquerade", f"goto {svc_chain}"]
        return _PortPart(
            proto,
            port.port,
            tuple(notes),
            True,
            node_port,
            svc_chain,
            ext_chain,
            tuple(sets),
            tuple(chains),
            _chain(ext_chain, ext_rules),
            served=True,
        )


# a claim: ("ip", address, proto, port) for a map key of service-ips, ("np", 0, proto, nodePort) for one
# of service-nodeports; the first Service by name that claims it keeps it
_Key = tuple[str, int, str, int]
_Order = tuple[int, int, str, int, str]
# rendering numbers, unique across renderers, so a diff can tell whether two renderings are consecutive
_SERIALS = itertools.count(1)
# the sort key of elements written in group order
_UNORDERED: _Order = (0, 0, "", 0, "")
_GROUP_ORDER = ("endpoints-", "nodeport-endpoints-")
_IP_TYPE = "ipv4_addr . inet_proto . inet_service : verdict"
_PORT_TYPE = "inet_proto . inet_service : verdict"
# the shared sets and maps that groups give elements to: name -> (declaration, elements on one line)
_SHARED_SETS = {
    "service-ips": (f"type {_IP_TYPE}", False),
    "service-nodeports": (f"type {_PORT_TYPE}", False),
    "no-endpoint-services": (f"type {_IP_TYPE}", False),
    "no-endpoint-nodeports": (f"type {_PORT_TYPE}", False),
    "cluster-ips": ("type ipv4_addr", True),
    "hairpin-endpoints": ("type ipv4_addr . ipv4_addr", True),
}


def _claim_keys(part: _ServicePart) -> tuple[_Key, ...]:
    keys: list[_Key] = []
    for port in part.ports:
        if port.usable:
            keys += [("ip", ip, port.proto, port.port) for ip in (*part.cluster_ips, *part.external)]
            if port.node_port is not None:
                keys.append(("np", 0, port.proto, port.node_port))
    # once each: an address may be both a ClusterIP and an external IP of the same Service
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True, slots=True)
class _State:
    """One Service in the last rendering: its part, the owners of its claims, the group built from both."""

    part: _ServicePart
    keys: tuple[_Key, ...]
    owners: tuple[str, ...]
    group: NftGroup
    picks: frozenset[int]


@dataclass(frozen=True, slots=True)
class RenderedNftables:
    """One rendering: the table as objects (for ``nftdiff.incremental_structured``) and, on demand, as
    the complete text for ``nft -f``. ``groups`` maps each Service's name (in name order) to its group."""

    family: str
    table: str
    shared: tuple[NftObject, ...]
    groups: Mapping[str, NftGroup]
    # this rendering's number, the number of the one before it from the same renderer (0: none), and the
    # elements of shared sets that appeared or vanished since that one
    serial: int
    base: int
    appeared: frozenset[tuple[str, str]]
    vanished: frozenset[tuple[str, str]]
    # the Services whose group differs from that rendering's (new, rebuilt or gone)
    changed: frozenset[str]
    replace: bool
    # how many shared objects come before the per-Service sets (the rest are chains)
    leading: int

    def text(self) -> str:
        groups = self.groups.values()
        lines = self._head()
        for obj, elements in self.shared_elements():
            inline = _SHARED_SETS.get(obj.name, ("", False))[1]
            lines.append(_set(obj.name, obj.body[0], elements, inline=inline).text)
        lines.extend(obj.text for group in groups for obj in group.objects if obj.kind == "set")
        lines.extend(obj.text for obj in self.shared[self.leading :])
        lines.extend(obj.text for group in groups for obj in group.objects if obj.kind == "chain")
        lines.append("}\n")
        return "\n".join(lines)

    def _head(self) -> list[str]:
        head = f"{self.family} {self.table}"
        lines: list[str] = [_comment("generated by kubegate; do not edit")]
        lines += [note for group in self.groups.values() for note in group.notes]
        if self.replace:
            lines += [f"table {head}", f"delete table {head}"]
        lines.append(f"table {head} {{")
        return lines

    def shared_elements(self) -> list[tuple[NftObject, list[str]]]:
        """Each shared set and map (declared without elements) with the elements the groups give it, in
        the order the text writes them."""
        given: dict[str, list[tuple[_Order, str]]] = {}
        for group in self.groups.values():
            for (name, element), order in zip(group.elements, group.order, strict=True):
                given.setdefault(name, []).append((order, element))
        result = []
        for obj in self.shared[: self.leading]:
            entries = given.get(obj.name, [])
            if obj.name.startswith(_GROUP_ORDER):
                elements = list(dict.fromkeys(element for _, element in entries))
            elif obj.name in ("cluster-ips", "hairpin-endpoints"):
                # one element per address (written once when two Services give it); sorting by the
                # address alone is 5x faster than by the whole key at 100,000 endpoints
                elements = [element for _, element in sorted(set(entries), key=lambda entry: entry[0][0])]
            else:
                elements = [element for _, element in sorted(set(entries))]
            result.append((obj, elements))
        return result

    def staged(self) -> StagedNftables:
        """The same table in three steps for a first load (see ``StagedNftables``)."""
        groups = self.groups.values()
        lines = self._head()
        # hash sets have no order: each (set, element) once, grouped by set, all by C-level iteration
        # (dict.fromkeys, a stable sort on the set name, groupby) over the 142,000 pairs at 10,000 Services
        pairs = dict.fromkeys(itertools.chain.from_iterable(group.elements for group in groups))
        by_set = sorted(pairs, key=_SET_NAME)
        given = {
            name: list(map(_ELEMENT, entries)) for name, entries in itertools.groupby(by_set, key=_SET_NAME)
        }
        elements = []
        for obj in self.shared[: self.leading]:
            lines.append(_set(obj.name, obj.body[0], [], inline=False).text)
            elements.append((obj.name, obj.body[0], given.get(obj.name, [])))
        lines.extend(obj.text for group in groups for obj in group.objects if obj.kind == "set")
        fixed = self.shared[self.leading :]
        lines.extend(obj.text for obj in fixed if not obj.is_base_chain)
        lines.extend(obj.text for group in groups for obj in group.objects if obj.kind == "chain")
        lines.append("}\n")
        base = [
            f"table {self.family} {self.table} {{",
            *(obj.text for obj in fixed if obj.is_base_chain),
            "}\n",
        ]
        return StagedNftables("\n".join(lines), tuple(elements), "\n".join(base))


@dataclass(frozen=True, slots=True)
class StagedNftables:
    """A rendering split for a fast first load, when the table does not exist yet: ``skeleton`` (for
    ``nft -f``) is the whole table without the base chains and with the shared sets and maps empty, so it
    touches no packet; ``elements`` are those sets' elements (name, declaration, element texts), which
    ``nftelements`` adds over netlink far faster than nft parses them; ``base`` adds the base chains,
    which hook the table into the kernel's paths in one transaction. Until that last step the table is
    as inert as no table at all; afterwards it equals a load of ``RenderedNftables.text()``."""

    skeleton: str
    elements: tuple[tuple[str, str, list[str]], ...]
    base: str


class NftRenderer:
    """Renders the nftables table again and again, reusing each Service's group (its sets, chains and
    elements of the shared maps) while that Service, its endpoints and the owners of its addresses stay
    the same: one endpoint change re-renders one Service, and the rest of a render is a pass that only
    compares each Service with the last rendering (claims are kept in an index, so only Services sharing
    an address or nodePort with a changed one are looked at again).

    ``render(...).text()`` is byte for byte what ``render_nftables`` returns for the same input.
    """

    def __init__(self, options: NftOptions | None = None) -> None:
        self.options = options or NftOptions()
        _check_options(self.options)
        self._addresses = _Addresses()
        self._services = _ServiceRenderer(self.options, self._addresses)
        self._state: dict[str, _State] = {}
        self._claimants: dict[_Key, set[str]] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._picks: dict[int, int] = {}
        # the serial number of the last rendering (0: none yet)
        self._serial = 0
        self._fixed = _fixed_chains(self.options)
        # how many Services were rendered anew and how many reused, over this renderer's life
        self.reused = 0
        self.rendered = 0

    def _part(self, service: L4Service, endpoints: EndpointTable) -> _ServicePart:
        clusters, ports = endpoints.clusters, service.ports
        # most Services have one port: no generator for them (this runs for every Service every render)
        if len(ports) == 1:
            eps: tuple[tuple[Endpoint, ...], ...] = (clusters.get(ports[0].cluster, ()),)
        else:
            eps = tuple(clusters.get(port.cluster, ()) for port in ports)
        state = self._state.get(service.name)
        if state is not None:
            cached = state.part
            if (cached.service is service or cached.service == service) and cached.endpoints == eps:
                self.reused += 1
                return cached
        self.rendered += 1
        return self._services.service(service, eps)

    def dotted(self, address: int) -> str:
        return self._addresses.dotted(address)

    def render(self, routing: RoutingTable, endpoints: EndpointTable) -> RenderedNftables:
        with without_cycle_collection():
            return self._render(routing, endpoints)

    def _render(self, routing: RoutingTable, endpoints: EndpointTable) -> RenderedNftables:
        if len(self._addresses) > 1_000_000:
            # addresses of pods long gone: start over rather than grow without bound
            self._addresses.clear()
        parts: dict[str, _ServicePart] = {}
        for service in sorted(routing.services, key=lambda s: s.name):
            if not (service.headless or service.type == "ExternalName"):
                parts[service.name] = self._part(service, endpoints)
        previous = self._state
        changed = [
            name for name, part in parts.items() if name not in previous or previous[name].part is not part
        ]
        removed = [name for name in previous if name not in parts]
        keys = {name: _claim_keys(parts[name]) for name in changed}
        touched: set[_Key] = set()
        for name in (*changed, *removed):
            if name in previous:
                for key in previous[name].keys:
                    touched.add(key)
                    claimants = self._claimants[key]
                    claimants.discard(name)
                    if not claimants:
                        del self._claimants[key]
        for name in changed:
            for key in keys[name]:
                touched.add(key)
                self._claimants.setdefault(key, set()).add(name)
        # a Service whose claim may have a new owner is built again (its note or its elements change)
        affected = set(changed)
        for key in touched:
            affected.update(self._claimants.get(key, ()))
        # counts are kept in place, not copied (that was most of a 10,000-Service re-render): the rendering
        # carries only which elements appeared or vanished since the previous one
        delta = _Delta(self._counts, self._picks)
        state: dict[str, _State] = {}
        for name, part in parts.items():
            old = previous.get(name)
            if name not in affected and old is not None:
                state[name] = old
                continue
            new = self._build(name, part, keys[name] if name in keys else _claim_keys(part), old)
            state[name] = new
            if old is not None and old.group is new.group:
                continue
            delta.changed.add(name)
            if old is not None:
                delta.count(old, -1)
            delta.count(new, 1)
        for name in removed:
            delta.changed.add(name)
            delta.count(previous[name], -1)
        self._state = state
        rendering = self._rendering(state, delta, self._serial)
        self._serial = rendering.serial
        return rendering

    def _build(self, name: str, part: _ServicePart, keys: tuple[_Key, ...], old: _State | None) -> _State:
        owners = tuple(min(self._claimants[key]) for key in keys)
        if old is not None and old.part is part and old.owners == owners:
            return old
        owner = dict(zip(keys, owners, strict=True))
        dotted = self.dotted
        notes = list(part.notes)
        elements: list[tuple[str, str]] = []
        order: list[_Order] = []
        picks: set[int] = set()

        def give(target: str, sort: _Order, element: str) -> None:
            elements.append((target, element))
            order.append(sort)

        def give_targets(target: str, head: str, targets: tuple[str, ...]) -> None:
            # the endpoint maps are written in group order (no sort keys): one pass, no global sort
            elements.extend(zip(itertools.repeat(target), map(head.__add__, targets)))
            order.extend([_UNORDERED] * len(targets))

        for ip in part.cluster_ips:
            give("cluster-ips", (ip, 0, "", 0, ""), dotted(ip))
        for ip in part.hairpin:
            text = dotted(ip)
            give("hairpin-endpoints", (ip, 0, "", 0, ""), f"{text} . {text}")
        sets: list[NftObject] = []
        chains: list[NftObject] = []
        used: set[_Key] = set()
        for port in part.ports:
            notes.extend(port.notes)
            if not port.usable:
                continue
            proto, number = port.proto, port.port
            cluster, external, node_port = self._claimed(
                name, part, port, owner=owner, used=used, notes=notes
            )
            if not port.served:
                for ip in (*cluster, *external):
                    element = f"{dotted(ip)} . {proto} . {number} : {_REJECT}"
                    give("no-endpoint-services", (ip, 0, proto, number, _REJECT), element)
                if node_port is not None:
                    element = f"{proto} . {node_port} : {_REJECT}"
                    give("no-endpoint-nodeports", (0, 0, proto, node_port, _REJECT), element)
                continue
            if port.pick:
                count = port.pick
                picks.add(count)
                svc_goto, ext_goto = f"goto pick-{count}", f"goto ext-pick-{count}"
                np_goto = f"goto nodeport-pick-{count}"
                for ip in (*cluster, *external):
                    give_targets(f"endpoints-{count}", f"{dotted(ip)} . {proto} . {number} . ", port.targets)
                if node_port is not None:
                    give_targets(f"nodeport-endpoints-{count}", f"{proto} . {node_port} . ", port.targets)
            else:
                sets.extend(port.sets)
                chains.extend(port.chains)
                svc_goto, ext_goto = f"goto {port.svc_chain}", f"goto {port.ext_chain}"
                np_goto = ext_goto
                if (external or node_port is not None) and port.ext is not None:
                    chains.append(port.ext)
            for flag, ip, verdict in [(0, ip, svc_goto) for ip in cluster] + [
                (1, ip, ext_goto) for ip in external
            ]:
                give(
                    "service-ips",
                    (ip, flag, proto, number, verdict),
                    f"{dotted(ip)} . {proto} . {number} : {verdict}",
                )
            if node_port is not None:
                give(
                    "service-nodeports",
                    (0, 0, proto, node_port, np_goto),
                    f"{proto} . {node_port} : {np_goto}",
                )
        group = NftGroup((*sets, *chains), tuple(elements), tuple(notes), tuple(order))
        return _State(part, keys, owners, group, frozenset(picks))

    def _claimed(
        self,
        name: str,
        part: _ServicePart,
        port: _PortPart,
        *,
        owner: dict[_Key, str],
        used: set[_Key],
        notes: list[str],
    ) -> tuple[list[int], list[int], int | None]:
        """The ClusterIPs, external IPs and nodePort this port keeps; a note for each one it loses. A key
        is used once, also within a Service (an external IP that is its own ClusterIP, two ports with one
        nodePort): the first use keeps it, as between Services."""
        proto, number = port.proto, port.port
        kept: tuple[list[int], list[int]] = ([], [])
        for addresses, into in ((part.cluster_ips, kept[0]), (part.external, kept[1])):
            for ip in addresses:
                key = ("ip", ip, proto, number)
                holder = owner[key]
                if holder == name and key not in used:
                    into.append(ip)
                    used.add(key)
                else:
                    where = self.dotted(ip)
                    notes.append(
                        _comment(f"{name}: {where} {proto} {number} already used by {holder}; left out")
                    )
        node_port = port.node_port
        if node_port is not None:
            key = ("np", 0, proto, node_port)
            if (holder := owner[key]) != name or key in used:
                notes.append(
                    _comment(f"{name}: nodePort {proto} {node_port} already used by {holder}; left out")
                )
                node_port = None
            used.add(key)
        return kept[0], kept[1], node_port

    def _rendering(self, state: dict[str, _State], delta: _Delta, base: int) -> RenderedNftables:
        options = self.options
        names = [
            "service-ips",
            "service-nodeports",
            "no-endpoint-services",
            "no-endpoint-nodeports",
            "cluster-ips",
        ]
        if options.dispatch in ("inline", "map"):
            names.append("hairpin-endpoints")
        shared = [
            NftObject("map" if _SHARED_SETS[n][0].endswith("verdict") else "set", n, (_SHARED_SETS[n][0],))
            for n in names
        ]
        chains: list[NftObject] = []
        dnat = "dnat ip to" if options.family == "inet" else "dnat to"
        masquerade_all = ["jump mark-for-masquerade"] if options.masquerade_all else []
        for count in sorted(self._picks):
            key = f"numgen random mod {count}"
            lookup = f"meta l4proto . th dport . {key} map"
            shared.append(
                NftObject(
                    "map",
                    f"endpoints-{count}",
                    (f"typeof ip daddr . meta l4proto . th dport . {key} : ip daddr . th dport",),
                )
            )
            shared.append(
                NftObject(
                    "map",
                    f"nodeport-endpoints-{count}",
                    (f"typeof meta l4proto . th dport . {key} : ip daddr . th dport",),
                )
            )
            protocols = ("tcp", "udp", "sctp")
            chains.append(
                _chain(
                    f"pick-{count}",
                    [
                        *masquerade_all,
                        *(
                            f"meta l4proto {p} {dnat} ip daddr . {lookup} @endpoints-{count}"
                            for p in protocols
                        ),
                    ],
                )
            )
            chains.append(_chain(f"ext-pick-{count}", ["jump mark-for-masquerade", f"goto pick-{count}"]))
            chains.append(
                _chain(
                    f"nodeport-pick-{count}",
                    [
                        "jump mark-for-masquerade",
                        *(f"meta l4proto {p} {dnat} {lookup} @nodeport-endpoints-{count}" for p in protocols),
                    ],
                )
            )
        return RenderedNftables(
            family=options.family,
            table=options.table,
            shared=(*shared, *self._fixed, *chains),
            groups={name: entry.group for name, entry in state.items()},
            serial=next(_SERIALS),
            base=base,
            appeared=delta.all_appeared(),
            vanished=frozenset(delta.vanished),
            changed=frozenset(delta.changed),
            replace=options.replace,
            leading=len(shared),
        )


class _Delta:
    """Counts how many groups give each element (and use each pick-N), in place, and notes which
    elements appeared (count from 0) or vanished (count to 0) in this render."""

    def __init__(self, counts: Counter[tuple[str, str]], picks: dict[int, int]) -> None:
        self.counts = counts
        self.picks = picks
        # nothing counted yet (a first render): every element counted appears, so ``_add`` only counts
        # and ``all_appeared`` takes them from the counts at the end
        self.first = not counts
        self.appeared: set[tuple[str, str]] = set()
        self.vanished: set[tuple[str, str]] = set()
        # the Services whose group is not the previous rendering's (new, rebuilt or removed)
        self.changed: set[str] = set()

    def count(self, state: _State, sign: int) -> None:
        if sign == 1:
            self._add(state)
            return
        counts = self.counts
        for element in state.group.elements:
            before = counts.get(element, 0)
            after = before + sign
            if after:
                counts[element] = after
            else:
                del counts[element]
            if before == 0:
                # back within this render (a group rebuilt gives it again): no change after all
                if element in self.vanished:
                    self.vanished.discard(element)
                else:
                    self.appeared.add(element)
            elif after == 0:
                if element in self.appeared:
                    self.appeared.discard(element)
                else:
                    self.vanished.add(element)
        self._pick(state, sign)

    def _add(self, state: _State) -> None:
        """``count(state, 1)`` with Counter.update, which runs in C: a first render counts 242,000
        elements at 10,000 Services."""
        elements = state.group.elements
        counts = self.counts
        if self.first:
            counts.update(elements)
            self._pick(state, 1)
            return
        # (not set.difference(counts): with a dict subclass that copies all of counts each time)
        fresh = {element for element in elements if element not in counts}
        self.counts.update(elements)
        if self.vanished and not fresh.isdisjoint(self.vanished):
            # back within this render (a group rebuilt gives it again): no change after all
            back = fresh & self.vanished
            self.vanished -= back
            fresh -= back
        self.appeared |= fresh
        self._pick(state, 1)

    def all_appeared(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.counts) if self.first else frozenset(self.appeared)

    def _pick(self, state: _State, sign: int) -> None:
        for count in state.picks:
            left = self.picks.get(count, 0) + sign
            if left:
                self.picks[count] = left
            else:
                del self.picks[count]


def _fixed_chains(options: NftOptions) -> tuple[NftObject, ...]:
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
    hairpin = []
    if options.dispatch in ("inline", "map"):
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
    chains = [
        _chain(name, [f"type {kind} hook {hook} priority {priority}; policy accept;", *rules])
        for name, kind, hook, priority, rules in base
    ]
    chains += [
        _chain(
            "services",
            [
                "ip daddr . meta l4proto . th dport vmap @service-ips",
                f"{local} meta l4proto . th dport vmap @service-nodeports",
            ],
        ),
        _chain("mark-for-masquerade", [f"meta mark set meta mark or {mark}"]),
        _chain(
            "masquerading",
            [
                *hairpin,
                f"meta mark & {mark} == 0 return",
                f"meta mark set meta mark xor {mark}",
                "masquerade fully-random",
            ],
        ),
        _chain("reject-chain", ["meta l4proto tcp reject with tcp reset", "reject"]),
        _chain("service-endpoints-check", ["ip daddr . meta l4proto . th dport vmap @no-endpoint-services"]),
        _chain("nodeport-endpoints-check", [f"{local} meta l4proto . th dport vmap @no-endpoint-nodeports"]),
        _chain("cluster-ips-check", ["ip daddr @cluster-ips reject", *reject_cidr]),
    ]
    return tuple(chains)


def render_nftables(
    routing: RoutingTable, endpoints: EndpointTable, options: NftOptions | None = None
) -> str:
    """The nftables ruleset (text for ``nft -f``) for every Service in ``routing``.

    Raises RenderOptionsError for unusable options; problems in the IR (IPv6 or malformed addresses,
    two Services claiming one address and port) leave the affected part out, named in a comment.
    A caller that renders repeatedly keeps an ``NftRenderer`` instead, which reuses unchanged Services.
    """
    return NftRenderer(options).render(routing, endpoints).text()
