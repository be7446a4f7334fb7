"""Human-readable tables for the CLI: `get` in kubectl's columns, and `routes`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from kubegate.ir.model import Backend, EndpointTable, L4Port, L4Service, RoutingTable
from kubegate.objects.kinds import Ingress, Service
from kubegate.translate.context import Translation

# kubectl prints at most this many endpoints, then "+ N more..."
_MAX_ENDPOINTS_SHOWN = 3


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded like kubectl's tabwriter: each as wide as its widest cell plus three spaces."""
    all_rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(header))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def age(timestamp: str, now: datetime | None = None) -> str:
    """kubectl's short human duration since an RFC 3339 timestamp; <unknown> without one."""
    if not timestamp:
        return "<unknown>"
    try:
        created = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - created).total_seconds())
    if seconds < 0:
        return "0s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    years = days // 365
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if years < 2:
        return f"{days}d"
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def _with_namespace(namespace: str, row: list[str], all_namespaces: bool) -> list[str]:
    return [namespace, *row] if all_namespaces else row


def _l4_by_name(routing: RoutingTable) -> dict[str, L4Service]:
    return {service.name: service for service in routing.services}


def services_table(services: Sequence[Service], translation: Translation, all_namespaces: bool) -> str:
    l4 = _l4_by_name(translation.routing)
    rows = []
    for svc in services:
        meta, spec = svc.metadata, svc.spec
        compiled = l4.get(f"{meta.namespace}/{meta.name}")
        if spec.type == "ExternalName":
            cluster_ip, external = "<none>", spec.external_name or "<none>"
        else:
            ips = compiled.cluster_ips if compiled else ()
            headless = spec.cluster_ip == "None"
            cluster_ip = "None" if headless else (",".join(ips) or "<none>")
            external_ips = list(spec.external_ips)
            if spec.type == "LoadBalancer":
                lb = list(compiled.load_balancer_ips) if compiled else []
                external_ips = lb + [ip for ip in external_ips if ip not in lb]
                external = ",".join(external_ips) or "<pending>"
            else:
                external = ",".join(external_ips) or "<none>"
        ports = []
        compiled_ports: dict[tuple[int, str], L4Port] = (
            {(p.port, p.protocol): p for p in compiled.ports} if compiled else {}
        )
        for port in spec.ports:
            node_port = port.node_port
            match = compiled_ports.get((port.port, port.protocol))
            if match is not None and match.node_port is not None:
                node_port = match.node_port
            if node_port and spec.type in ("NodePort", "LoadBalancer"):
                ports.append(f"{port.port}:{node_port}/{port.protocol}")
            else:
                ports.append(f"{port.port}/{port.protocol}")
        row = [meta.name, spec.type, cluster_ip, external, ",".join(ports) or "<none>"]
        rows.append(_with_namespace(meta.namespace, [*row, age(meta.creation_timestamp)], all_namespaces))
    header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    return table(_with_namespace("NAMESPACE", header, all_namespaces), rows)


def ingresses_table(ingresses: Sequence[Ingress], translation: Translation, all_namespaces: bool) -> str:
    rows = []
    for ing in ingresses:
        meta, spec = ing.metadata, ing.spec
        hosts = sorted({rule.host or "*" for rule in spec.rules}) or ["*"]
        address = ",".join(translation.ingress_status.get((meta.namespace, meta.name), ()))
        ports = "80, 443" if spec.tls else "80"
        klass = spec.ingress_class_name or "<none>"
        row = [meta.name, klass, ",".join(hosts), address, ports, age(meta.creation_timestamp)]
        rows.append(_with_namespace(meta.namespace, row, all_namespaces))
    header = ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    return table(_with_namespace("NAMESPACE", header, all_namespaces), rows)


def _endpoint_list(addresses: Sequence[str]) -> str:
    if not addresses:
        return "<none>"
    shown = ",".join(addresses[:_MAX_ENDPOINTS_SHOWN])
    hidden = len(addresses) - _MAX_ENDPOINTS_SHOWN
    return f"{shown} + {hidden} more..." if hidden > 0 else shown


def endpoints_table(services: Sequence[Service], translation: Translation, all_namespaces: bool) -> str:
    """One row per Service with the endpoints kubegate computed for it (from Pods or Endpoints/Slices)."""
    l4 = _l4_by_name(translation.routing)
    rows = []
    for svc in services:
        meta = svc.metadata
        compiled = l4.get(f"{meta.namespace}/{meta.name}")
        addresses: list[str] = []
        for port in compiled.ports if compiled else ():
            for endpoint in translation.endpoints.clusters.get(port.cluster, ()):
                text = (
                    f"{endpoint.ip}:{endpoint.port}"
                    if ":" not in endpoint.ip
                    else f"[{endpoint.ip}]:{endpoint.port}"
                )
                if text not in addresses:
                    addresses.append(text)
        row = [meta.name, _endpoint_list(addresses), age(meta.creation_timestamp)]
        rows.append(_with_namespace(meta.namespace, row, all_namespaces))
    return table(_with_namespace("NAMESPACE", ["NAME", "ENDPOINTS", "AGE"], all_namespaces), rows)


def _backend_cells(backends: Sequence[Backend], endpoints: EndpointTable) -> tuple[str, str]:
    names: list[str] = []
    ready: list[str] = []
    for backend in backends:
        names.append(backend.cluster if len(backends) == 1 else f"{backend.cluster} ({backend.weight})")
        ready.extend(f"{e.ip}:{e.port}" for e in endpoints.clusters.get(backend.cluster, ()))
    return ",".join(names), _endpoint_list(ready)


def routes_text(translation: Translation) -> str:
    """The routing table in match order, then the L4 services: what traffic would do."""
    routing, endpoints = translation.routing, translation.endpoints
    rows: list[list[str]] = []
    for vhost in routing.virtual_hosts:
        host = vhost.host or "*"
        tls = "yes" if vhost.tls_certificate else ""
        for route in vhost.routes:
            backend, ready = _backend_cells(route.backends, endpoints)
            rewrite = f" -> {route.options.rewrite_target}" if route.options.rewrite_target else ""
            path = f"{route.path}{rewrite}"
            rows.append([host, path, route.match, backend, ready, tls, route.source])
        if vhost.default_backend is not None:
            backend, ready = _backend_cells((vhost.default_backend,), endpoints)
            rows.append([host, "(no match)", "Default", backend, ready, tls, ""])
    if routing.default_backend is not None:
        backend, ready = _backend_cells((routing.default_backend,), endpoints)
        rows.append(["(any)", "(no match)", "Default", backend, ready, "", ""])
    header = ["HOST", "PATH", "MATCH", "BACKEND", "ENDPOINTS", "TLS", "SOURCE"]
    http = table(header, rows) if rows else "no HTTP routes"
    l4_rows = []
    for service in routing.services:
        addresses = [*service.cluster_ips, *service.external_ips, *service.load_balancer_ips]
        for port in service.ports:
            node = str(port.node_port) if port.node_port else ""
            port_endpoints = [f"{e.ip}:{e.port}" for e in endpoints.clusters.get(port.cluster, ())]
            l4_rows.append(
                [
                    service.name,
                    service.type,
                    ",".join(addresses) or "<none>",
                    f"{port.port}/{port.protocol}",
                    node,
                    _endpoint_list(port_endpoints),
                ]
            )
    l4_header = ["SERVICE", "TYPE", "ADDRESSES", "PORT", "NODEPORT", "ENDPOINTS"]
    l4 = table(l4_header, l4_rows) if l4_rows else "no Services"
    return f"{http}\n\n{l4}"
