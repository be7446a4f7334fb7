"""Allocations with the Kubernetes source: the cluster is the record, and only the leader adds to it.

With files, kubegate keeps its allocations in a state file. With the API server, several replicas run and
leadership moves between them, so a local file would let two replicas remember the same IP for different
Services. Instead:

- The API server allocates ClusterIPs and nodePorts itself; they are in each Service's spec.
- A LoadBalancer IP kubegate hands out is recorded in the Service's ``status.loadBalancer.ingress``, and
  nowhere else. ``allocations_from_cluster`` reads these back as the translator's ``previous``
  allocations, so every replica, and every new leader, starts from what the cluster shows.
- Only the leader hands out new LoadBalancer IPs, by writing the translation's statuses (see
  ``status_writer``, which also refuses claims its possibly stale view cannot see are taken).
- Every replica, the leader included, serves ``restrict_to_status(translation, snapshot)``: the
  translation with only the LoadBalancer IPs already written to each Service's status. A follower thus
  never serves an address the leader may give to another Service, and the leader does not serve a claim
  the API server has not accepted (a refused or failed write). Once the write arrives through the
  informer, the next translation serves it, one watch event later.

The translator itself is unchanged: ``restrict_to_status`` post-processes its result.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import msgspec

from kubegate.ir.model import L4Service
from kubegate.objects.kinds import Service
from kubegate.objects.snapshot import Snapshot
from kubegate.translate.allocation import AddressRange, parse_address_range, parse_ip
from kubegate.translate.context import Allocations, Options, Pool, Translation


def handled_load_balancer(service: Service, options: Options) -> bool:
    """A LoadBalancer Service kubegate assigns an address to (no class, or ours)."""
    spec = service.spec
    return spec.type == "LoadBalancer" and spec.load_balancer_class in (None, options.load_balancer_class)


def shown_load_balancer_ips(service: Service) -> tuple[str, ...]:
    """The IPs status.loadBalancer.ingress shows, in order."""
    return tuple(entry.ip for entry in service.status.load_balancer.ingress if entry.ip)


# cached: every reconcile asks again about the same pools (Pool is frozen, so hashable)
@functools.lru_cache(maxsize=16)
def _pool_ranges(pools: tuple[Pool, ...]) -> tuple[AddressRange, ...]:
    ranges: list[AddressRange] = []
    for pool in pools:
        for text in pool.addresses:
            try:
                ranges.append(parse_address_range(text))
            except ValueError:
                continue  # kubegate.pools rejects bad pool entries before they get here
    return tuple(ranges)


def in_pools(ip: str, pools: tuple[Pool, ...]) -> bool:
    """Whether ``ip`` lies in one of ``pools`` (whatever their namespace or class restrictions)."""
    value = parse_ip(ip)
    return value is not None and any(address_range.holds(value) for address_range in _pool_ranges(pools))


def _age(service: Service, holder: str) -> tuple[bool, str, str]:
    # oldest first, as the allocator ranks claims: no creationTimestamp counts as newest
    stamp = service.metadata.creation_timestamp
    return (not stamp, stamp, holder)


class _Seed(NamedTuple):
    """What one Service contributes to the seeded allocations."""

    cluster_ip: str | None
    node_ports: tuple[tuple[str, int], ...]
    # (age, IP) when it shows an IP from our pools
    load_balancer: tuple[tuple[bool, str, str], str] | None


def _seed(holder: str, service: Service, options: Options) -> _Seed:
    spec = service.spec
    cluster_ip = spec.cluster_ip or (spec.cluster_ips[0] if spec.cluster_ips else "")
    usable = cluster_ip and cluster_ip != "None" and spec.type != "ExternalName"
    node_ports = tuple(
        (f"{holder}:{port.port}/{port.protocol.upper()}", port.node_port)
        for port in spec.ports
        if port.node_port
    )
    load_balancer = None
    if handled_load_balancer(service, options):
        ranges = _pool_ranges(options.pools)
        for ip in shown_load_balancer_ips(service):
            value = parse_ip(ip)
            if value is not None and any(address_range.holds(value) for address_range in ranges):
                load_balancer = (_age(service, holder), ip)
                break
    return _Seed(cluster_ip if usable else None, node_ports, load_balancer)


class ClusterAllocations:
    """``allocations_from_cluster`` for a long-running process: a Service object the snapshot shares with
    the previous one (unchanged since) is not looked at again, and an unchanged Service mapping returns
    the previous answer. About 4 us per Service otherwise, which every reconcile of 10,000 Services
    would pay."""

    def __init__(self) -> None:
        self._seeds: dict[tuple[str, str], tuple[Service, _Seed]] = {}
        self._options: Options | None = None
        self._last: tuple[object, Allocations] | None = None

    def __call__(self, snapshot: Snapshot, options: Options) -> Allocations:
        services = snapshot.services
        if options != self._options:
            self._seeds.clear()
            self._last = None
            self._options = options
        elif self._last is not None and self._last[0] is services:
            return self._last[1]
        seeds: dict[tuple[str, str], tuple[Service, _Seed]] = {}
        previous = self._seeds
        for key, service in services.items():
            known = previous.get(key)
            if known is not None and known[0] is service:
                seeds[key] = known
            else:
                seeds[key] = (service, _seed(f"{key[0]}/{key[1]}", service, options))
        self._seeds = seeds
        allocations = _assemble(seeds)
        self._last = (services, allocations)
        return allocations


def _assemble(seeds: dict[tuple[str, str], tuple[Service, _Seed]]) -> Allocations:
    cluster_ips: dict[str, str] = {}
    node_ports: dict[str, int] = {}
    candidates: list[tuple[tuple[bool, str, str], str]] = []
    for (namespace, name), (_, seed) in seeds.items():
        if seed.cluster_ip is not None:
            cluster_ips[f"{namespace}/{name}"] = seed.cluster_ip
        node_ports.update(seed.node_ports)
        if seed.load_balancer is not None:
            candidates.append(seed.load_balancer)
    load_balancer_ips: dict[str, str] = {}
    taken: set[str] = set()
    # oldest first, so of two Services showing one IP the older keeps it
    for (_, _, holder), ip in sorted(candidates):
        if ip not in taken:
            taken.add(ip)
            load_balancer_ips[holder] = ip
    return Allocations(cluster_ips=cluster_ips, node_ports=node_ports, load_balancer_ips=load_balancer_ips)


def allocations_from_cluster(snapshot: Snapshot, options: Options) -> Allocations:
    """What the cluster shows as allocated, as the translator's ``previous`` allocations.

    ClusterIPs and nodePorts come from each Service's spec (the API server allocated them); a
    LoadBalancer IP from the first IP of the status that lies in one of our pools. Should two Services
    show the same IP (an edit by hand, or a split brain), the older keeps it and the other gets none
    here, so the result never gives one IP twice. Stateless; see ``ClusterAllocations`` for the
    memoised form a reconciler should hold.
    """
    seeds = {
        key: (service, _seed(f"{key[0]}/{key[1]}", service, options))
        for key, service in snapshot.services.items()
    }
    return _assemble(seeds)


def restrict_to_status(translation: Translation, snapshot: Snapshot) -> Translation:
    """``translation`` as a replica may serve it: each LoadBalancer Service keeps only the IPs its status
    already shows, in the routing table, in ``service_status`` and in ``allocations``. Write statuses
    from the unrestricted translation (on the leader); publish this one to the data planes.

    Returns ``translation`` itself when nothing had to be removed (the usual case once the leader has
    written every status), so callers can compare by identity.
    """
    kept: dict[tuple[str, str], tuple[str, ...]] = {}
    for key, addresses in translation.service_status.items():
        service = snapshot.services.get(key)
        shown = set(shown_load_balancer_ips(service)) if service is not None else set()
        kept[key] = tuple(address for address in addresses if address in shown)
    if kept == translation.service_status:
        return translation

    def keep(l4: L4Service) -> L4Service:
        namespace, _, name = l4.name.partition("/")
        allowed = kept.get((namespace, name))
        if allowed is None or allowed == l4.load_balancer_ips:
            return l4
        return msgspec.structs.replace(
            l4, load_balancer_ips=tuple(ip for ip in l4.load_balancer_ips if ip in allowed)
        )

    routing = msgspec.structs.replace(
        translation.routing, services=tuple(keep(l4) for l4 in translation.routing.services)
    )
    load_balancer_ips = {
        holder: ip
        for holder, ip in translation.allocations.load_balancer_ips.items()
        if ip in kept.get(_split(holder), ())
    }
    allocations = msgspec.structs.replace(translation.allocations, load_balancer_ips=load_balancer_ips)
    return dataclasses.replace(translation, routing=routing, allocations=allocations, service_status=kept)


def _split(holder: str) -> tuple[str, str]:
    namespace, _, name = holder.partition("/")
    return namespace, name
