"""translate: a pure function from an object snapshot to the IR, statuses and diagnostics.

``translate(snapshot, options, allocations)`` runs the passes in order: classes -> services and
allocation -> endpoints -> ingresses -> TLS. ``Translator`` does the same but remembers per-object work
between calls (objects are immutable, and an unchanged object is the very same Python object in the next
snapshot), so re-translating after one Ingress changes redoes that Ingress and its hosts only.

Nothing here does I/O or mutates its input, and bad user input never raises: it becomes a Diagnostic on
the object and translation goes on. The output is sorted throughout, so the same objects in any order
give an equal Translation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from kubegate.ir.model import (
    Backend,
    Cluster,
    Endpoint,
    EndpointTable,
    RoutingTable,
    VirtualHost,
)
from kubegate.objects.kinds import Ingress, Service, ServiceBackendPort
from kubegate.objects.meta import ObjectKey
from kubegate.objects.snapshot import Snapshot
from kubegate.translate.classes import ClassSelector
from kubegate.translate.context import Allocations, Diagnostic, Options, Translation
from kubegate.translate.endpoints import EndpointSources, service_endpoints
from kubegate.translate.ingress import (
    HostEntry,
    IngressFragment,
    build_fragment,
    merge_host_routes,
)
from kubegate.translate.services import ServicesResult, find_port, port_cluster, translate_services
from kubegate.translate.tls import CertificateCache, translate_tls

__all__ = ["Translator", "translate"]

_DEFAULT_OPTIONS = Options()
_NO_ALLOCATIONS = Allocations()

K = TypeVar("K")
V = TypeVar("V")


def _same_mapping(old: Mapping[K, V] | None, new: Mapping[K, V]) -> bool:
    """The same objects under the same keys (identity), whether or not it is the same dict."""
    if old is new:
        return True
    if old is None or len(old) != len(new):
        return False
    return all(new.get(key) is value for key, value in old.items())


def _still_valid(fragment: IngressFragment, services: Mapping[tuple[str, str], Service]) -> bool:
    return all(services.get(key) is service for key, service in fragment.dependencies)


@dataclass(frozen=True, slots=True)
class _HostResult:
    fragments: tuple[IngressFragment, ...]
    certificate: str | None
    virtual_host: VirtualHost
    diagnostics: tuple[Diagnostic, ...]


def _build_host(host: str, fragments: tuple[IngressFragment, ...], certificate: str | None) -> _HostResult:
    entries = [
        HostEntry(age=f.age, key=f.key, routes=tuple(r for r in f.routes if r.host == host))
        for f in fragments
    ]
    routes, diagnostics = merge_host_routes(entries)
    if certificate is None:
        # nothing to redirect to: plain HTTP keeps working on hosts without a certificate
        routes = tuple(
            msgspec.structs.replace(r, options=msgspec.structs.replace(r.options, ssl_redirect=False))
            if r.options.ssl_redirect
            else r
            for r in routes
        )
    default: Backend | None = None
    default_from: ObjectKey | None = None
    for fragment in fragments:  # oldest first
        if fragment.default_backend is None:
            continue
        if default is None:
            default, default_from = fragment.default_backend, fragment.key
        elif fragment.default_backend != default:
            diagnostics.append(
                Diagnostic(
                    fragment.key,
                    "spec.defaultBackend",
                    "warning",
                    f"host {host or '(any)'} already has a default backend from {default_from}, "
                    "which is older; this one is not used there",
                )
            )
    vhost = VirtualHost(host=host, routes=routes, tls_certificate=certificate, default_backend=default)
    return _HostResult(fragments, certificate, vhost, tuple(diagnostics))


def _parse_controller_default(
    text: str,
    services: Mapping[tuple[str, str], Service],
    extra: dict[str, Cluster],
    diagnostics: list[Diagnostic],
) -> Backend | None:
    where = ObjectKey("Options", "", "default-backend")
    namespaced, _, port_text = text.rpartition(":")
    namespace, _, name = namespaced.partition("/")
    if not namespace or not name or not port_text:
        diagnostics.append(
            Diagnostic(where, "", "error", f"default backend {text!r} is not of the form namespace/name:port")
        )
        return None
    backend_port = (
        ServiceBackendPort(number=int(port_text))
        if port_text.isdigit()
        else ServiceBackendPort(name=port_text)
    )
    service = services.get((namespace, name))
    port = None if service is None else find_port(service, backend_port)
    if port is not None:
        return Backend(cluster=port_cluster(namespace, name, port))
    placeholder = f"{namespace}/{name}:{port_text}"
    extra[placeholder] = Cluster(
        name=placeholder, service=f"{namespace}/{name}", port=backend_port.number, port_name=backend_port.name
    )
    problem = "not found" if service is None else f"has no port {port_text}"
    diagnostics.append(
        Diagnostic(
            ObjectKey("Service", namespace, name),
            "",
            "error",
            f"controller default backend: Service {namespace}/{name} {problem}; unmatched requests get 503",
        )
    )
    return Backend(cluster=placeholder)


class Translator:
    """``translate`` with memory: reuses the work for objects that did not change since the last call."""

    def __init__(self) -> None:
        self._clear(None)

    def _clear(self, options: Options | None) -> None:
        """Forget everything: options change how every object translates."""
        self._options = options
        self._services_input: Mapping[tuple[str, str], Service] | None = None
        self._services_allocations: Allocations | None = None
        self._services: ServicesResult | None = None
        self._sources_input: tuple[Mapping[Any, Any], ...] | None = None
        self._sources: EndpointSources | None = None
        self._service_endpoints: dict[
            tuple[str, str], tuple[Service, EndpointSources, dict[str, tuple[Endpoint, ...]]]
        ] = {}
        self._fragments: dict[tuple[str, str], tuple[Ingress, IngressFragment]] = {}
        self._hosts: dict[str, _HostResult] = {}
        self._certificates = CertificateCache()

    # -- passes ------------------------------------------------------------------------------------

    def _services_pass(self, snapshot: Snapshot, options: Options, previous: Allocations) -> ServicesResult:
        if (
            self._services is not None
            and _same_mapping(self._services_input, snapshot.services)
            and self._services_allocations == previous
        ):
            return self._services
        self._services = translate_services(snapshot.services, previous, options)
        self._services_input = snapshot.services
        self._services_allocations = previous
        return self._services

    def _endpoint_sources(self, snapshot: Snapshot) -> EndpointSources:
        inputs: tuple[Mapping[Any, Any], ...] = (
            snapshot.pods,
            snapshot.endpoints,
            snapshot.endpoint_slices,
        )
        old = self._sources_input
        if (
            self._sources is not None
            and old is not None
            and all(_same_mapping(a, b) for a, b in zip(old, inputs, strict=True))
        ):
            return self._sources
        self._sources = EndpointSources.index(snapshot.pods, snapshot.endpoints, snapshot.endpoint_slices)
        self._sources_input = inputs
        return self._sources

    def _endpoints_pass(self, snapshot: Snapshot) -> dict[str, tuple[Endpoint, ...]]:
        sources = self._endpoint_sources(snapshot)
        table: dict[str, tuple[Endpoint, ...]] = {}
        memo: dict[tuple[str, str], tuple[Service, EndpointSources, dict[str, tuple[Endpoint, ...]]]] = {}
        for key, service in snapshot.services.items():
            cached = self._service_endpoints.get(key)
            if cached is not None and cached[0] is service and cached[1] is sources:
                found = cached[2]
            else:
                found = service_endpoints(service, sources)
            memo[key] = (service, sources, found)
            table.update(found)
        self._service_endpoints = memo
        return table

    def _fragment(self, key: tuple[str, str], ingress: Ingress, snapshot: Snapshot) -> IngressFragment:
        cached = self._fragments.get(key)
        if cached is not None and cached[0] is ingress and _still_valid(cached[1], snapshot.services):
            return cached[1]
        fragment = build_fragment(ingress, snapshot.services)
        self._fragments[key] = (ingress, fragment)
        return fragment

    # -- the whole -------------------------------------------------------------------------------------

    def translate(
        self,
        snapshot: Snapshot,
        options: Options = _DEFAULT_OPTIONS,
        allocations: Allocations = _NO_ALLOCATIONS,
    ) -> Translation:
        if options != self._options:
            self._clear(options)
        diagnostics: list[Diagnostic] = []

        # classes
        selector = ClassSelector(snapshot.ingress_classes, options)
        ours = {key: ingress for key, ingress in snapshot.ingresses.items() if selector.is_ours(ingress)}

        # services and allocation, then endpoints
        services = self._services_pass(snapshot, options, allocations)
        diagnostics.extend(services.diagnostics)
        endpoint_lists = self._endpoints_pass(snapshot)

        # ingresses
        fragments = [self._fragment(key, ingress, snapshot) for key, ingress in ours.items()]
        for stale in self._fragments.keys() - ours.keys():
            del self._fragments[stale]
        extra_clusters: dict[str, Cluster] = {}
        for fragment in fragments:
            diagnostics.extend(fragment.diagnostics)
            for cluster in fragment.extra_clusters:
                extra_clusters.setdefault(cluster.name, cluster)

        # TLS (before hosts: a host's routes redirect to HTTPS only when it has a certificate)
        tls = translate_tls(fragments, snapshot.secrets, self._certificates)
        diagnostics.extend(tls.diagnostics)

        by_host: dict[str, list[IngressFragment]] = {}
        for fragment in fragments:
            for host in fragment.hosts:
                by_host.setdefault(host, []).append(fragment)
        hosts: dict[str, _HostResult] = {}
        for host, contributors in by_host.items():
            ordered = tuple(sorted(contributors, key=lambda f: f.age))
            certificate = tls.host_certificates.get(host)
            cached = self._hosts.get(host)
            if (
                cached is None
                or cached.certificate != certificate
                or len(cached.fragments) != len(ordered)
                or any(a is not b for a, b in zip(cached.fragments, ordered, strict=True))
            ):
                cached = _build_host(host, ordered, certificate)
            hosts[host] = cached
            diagnostics.extend(cached.diagnostics)
        self._hosts = hosts

        # the table-wide default: the oldest rule-less Ingress's defaultBackend, else the controller's
        default_backend: Backend | None = None
        rule_less = sorted(
            (f for f in fragments if not f.has_rules and f.default_backend is not None), key=lambda f: f.age
        )
        if rule_less:
            default_backend = rule_less[0].default_backend
            for loser in rule_less[1:]:
                diagnostics.append(
                    Diagnostic(
                        loser.key,
                        "spec.defaultBackend",
                        "warning",
                        f"the default backend for unmatched requests comes from {rule_less[0].key}, which is "
                        "older; this one is not used",
                    )
                )
        elif options.default_backend:
            default_backend = _parse_controller_default(
                options.default_backend, snapshot.services, extra_clusters, diagnostics
            )

        # clusters: every Service port, the placeholders, and the balancing the Ingresses ask for
        clusters = dict(services.clusters)
        for name, cluster in extra_clusters.items():
            clusters.setdefault(name, cluster)
        chosen: dict[str, tuple[str, str | None, ObjectKey]] = {}
        for fragment in sorted((f for f in fragments if f.balances), key=lambda f: f.age):
            for choice in fragment.balances:
                previous = chosen.get(choice.cluster)
                if previous is None:
                    chosen[choice.cluster] = (choice.balance, choice.hash_by, fragment.key)
                    cluster = clusters[choice.cluster]
                    clusters[choice.cluster] = msgspec.structs.replace(
                        cluster, balance=choice.balance, hash_by=choice.hash_by
                    )
                elif previous[:2] != (choice.balance, choice.hash_by):
                    diagnostics.append(
                        Diagnostic(
                            fragment.key,
                            choice.field,
                            "warning",
                            f"cluster {choice.cluster} already balances {previous[0]} as {previous[2]} asks, "
                            "which is older; this load-balance/upstream-hash-by is not used for it",
                        )
                    )

        routing = RoutingTable(
            virtual_hosts=tuple(hosts[host].virtual_host for host in sorted(hosts)),
            default_backend=default_backend,
            clusters=tuple(clusters[name] for name in sorted(clusters)),
            certificates=tls.certificates,
            services=services.services,
        )
        endpoint_table = EndpointTable(
            clusters={name: endpoint_lists.get(name, ()) for name in sorted(clusters)}
        )
        return Translation(
            routing=routing,
            endpoints=endpoint_table,
            allocations=services.allocations,
            service_status=dict(sorted(services.service_status.items())),
            ingress_status=dict.fromkeys(sorted(ours), options.publish_addresses),
            diagnostics=tuple(sorted(set(diagnostics))),
        )


def translate(
    snapshot: Snapshot, options: Options = _DEFAULT_OPTIONS, allocations: Allocations = _NO_ALLOCATIONS
) -> Translation:
    """Translate a snapshot from scratch (see ``Translator`` for the memoising form)."""
    return Translator().translate(snapshot, options, allocations)
