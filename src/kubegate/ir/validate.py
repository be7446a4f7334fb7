"""Invariants of a routing table and its endpoint table, checked by tests and before a plane swaps in.

The translator promises these; a plane may rely on them instead of checking on every request:
- every route, virtual-host default and table default points at a cluster the table defines;
- every cluster has an entry (possibly empty) in the endpoint table, and every L4 port's cluster exists;
- every ``tls_certificate`` names a certificate of the table;
- virtual hosts, clusters, certificates and services are sorted by name and unique;
- within a virtual host, all Exact routes come first and Prefix/Regex routes never precede a longer one.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubegate.ir.model import Backend, EndpointTable, RoutingTable


def _sorted_unique(names: Sequence[str], what: str, problems: list[str]) -> None:
    if list(names) != sorted(set(names)):
        problems.append(f"{what} are not sorted and unique")


def problems(routing: RoutingTable, endpoints: EndpointTable) -> list[str]:
    """What is wrong with the tables; empty when they are consistent."""
    found: list[str] = []
    clusters = {cluster.name for cluster in routing.clusters}
    certificates = {certificate.name for certificate in routing.certificates}

    def check(backend: Backend | None, where: str) -> None:
        if backend is not None and backend.cluster not in clusters:
            found.append(f"{where} points at undefined cluster {backend.cluster}")

    _sorted_unique([v.host for v in routing.virtual_hosts], "virtual hosts", found)
    _sorted_unique([c.name for c in routing.clusters], "clusters", found)
    _sorted_unique([c.name for c in routing.certificates], "certificates", found)
    _sorted_unique([s.name for s in routing.services], "services", found)
    check(routing.default_backend, "the table default backend")
    for vhost in routing.virtual_hosts:
        label = f"virtual host {vhost.host or '(any)'}"
        check(vhost.default_backend, f"{label} default backend")
        if vhost.tls_certificate is not None and vhost.tls_certificate not in certificates:
            found.append(f"{label} uses undefined certificate {vhost.tls_certificate}")
        seen_prefix = False
        last_length = None
        for index, route in enumerate(vhost.routes):
            for backend in route.backends:
                check(backend, f"{label} route {index} ({route.match} {route.path})")
            if route.match == "Exact":
                if seen_prefix:
                    found.append(f"{label} route {index}: Exact {route.path} after a Prefix/Regex route")
                continue
            seen_prefix = True
            if last_length is not None and len(route.path) > last_length:
                found.append(f"{label} route {index}: {route.path} is longer than the route before it")
            last_length = len(route.path)
    for service in routing.services:
        for port in service.ports:
            if port.cluster not in clusters:
                found.append(
                    f"service {service.name} port {port.port} points at undefined cluster {port.cluster}"
                )
    missing = clusters - endpoints.clusters.keys()
    if missing:
        found.append(f"clusters without an endpoint entry: {', '.join(sorted(missing))}")
    return found
