"""Hand out ClusterIPs, nodePorts and LoadBalancer IPs to Services: pure, deterministic and stable.

``allocate(services, previous, options)`` is the whole interface. It is a function of its inputs only
(no clock, no randomness, no I/O) and ignores the order of ``services``, so the same cluster state always
gets the same answer, and feeding a result back in as ``previous`` returns it unchanged.

Rules, in the order they apply to each kind of value:

1. A value the Service asks for in its spec (``spec.clusterIP``, ``spec.ports[].nodePort``,
   ``spec.loadBalancerIP`` or a ``loadBalancerIPs`` annotation) wins over whatever it held before. It
   must be valid (inside the service CIDR, the nodePort range, or a pool the Service may use); if not,
   the Service gets an error and nothing for that field. An address in the ``kubegate.io/loadBalancerIPs``
   annotation (or MetalLB's ``metallb.io/loadBalancerIPs`` / ``metallb.universe.tf/loadBalancerIPs``)
   takes precedence over ``spec.loadBalancerIP``.
2. Otherwise the value it held in ``previous`` is kept, as long as it is still valid. (For LoadBalancer
   IPs, a Service missing from ``previous`` falls back to the first IP of its
   ``status.loadBalancer.ingress``, which kubegate itself wrote when watching the API server.)
3. When several Services claim one value, the one that held it in ``previous`` keeps it; if none did,
   the oldest (``metadata.creationTimestamp``, then namespace/name) gets it. A loser that asked for the
   value explicitly gets an error naming the holder and nothing for that field; a loser that merely had
   it in ``previous`` (a damaged state file) is given a fresh value.
4. Everything still without a value gets the lowest free one, oldest Services first.

ClusterIPs follow the API server's allocator: the network address is never used, nor the broadcast
address of an IPv4 CIDR (an IPv6 CIDR's last address is usable), and the first host address is reserved
for the ``default/kubernetes`` Service, which the API server always gives that address; others asking for
it are told it is taken by default/kubernetes. Dynamic allocation therefore starts at the second host
address. (The API server hands out dynamic IPs at random from the upper part of the range; we take the
lowest free address instead, so results are reproducible.)

A LoadBalancer Service may name its pool with the ``kubegate.io/address-pool`` annotation (MetalLB's
``metallb.io/address-pool`` and ``metallb.universe.tf/address-pool`` work too); it then gets an address
from that pool only, whether or not the pool assigns automatically.

LoadBalancer pools use every address of a CIDR, network and broadcast included, as MetalLB does: the
pool exists only to hold virtual IPs, so there is no subnet broadcast to protect. A pool with
``avoid_buggy_ips`` (MetalLB's ``avoidBuggyIPs``) skips IPv4 addresses ending in .0 and .255.

Free values are found with a cursor that only moves forward over the ranges, skipping a set of taken
values: within one call values are only ever added, so the lowest free value never lies behind the
cursor. A /12 or an IPv6 /64 is never materialised; 10,000 Services take 50-100 ms on a small VM.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from kubegate.objects.kinds import Service
from kubegate.objects.meta import ObjectKey
from kubegate.translate.context import Allocations, Diagnostic, Options, Pool

LOAD_BALANCER_IPS_ANNOTATION = "kubegate.io/loadBalancerIPs"
METALLB_LOAD_BALANCER_IPS_ANNOTATION = "metallb.universe.tf/loadBalancerIPs"
# request addresses; checked in this order, before the deprecated spec.loadBalancerIP
LOAD_BALANCER_IPS_ANNOTATIONS = (
    LOAD_BALANCER_IPS_ANNOTATION,
    "metallb.io/loadBalancerIPs",
    METALLB_LOAD_BALANCER_IPS_ANNOTATION,
)
# choose the pool by name; MetalLB's current and former spellings are honoured too
ADDRESS_POOL_ANNOTATIONS = (
    "kubegate.io/address-pool",
    "metallb.io/address-pool",
    "metallb.universe.tf/address-pool",
)
# The API server gives the first host address of the service CIDR to this Service.
KUBERNETES_SERVICE = "default/kubernetes"

# An address or port as (IP version, integer value); nodePorts use version 0. Keeping the version in the
# value stops IPv4 10.0.0.1 and IPv6 ::a00:1 from being mistaken for each other.
Value = tuple[int, int]
NODE_PORT_VERSION = 0


# --------------------------------------------------------------------------------------------------
# Address ranges (also used by kubegate.pools to validate pool configuration)


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of integer addresses of one IP version."""

    version: int
    first: int
    last: int

    def holds(self, value: Value) -> bool:
        return value[0] == self.version and self.first <= value[1] <= self.last

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def parse_address_range(text: str) -> AddressRange:
    """Parse a CIDR ("192.0.2.0/28"), an inclusive range ("192.0.2.10-192.0.2.20") or one address.

    Raises ValueError with a message that says what is wrong with ``text``.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if "-" in text:
        start_text, _, end_text = text.partition("-")
        try:
            start = ipaddress.ip_address(start_text.strip())
            end = ipaddress.ip_address(end_text.strip())
        except ValueError as error:
            raise ValueError(f"{text!r} is not a range FIRST-LAST of IP addresses: {error}") from None
        if start.version != end.version:
            raise ValueError(f"{text!r} mixes IPv{start.version} and IPv{end.version}")
        if int(start) > int(end):
            raise ValueError(f"{text!r}: the range starts after it ends")
        return AddressRange(start.version, int(start), int(end))
    if "/" in text:
        try:
            network = ipaddress.ip_network(text)
        except ValueError as error:
            try:
                suggestion = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"{text!r} is not a CIDR: {error}") from None
            raise ValueError(f"{text!r} has host bits set; did you mean {suggestion}?") from None
        return AddressRange(network.version, int(network.network_address), int(network.broadcast_address))
    try:
        address = ipaddress.ip_address(text)
    except ValueError as error:
        raise ValueError(f"{text!r} is not an IP address, CIDR or range: {error}") from None
    return AddressRange(address.version, int(address), int(address))


# Cached because every re-translation parses the same previous allocations again; the function is pure,
# so the cache cannot change a result.
@functools.lru_cache(maxsize=1 << 16)
def parse_ip(text: str) -> Value | None:
    """An IP address as a Value, or None if ``text`` is not one."""
    text = text.strip()
    quick = _parse_dotted_quad(text)
    if quick is not None:
        return (4, quick)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return (address.version, int(address))


def _parse_dotted_quad(text: str) -> int | None:
    """The common case of parse_ip, about 5x faster than ipaddress; anything unusual (leading zeros,
    IPv6) returns None and is left to ipaddress, which then decides."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    number = 0
    for part in parts:
        if not part.isdigit() or not part.isascii() or (len(part) > 1 and part[0] == "0") or len(part) > 3:
            return None
        octet = int(part)
        if octet > 255:
            return None
        number = number << 8 | octet
    return number


@functools.lru_cache(maxsize=1 << 16)
def format_value(value: Value) -> str:
    version, number = value
    if version == 4:
        return f"{number >> 24}.{number >> 16 & 0xFF}.{number >> 8 & 0xFF}.{number & 0xFF}"
    if version == 6:
        return str(ipaddress.IPv6Address(number))
    return str(number)


def _is_buggy(value: Value) -> bool:
    return value[0] == 4 and (value[1] & 0xFF) in (0, 0xFF)


# --------------------------------------------------------------------------------------------------
# Lowest-free search


@dataclass(slots=True)
class _Cursor:
    """Finds the lowest free value in ordered ranges. It only moves forward: correct because, within one
    allocate() call, values are only ever added to ``taken``."""

    ranges: tuple[AddressRange, ...]
    avoid_buggy: bool = False
    _index: int = 0
    _next: int | None = None

    def take(self, taken: set[Value]) -> Value | None:
        while self._index < len(self.ranges):
            current = self.ranges[self._index]
            number = current.first if self._next is None else self._next
            while number <= current.last:
                value = (current.version, number)
                number += 1
                if value not in taken and not (self.avoid_buggy and _is_buggy(value)):
                    taken.add(value)
                    self._next = number
                    return value
            self._index += 1
            self._next = None
        return None


# --------------------------------------------------------------------------------------------------
# Claims and who wins them


class _Claim(NamedTuple):
    holder: str  # "namespace/name"
    key: str  # the Allocations key the value would be stored under
    value: Value
    # the field path when the Service asked for the value in its spec; None when it comes from previous
    requested_at: str | None


@dataclass(slots=True)
class _Outcome:
    assigned: dict[str, Value] = field(default_factory=dict)
    # keys whose explicit request failed: they get nothing, not a dynamic value
    failed: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every pass shares: each Service's age rank and object key, and the diagnostics so far."""

    age: Mapping[str, tuple[bool, str, str]]
    objects: Mapping[str, ObjectKey]
    diagnostics: list[Diagnostic]


def _resolve(
    claims: Iterable[_Claim], held_before: Callable[[str, Value], bool], context: _Context, outcome: _Outcome
) -> None:
    """Give each contested value to one holder; explicit requests of the others become errors."""
    age, objects, diagnostics = context.age, context.objects, context.diagnostics
    # Nearly every value has one claimant; only the contested ones are grouped and ranked.
    first: dict[Value, _Claim] = {}
    contested: dict[Value, list[_Claim]] = {}
    for claim in claims:
        earlier = first.setdefault(claim.value, claim)
        if earlier is claim:
            outcome.assigned[claim.key] = claim.value
        elif claim.value in contested:
            contested[claim.value].append(claim)
        else:
            contested[claim.value] = [earlier, claim]
    for value, group in contested.items():
        holders = {claim.holder for claim in group}
        winner = min(holders, key=lambda holder: (not held_before(holder, value), age[holder]))
        for claim in group:
            outcome.assigned.pop(claim.key, None)
        for claim in group:
            if claim.holder == winner:
                outcome.assigned[claim.key] = value
            elif claim.requested_at is not None:
                outcome.failed.add(claim.key)
                diagnostics.append(
                    _error(
                        objects[claim.holder],
                        claim.requested_at,
                        f"{format_value(value)} is already allocated to Service {winner}",
                    )
                )


def _error(obj: ObjectKey, where: str, message: str) -> Diagnostic:
    return Diagnostic(object=obj, field=where, severity="error", message=message)


# --------------------------------------------------------------------------------------------------
# What each Service needs


class _Subject(NamedTuple):
    holder: str
    object: ObjectKey
    service: Service
    # the requested ClusterIP and where it was given ("" when none), or None when the Service has none
    # (ExternalName, headless); worked out once because every pass asks
    cluster_ip: tuple[str, str] | None

    @property
    def namespace(self) -> str:
        return self.object.namespace


def _requested_cluster_ip(service: Service) -> tuple[str, str] | None:
    spec = service.spec
    if spec.type == "ExternalName":
        return None
    if spec.cluster_ip:
        requested = spec.cluster_ip, "spec.clusterIP"
    elif spec.cluster_ips:
        requested = spec.cluster_ips[0], "spec.clusterIPs[0]"
    else:
        return "", "spec.clusterIP"
    return None if requested[0] == "None" else requested


def _exposes_node_ports(subject: _Subject) -> bool:
    return subject.service.spec.type in ("NodePort", "LoadBalancer") and subject.cluster_ip is not None


def _node_port_key(holder: str, port: int, protocol: str) -> str:
    return f"{holder}:{port}/{protocol}"


def _holder_of_node_port_key(key: str) -> str:
    return key.rpartition(":")[0]


# --------------------------------------------------------------------------------------------------
# ClusterIPs


def _allocate_cluster_ips(
    subjects: list[_Subject],
    previous: Mapping[str, str],
    options: Options,
    context: _Context,
) -> dict[str, Value]:
    diagnostics = context.diagnostics
    wanting = [subject for subject in subjects if subject.cluster_ip is not None]
    try:
        network = ipaddress.ip_network(options.service_cidr, strict=False)
    except ValueError as error:
        for subject in wanting:
            diagnostics.append(
                _error(subject.object, "spec.clusterIP", f"the service CIDR is invalid: {error}")
            )
        return {}
    version = network.version
    base = int(network.network_address)
    last = int(network.broadcast_address) - (1 if version == 4 else 0)
    reserved = (version, base + 1)
    usable = AddressRange(version, base + 1, last)

    outcome = _Outcome()
    claims: list[_Claim] = []
    for subject in wanting:
        holder = subject.holder
        requested, where = subject.cluster_ip or ("", "")
        if requested:
            value = parse_ip(requested)
            if value is None:
                problem = f"{requested!r} is not a valid IP address"
            elif not usable.holds(value):
                problem = f"{requested} is not a usable address of the service CIDR {network}"
            elif value == reserved and holder != KUBERNETES_SERVICE:
                problem = (
                    f"{requested} is already allocated to Service {KUBERNETES_SERVICE} (the first address "
                    "of the service CIDR is reserved for it)"
                )
            else:
                claims.append(_Claim(holder, holder, value, where))
                continue
            outcome.failed.add(holder)
            diagnostics.append(_error(subject.object, where, problem))
        elif holder == KUBERNETES_SERVICE:
            claims.append(_Claim(holder, holder, reserved, None))
        elif holder in previous:
            value = parse_ip(previous[holder])
            if value is not None and usable.holds(value) and value != reserved:
                claims.append(_Claim(holder, holder, value, None))

    def held_before(holder: str, value: Value) -> bool:
        if holder == KUBERNETES_SERVICE and value == reserved:
            return True
        return holder in previous and parse_ip(previous[holder]) == value

    _resolve(claims, held_before, context, outcome)

    taken = set(outcome.assigned.values())
    taken.add(reserved)
    cursor = _Cursor((AddressRange(version, base + 2, last),))
    for subject in wanting:
        if subject.holder in outcome.assigned or subject.holder in outcome.failed:
            continue
        value = cursor.take(taken)
        if value is None:
            diagnostics.append(
                _error(subject.object, "spec.clusterIP", f"no free address in the service CIDR {network}")
            )
        else:
            outcome.assigned[subject.holder] = value
    return outcome.assigned


# --------------------------------------------------------------------------------------------------
# nodePorts


class _PortNeed(NamedTuple):
    position: int  # in spec.ports
    key: str
    port: int
    protocol: str
    requested: int | None
    # False for LoadBalancer Services with allocateLoadBalancerNodePorts: false: only requested ports
    dynamic: bool


def _port_needs(subject: _Subject, diagnostics: list[Diagnostic]) -> list[_PortNeed]:
    spec = subject.service.spec
    dynamic = spec.type == "NodePort" or spec.allocate_load_balancer_node_ports
    needs: list[_PortNeed] = []
    seen: dict[str, int] = {}
    for index, port in enumerate(spec.ports):
        protocol = port.protocol.upper()
        key = _node_port_key(subject.holder, port.port, protocol)
        if key in seen:
            diagnostics.append(
                _error(
                    subject.object,
                    f"spec.ports[{index}]",
                    f"port {port.port}/{protocol} is listed twice (also spec.ports[{seen[key]}])",
                )
            )
            continue
        seen[key] = index
        requested = port.node_port or None
        if requested is None and not dynamic:
            continue
        needs.append(_PortNeed(index, key, port.port, protocol, requested, dynamic))
    return needs


def _allocate_node_ports(
    subjects: list[_Subject],
    previous: Mapping[str, int],
    options: Options,
    context: _Context,
) -> dict[str, Value]:
    diagnostics = context.diagnostics
    low, high = options.node_port_range
    port_range = AddressRange(NODE_PORT_VERSION, low, high)
    needs_of: dict[str, list[_PortNeed]] = {}
    exposing: list[_Subject] = []
    for subject in subjects:
        if _exposes_node_ports(subject):
            needs = _port_needs(subject, diagnostics)
            if needs:
                needs_of[subject.holder] = needs
                exposing.append(subject)

    # which nodePort values each Service held before, whatever port they were for
    held: dict[str, set[Value]] = {}
    for key, number in previous.items():
        holder = _holder_of_node_port_key(key)
        if holder in needs_of:
            held.setdefault(holder, set()).add((NODE_PORT_VERSION, number))

    outcome = _Outcome()
    claims: list[_Claim] = []
    for subject in exposing:
        needs = needs_of[subject.holder]
        # One Service may use a nodePort for several ports only with different protocols.
        used: dict[tuple[int, str], int] = {}
        for need in needs:
            if need.requested is None:
                continue
            where = f"spec.ports[{need.position}].nodePort"
            value = (NODE_PORT_VERSION, need.requested)
            problem = None
            if not port_range.holds(value):
                problem = f"{need.requested} is outside the nodePort range {low}-{high}"
            elif (need.requested, need.protocol) in used:
                other = used[(need.requested, need.protocol)]
                problem = f"{need.requested}/{need.protocol} is already used by spec.ports[{other}]"
            if problem is not None:
                outcome.failed.add(need.key)
                diagnostics.append(_error(subject.object, where, problem))
                continue
            used[(need.requested, need.protocol)] = need.position
            claims.append(_Claim(subject.holder, need.key, value, where))
        for need in needs:
            if need.requested is not None or need.key not in previous:
                continue
            number = previous[need.key]
            value = (NODE_PORT_VERSION, number)
            if port_range.holds(value) and (number, need.protocol) not in used:
                used[(number, need.protocol)] = need.position
                claims.append(_Claim(subject.holder, need.key, value, None))

    _resolve(claims, lambda holder, value: value in held.get(holder, ()), context, outcome)

    taken = set(outcome.assigned.values())
    cursor = _Cursor((port_range,))
    for subject in exposing:
        needs = needs_of[subject.holder]
        for need in needs:
            if need.key in outcome.assigned or need.key in outcome.failed:
                continue
            found = _shareable_node_port(need, needs, outcome.assigned)
            if found is None:
                found = cursor.take(taken)
            if found is None:
                diagnostics.append(
                    _error(
                        subject.object,
                        f"spec.ports[{need.position}].nodePort",
                        f"no free nodePort in the range {low}-{high}",
                    )
                )
            else:
                outcome.assigned[need.key] = found
    return outcome.assigned


def _shareable_node_port(
    need: _PortNeed, needs: list[_PortNeed], assigned: Mapping[str, Value]
) -> Value | None:
    """The nodePort of another protocol on the same port number of this Service, as the API server
    reuses it (53/TCP and 53/UDP get one nodePort), unless this protocol already uses that value."""
    values_of_protocol = {
        assigned[other.key] for other in needs if other.protocol == need.protocol and other.key in assigned
    }
    for other in needs:
        if other.port == need.port and other.protocol != need.protocol and other.key in assigned:
            value = assigned[other.key]
            if value not in values_of_protocol:
                return value
    return None


# --------------------------------------------------------------------------------------------------
# LoadBalancer IPs


@dataclass(frozen=True, slots=True)
class _ParsedPool:
    pool: Pool
    ranges: tuple[AddressRange, ...]

    def contains(self, value: Value) -> bool:
        if self.pool.avoid_buggy_ips and _is_buggy(value):
            return False
        return any(address_range.holds(value) for address_range in self.ranges)


def _parse_pools(pools: Iterable[Pool]) -> list[_ParsedPool]:
    parsed: list[_ParsedPool] = []
    for pool in pools:
        ranges: list[AddressRange] = []
        for text in pool.addresses:
            # kubegate.pools validates configuration before it gets here; an entry that slipped through
            # unvalidated is skipped rather than failing every Service.
            try:
                ranges.append(parse_address_range(text))
            except ValueError:
                continue
        parsed.append(_ParsedPool(pool, tuple(ranges)))
    return parsed


def _service_class(service: Service, options: Options) -> str:
    return service.spec.load_balancer_class or options.load_balancer_class


def _serves(pool: Pool, namespace: str, service_class: str) -> bool:
    return (not pool.namespaces or namespace in pool.namespaces) and (
        not pool.service_classes or service_class in pool.service_classes
    )


def _requested_pool(service: Service) -> tuple[str, str] | None:
    """The pool a Service names in an annotation, and where."""
    annotations = service.metadata.annotations
    for name in ADDRESS_POOL_ANNOTATIONS:
        chosen = annotations.get(name, "").strip()
        if chosen:
            return chosen, f"metadata.annotations[{name}]"
    return None


def _requested_load_balancer_ip(subject: _Subject, diagnostics: list[Diagnostic]) -> tuple[str, str]:
    annotations = subject.service.metadata.annotations
    for name in LOAD_BALANCER_IPS_ANNOTATIONS:
        if name in annotations:
            where = f"metadata.annotations[{name}]"
            addresses = [part.strip() for part in annotations[name].split(",") if part.strip()]
            if len(addresses) > 1:
                diagnostics.append(
                    Diagnostic(
                        object=subject.object,
                        field=where,
                        severity="warning",
                        message=f"kubegate assigns one address per Service; using {addresses[0]}, "
                        f"ignoring {', '.join(addresses[1:])}",
                    )
                )
            if addresses:
                return addresses[0], where
    return subject.service.spec.load_balancer_ip.strip(), "spec.loadBalancerIP"


def _previous_load_balancer_ip(subject: _Subject, previous: Mapping[str, str]) -> Value | None:
    """What the Service held: from the state file, else from its status, which kubegate wrote there
    itself when the Kubernetes source is used; so a lost state file does not move every address."""
    if subject.holder in previous:
        return parse_ip(previous[subject.holder])
    for ingress in subject.service.status.load_balancer.ingress:
        if ingress.ip:
            return parse_ip(ingress.ip)
    return None


def _allocate_load_balancer_ips(
    subjects: list[_Subject],
    previous: Mapping[str, str],
    options: Options,
    context: _Context,
) -> dict[str, Value]:
    diagnostics = context.diagnostics
    pools = _parse_pools(options.pools)
    outcome = _Outcome()
    # (Service, indexes of the pools it may use, whether it named its pool)
    wanting: list[tuple[_Subject, list[int], bool]] = []
    for subject in subjects:
        service = subject.service
        if service.spec.type != "LoadBalancer" or subject.cluster_ip is None:
            continue  # headless Services cannot be load-balanced
        if service.spec.load_balancer_class not in (None, options.load_balancer_class):
            continue  # another implementation's Service
        service_class = _service_class(service, options)
        allowed = [
            index
            for index, parsed in enumerate(pools)
            if _serves(parsed.pool, subject.namespace, service_class)
        ]
        chosen = _requested_pool(service)
        if chosen is not None:
            allowed = [index for index in allowed if pools[index].pool.name == chosen[0]]
            if not allowed:
                outcome.failed.add(subject.holder)
                diagnostics.append(
                    _error(
                        subject.object,
                        chosen[1],
                        f"no address pool named {chosen[0]} serves namespace {subject.namespace} and "
                        f"loadBalancerClass {service_class}",
                    )
                )
                continue
        wanting.append((subject, allowed, chosen is not None))

    claims: list[_Claim] = []
    for subject, allowed, _ in wanting:
        holder = subject.holder
        requested, where = _requested_load_balancer_ip(subject, diagnostics)
        if requested:
            value = parse_ip(requested)
            if value is None:
                problem = f"{requested!r} is not a valid IP address"
            elif not any(pools[index].contains(value) for index in allowed):
                names = ", ".join(pools[index].pool.name for index in allowed) or "none"
                problem = f"{requested} is not in an address pool this Service may use (pools: {names})"
            else:
                claims.append(_Claim(holder, holder, value, where))
                continue
            outcome.failed.add(holder)
            diagnostics.append(_error(subject.object, where, problem))
            continue
        value = _previous_load_balancer_ip(subject, previous)
        if value is not None and any(pools[index].contains(value) for index in allowed):
            claims.append(_Claim(holder, holder, value, None))

    by_holder = {subject.holder: subject for subject, _, _ in wanting}
    _resolve(
        claims,
        lambda holder, value: _previous_load_balancer_ip(by_holder[holder], previous) == value,
        context,
        outcome,
    )

    taken = set(outcome.assigned.values())
    cursors = [_Cursor(parsed.ranges, parsed.pool.avoid_buggy_ips) for parsed in pools]
    exhausted: set[int] = set()
    for subject, allowed, named in wanting:
        if subject.holder in outcome.assigned or subject.holder in outcome.failed:
            continue
        # naming a pool is asking for it explicitly, so its autoAssign does not matter (as in MetalLB)
        automatic = allowed if named else [index for index in allowed if pools[index].pool.auto_assign]
        value = None
        for index in automatic:
            if index in exhausted:
                continue
            value = cursors[index].take(taken)
            if value is not None:
                break
            exhausted.add(index)
        if value is not None:
            outcome.assigned[subject.holder] = value
        elif automatic:
            names = ", ".join(pools[index].pool.name for index in automatic)
            diagnostics.append(_error(subject.object, "spec.type", f"no free address in pools {names}"))
        else:
            service_class = _service_class(subject.service, options)
            diagnostics.append(
                _error(
                    subject.object,
                    "spec.type",
                    f"no address pool assigns addresses automatically to namespace {subject.namespace} "
                    f"and loadBalancerClass {service_class}",
                )
            )
    return outcome.assigned


# --------------------------------------------------------------------------------------------------
# Addresses the API server already allocated


def _addresses_from_spec(
    subjects: list[_Subject], diagnostics: list[Diagnostic]
) -> tuple[dict[str, Value], dict[str, Value]]:
    """ClusterIPs and nodePorts exactly as the API server wrote them into the specs: it allocated them
    (from its own service CIDR, which need not be ours) and keeps them unique, so nothing is checked
    against our ranges and nothing is handed out."""
    cluster_ips: dict[str, Value] = {}
    node_ports: dict[str, Value] = {}
    for subject in subjects:
        requested, where = subject.cluster_ip or ("", "")
        if requested:
            value = parse_ip(requested)
            if value is None:
                diagnostics.append(_error(subject.object, where, f"{requested!r} is not a valid IP address"))
            else:
                cluster_ips[subject.holder] = value
        if not _exposes_node_ports(subject):
            continue
        for port in subject.service.spec.ports:
            if port.node_port:
                key = _node_port_key(subject.holder, port.port, port.protocol.upper())
                node_ports[key] = (NODE_PORT_VERSION, port.node_port)
    return cluster_ips, node_ports


# --------------------------------------------------------------------------------------------------
# Entry point


def _age(service: Service, holder: str) -> tuple[bool, str, str]:
    """Sort key, oldest first: Services without a creationTimestamp count as newest."""
    stamp = service.metadata.creation_timestamp
    return (not stamp, stamp, holder)


def allocate(
    services: Mapping[tuple[str, str], Service], previous: Allocations, options: Options
) -> tuple[Allocations, list[Diagnostic]]:
    """Allocate ClusterIPs, nodePorts and LoadBalancer IPs for ``services`` ((namespace, name) -> Service),
    keeping what ``previous`` holds where still valid. Returns the new allocations (only for Services
    in ``services`` that need them) and the problems found, each on the Service concerned."""
    age: dict[str, tuple[bool, str, str]] = {}
    objects: dict[str, ObjectKey] = {}
    subjects: list[_Subject] = []
    for (namespace, name), service in services.items():
        holder = f"{namespace}/{name}"
        age[holder] = _age(service, holder)
        objects[holder] = ObjectKey("Service", namespace, name)
        subjects.append(_Subject(holder, objects[holder], service, _requested_cluster_ip(service)))
    subjects.sort(key=lambda subject: age[subject.holder])

    diagnostics: list[Diagnostic] = []
    context = _Context(age, objects, diagnostics)
    if options.addresses_from_spec:
        cluster_ips, node_ports = _addresses_from_spec(subjects, diagnostics)
    else:
        cluster_ips = _allocate_cluster_ips(subjects, previous.cluster_ips, options, context)
        node_ports = _allocate_node_ports(subjects, previous.node_ports, options, context)
    load_balancer_ips = _allocate_load_balancer_ips(subjects, previous.load_balancer_ips, options, context)
    allocations = Allocations(
        cluster_ips={key: format_value(value) for key, value in sorted(cluster_ips.items())},
        node_ports={key: value[1] for key, value in sorted(node_ports.items())},
        load_balancer_ips={key: format_value(value) for key, value in sorted(load_balancer_ips.items())},
    )
    return allocations, sorted(diagnostics, key=lambda d: (d.object, d.field, d.severity, d.message))
