"""The ingress pass: each Ingress of ours becomes routes on virtual hosts; then hosts are merged.

Path matching (the order of ``VirtualHost.routes`` is match order; the first match wins):
- ``Exact`` matches the path as written, byte for byte.
- ``Prefix`` matches element-wise: ``/foo`` matches ``/foo`` and ``/foo/bar`` but not ``/foobar``; a
  trailing slash in the Ingress is ignored (``/foo/`` is ``/foo``); ``/`` matches everything. The IR
  path drops the trailing slash.
- ``ImplementationSpecific`` is treated as ``Prefix`` (ingress-nginx's behaviour without regex), and an
  empty path (legacy Ingresses often omit it) as ``/``.
- With ``nginx.ingress.kubernetes.io/use-regex: "true"``, or a ``rewrite-target`` using ``$1``-style
  captures (ingress-nginx implies regex then), the Prefix and ImplementationSpecific paths of that
  Ingress are regular expressions (match ``Regex``, anchored at the start). Unlike ingress-nginx, which
  turns every path of the host into a case-insensitive regex, we apply it to that Ingress's paths only
  and match case-sensitively, so one Ingress cannot change how another's paths match.
- Per host: all Exact routes first (an Exact route can only match a path of its own length, so this is
  "longest match, Exact beats Prefix of equal length"), then Prefix and Regex routes by descending path
  length (Prefix before Regex at equal length), ties by path text.

Hosts compare lower-cased; ``*.foo.com`` is a wildcard matching exactly one label; rules without a host
go to the virtual host ``""``. Several Ingresses on one host merge; the same host+match+path from two of
them goes to the oldest (creationTimestamp, then namespace/name; objects from files have no timestamp
and so compare by namespace/name) and the other gets a warning naming the winner.

Backends: a Service or port that does not exist is an error on the Ingress, but the route is kept and
points at a cluster with no endpoints, so requests get 503 (ingress-nginx answers 503 too) rather than
falling through to another route. Resource backends are not supported (warning, route skipped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from kubegate.ir.model import Backend, Balance, Cluster, MatchKind, Route, RouteOptions, cluster_name
from kubegate.objects.kinds import Ingress, IngressBackend, IngressTLS, Service
from kubegate.objects.meta import ObjectKey
from kubegate.translate.annotations import IngressAnnotations, parse_annotations
from kubegate.translate.context import Diagnostic
from kubegate.translate.services import find_port, port_cluster

NamespacedName = tuple[str, str]
# (no creationTimestamp, creationTimestamp, namespace, name): smaller is older and wins conflicts.
# Objects without a timestamp (from files) count as newest, as in the allocator.
Age = tuple[bool, str, str, str]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


# the very default object of Route.options: msgspec's omit_defaults compares by identity, so using it
# keeps "options: {}" out of the canonical dump for routes without options
DEFAULT_ROUTE_OPTIONS: RouteOptions = next(
    field.default for field in msgspec.structs.fields(Route) if field.name == "options"
)


def shared_options(options: RouteOptions) -> RouteOptions:
    return DEFAULT_ROUTE_OPTIONS if options == DEFAULT_ROUTE_OPTIONS else options


def ingress_key(ingress: Ingress) -> ObjectKey:
    return ObjectKey("Ingress", ingress.metadata.namespace, ingress.metadata.name)


def ingress_age(ingress: Ingress) -> Age:
    meta = ingress.metadata
    return (not meta.creation_timestamp, meta.creation_timestamp, meta.namespace, meta.name)


@dataclass(frozen=True, slots=True)
class HostRoute:
    host: str
    route: Route
    # where the path is in the Ingress, for conflict messages
    field: str


@dataclass(frozen=True, slots=True)
class BalanceChoice:
    cluster: str
    balance: Balance
    hash_by: str | None
    field: str


@dataclass(frozen=True, slots=True)
class IngressFragment:
    """Everything one Ingress contributes, before merging with the others."""

    key: ObjectKey
    age: Age
    routes: tuple[HostRoute, ...]
    # lower-cased hosts of its rules ("" for rules without host), in rule order, unique
    hosts: tuple[str, ...]
    default_backend: Backend | None
    has_rules: bool
    # clusters for backends whose Service or port is missing (no endpoints) or ExternalName ports
    # outside the Service's port list
    extra_clusters: tuple[Cluster, ...]
    balances: tuple[BalanceChoice, ...]
    tls: tuple[IngressTLS, ...]
    diagnostics: tuple[Diagnostic, ...]
    # the Services this result was computed from (None: was missing); the memo is valid while the
    # snapshot holds exactly these objects
    dependencies: tuple[tuple[NamespacedName, Service | None], ...]


class _Builder:
    def __init__(self, ingress: Ingress, services: Mapping[NamespacedName, Service]) -> None:
        self.ingress = ingress
        self.key = ingress_key(ingress)
        self.namespace = ingress.metadata.namespace
        self.services = services
        self.diagnostics: list[Diagnostic] = []
        self.dependencies: dict[NamespacedName, Service | None] = {}
        self.extra_clusters: dict[str, Cluster] = {}
        self.balances: list[BalanceChoice] = []

    def error(self, field: str, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.key, field, "error", message))

    def warn(self, field: str, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.key, field, "warning", message))

    def backend(self, backend: IngressBackend, field: str, annotations: IngressAnnotations) -> Backend | None:
        if backend.service is None:
            if backend.resource is not None:
                self.warn(f"{field}.resource", "resource backends are not supported; skipped")
            else:
                self.error(field, "a backend needs service (or resource)")
            return None
        ref = backend.service
        if not ref.name:
            self.error(f"{field}.service.name", "required")
            return None
        if not ref.port.name and not ref.port.number:
            self.error(f"{field}.service.port", "one of port.name or port.number is required")
            return None
        key = (self.namespace, ref.name)
        service = self.services.get(key)
        self.dependencies[key] = service
        holder = f"{self.namespace}/{ref.name}"
        wanted = f"port {ref.port.name!r}" if ref.port.name else f"port {ref.port.number}"
        port_field = f"{field}.service.port.{'name' if ref.port.name else 'number'}"
        placeholder = (
            cluster_name(self.namespace, ref.name, ref.port.number)
            if not ref.port.name
            else f"{holder}:{ref.port.name}"
        )
        if service is None:
            self.error(
                f"{field}.service.name",
                f"Service {holder} not found; requests get 503 until it exists",
            )
            name = placeholder
            self.extra_clusters[name] = Cluster(
                name=name, service=holder, port=ref.port.number, port_name=ref.port.name
            )
        else:
            port = find_port(service, ref.port)
            if port is not None:
                name = port_cluster(self.namespace, ref.name, port)
            elif service.spec.type == "ExternalName" and not ref.port.name:
                # ingress-nginx proxies to any port of an ExternalName Service
                name = placeholder
                self.extra_clusters[name] = Cluster(
                    name=name,
                    service=holder,
                    port=ref.port.number,
                    external_name=service.spec.external_name or None,
                )
            else:
                self.error(port_field, f"Service {holder} has no {wanted}; requests get 503 until it does")
                name = placeholder
                self.extra_clusters[name] = Cluster(
                    name=name, service=holder, port=ref.port.number, port_name=ref.port.name
                )
        if annotations.balance is not None:
            self.balances.append(BalanceChoice(name, annotations.balance, annotations.hash_by, field))
        return Backend(cluster=name)


def _path_match(path: str, path_type: str, regex: bool) -> tuple[MatchKind, str] | str:
    """The IR match for one Ingress path, or an error message."""
    if path_type == "Exact":
        if not path.startswith("/"):
            return "an Exact path must start with '/'"
        return "Exact", path
    if path_type == "ImplementationSpecific" and not path:
        path = "/"
    if regex:
        try:
            re.compile(path)
        except re.error as error:
            return f"invalid regular expression: {error}"
        return "Regex", path
    if not path.startswith("/"):
        return "a Prefix path must start with '/'"
    return "Prefix", path.rstrip("/") or "/"


def build_fragment(ingress: Ingress, services: Mapping[NamespacedName, Service]) -> IngressFragment:
    """Translate one Ingress on its own (class already decided: it is ours)."""
    builder = _Builder(ingress, services)
    annotations = parse_annotations(builder.key, ingress.metadata.annotations)
    builder.diagnostics.extend(annotations.diagnostics)
    options = RouteOptions(
        rewrite_target=annotations.rewrite_target,
        # the TLS pass clears this on hosts without a certificate
        ssl_redirect=annotations.ssl_redirect,
        force_ssl_redirect=annotations.force_ssl_redirect,
        app_root=annotations.app_root,
        max_body_size=annotations.max_body_size,
        upstream_vhost=annotations.upstream_vhost,
        backend_protocol="HTTPS" if annotations.backend_protocol == "HTTPS" else "HTTP",
    )
    options = shared_options(options)
    source = f"Ingress {ingress.metadata.namespace}/{ingress.metadata.name}"
    spec = ingress.spec
    routes: list[HostRoute] = []
    hosts: list[str] = []
    for rule_index, rule in enumerate(spec.rules):
        rule_field = f"spec.rules[{rule_index}]"
        host = rule.host.lower()
        if host and not _HOST.match(host):
            builder.error(
                f"{rule_field}.host",
                f"invalid host {rule.host!r}: a DNS name, optionally with a leading '*.' label; rule skipped",
            )
            continue
        if host not in hosts:
            hosts.append(host)
        if rule.http is None:
            continue
        for path_index, http_path in enumerate(rule.http.paths):
            field = f"{rule_field}.http.paths[{path_index}]"
            path_type = http_path.path_type
            if path_type is None:
                builder.warn(f"{field}.pathType", "required; treated as ImplementationSpecific")
                path_type = "ImplementationSpecific"
            elif path_type not in ("Exact", "Prefix", "ImplementationSpecific"):
                builder.error(f"{field}.pathType", f"unknown pathType {path_type!r}; path skipped")
                continue
            match = _path_match(http_path.path, path_type, annotations.regex)
            if isinstance(match, str):
                builder.error(f"{field}.path", f"{match}; path skipped")
                continue
            backend = builder.backend(http_path.backend, f"{field}.backend", annotations)
            if backend is None:
                continue
            kind, path = match
            route = Route(match=kind, path=path, backends=(backend,), options=options, source=source)
            routes.append(HostRoute(host=host, route=route, field=field))

    default_backend: Backend | None = None
    if spec.default_backend is not None:
        default_backend = builder.backend(spec.default_backend, "spec.defaultBackend", annotations)

    return IngressFragment(
        key=builder.key,
        age=ingress_age(ingress),
        routes=tuple(routes),
        hosts=tuple(hosts),
        default_backend=default_backend,
        has_rules=bool(spec.rules),
        extra_clusters=tuple(builder.extra_clusters[name] for name in sorted(builder.extra_clusters)),
        balances=tuple(builder.balances),
        tls=spec.tls,
        diagnostics=tuple(builder.diagnostics),
        dependencies=tuple(sorted(builder.dependencies.items(), key=lambda item: item[0])),
    )


def route_order(route: Route) -> tuple[int, int, int, str]:
    """Sort key giving match order within one virtual host."""
    if route.match == "Exact":
        return (0, -len(route.path), 0, route.path)
    return (1, -len(route.path), 0 if route.match == "Prefix" else 1, route.path)


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One Ingress's routes on one host, kept with its age for merging."""

    age: Age
    key: ObjectKey
    routes: tuple[HostRoute, ...]


def merge_host_routes(entries: list[HostEntry]) -> tuple[tuple[Route, ...], list[Diagnostic]]:
    """The routes of one host, oldest Ingress first on conflicts, in match order."""
    diagnostics: list[Diagnostic] = []
    winners: dict[tuple[MatchKind, str], tuple[Route, ObjectKey]] = {}
    for entry in sorted(entries, key=lambda e: e.age):
        for host_route in entry.routes:
            route = host_route.route
            slot = (route.match, route.path)
            won = winners.get(slot)
            if won is None:
                winners[slot] = (route, entry.key)
                continue
            winner = won[1]
            by = "an earlier path of this Ingress" if winner == entry.key else f"{winner}, which is older"
            host = host_route.host or '"" (any host)'
            diagnostics.append(
                Diagnostic(
                    entry.key,
                    f"{host_route.field}.path",
                    "warning",
                    f"host {host} {route.match} {route.path} is already served by {by}; this path is ignored",
                )
            )
    ordered = sorted((route for route, _ in winners.values()), key=route_order)
    return tuple(ordered), diagnostics
