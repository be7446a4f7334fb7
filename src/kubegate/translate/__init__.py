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
from kubegate.objects.kinds import Ingress, Pod, Service, ServiceBackendPort
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
    shared_options,
)
from kubegate.translate.services import ServicesResult, find_port, port_cluster, translate_services
from kubegate.translate.tls import CertificateCache, translate_tls

__all__ = ["Translator", "translate"]

_DEFAULT_OPTIONS = Options()
# more changed Pods than this and rebuilding the index from scratch is as cheap as patching it
_MAX_POD_DELTA = 500
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
            msgspec.structs.replace(
                r, options=shared_options(msgspec.structs.replace(r.options, ssl_redirect=False))
            )
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
        # per Service: its endpoints, valid while the Service is the same object and the sources are
        # _memo_sources
        self._service_endpoints: dict[tuple[str, str], tuple[Service, dict[str, tuple[Endpoint, ...]]]] = {}
        self._memo_sources: EndpointSources | None = None
        self._selectors: (
            tuple[Mapping[tuple[str, str], Service], dict[str, list[tuple[tuple[str, str], dict[str, str]]]]]
            | None
        ) = None
        self._endpoint_lists: (
            tuple[EndpointSources, Mapping[tuple[str, str], Service], dict[str, tuple[Endpoint, ...]]] | None
        ) = None
        self._assembled: tuple[object, ...] | None = None
        self._assembled_result: tuple[tuple[Cluster, ...], EndpointTable] | None = None
        self._fragments: dict[tuple[str, str], tuple[Ingress, IngressFragment]] = {}
        # the fragments in use, and by host, maintained incrementally
        self._services_seen: Mapping[tuple[str, str], Service] | None = None
        self._current: dict[tuple[str, str], IngressFragment] = {}
        self._by_host: dict[str, dict[tuple[str, str], IngressFragment]] = {}
        self._hosts: dict[str, _HostResult] = {}
        self._host_certificates: dict[str, str] = {}
        self._virtual_hosts: tuple[VirtualHost, ...] | None = None
        self._host_diagnostics: tuple[Diagnostic, ...] = ()
        self._status: dict[tuple[str, str], tuple[str, ...]] | None = None
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
        delta = self._pod_delta(snapshot)
        if delta is not None:
            return self._apply_pod_delta(snapshot, delta)
        sources = self._endpoint_sources(snapshot)
        if (
            self._endpoint_lists is not None
            and self._endpoint_lists[0] is sources
            and _same_mapping(self._endpoint_lists[1], snapshot.services)
        ):
            # nothing an endpoint depends on changed (the common case: an Ingress or Secret changed)
            return self._endpoint_lists[2]
        if self._memo_sources is not sources:
            self._service_endpoints = {}
            self._memo_sources = sources
        table: dict[str, tuple[Endpoint, ...]] = {}
        memo: dict[tuple[str, str], tuple[Service, dict[str, tuple[Endpoint, ...]]]] = {}
        for key, service in snapshot.services.items():
            cached = self._service_endpoints.get(key)
            found = (
                cached[1]
                if cached is not None and cached[0] is service
                else service_endpoints(service, sources)
            )
            memo[key] = (service, found)
            table.update(found)
        self._service_endpoints = memo
        self._endpoint_lists = (sources, snapshot.services, table)
        return table

    def _pod_delta(self, snapshot: Snapshot) -> list[tuple[Pod | None, Pod | None]] | None:
        """The Pods that changed, as (before, after), when nothing else endpoints depend on did and
        there are few of them; None means "take the general path"."""
        inputs, lists = self._sources_input, self._endpoint_lists
        if inputs is None or lists is None or self._memo_sources is not lists[0]:
            return None
        old_pods: Mapping[tuple[str, str], Pod] = inputs[0]
        new_pods = snapshot.pods
        if (
            old_pods is new_pods
            or not _same_mapping(lists[1], snapshot.services)
            or not _same_mapping(inputs[1], snapshot.endpoints)
            or not _same_mapping(inputs[2], snapshot.endpoint_slices)
        ):
            return None
        delta: list[tuple[Pod | None, Pod | None]] = []
        for key, pod in new_pods.items():
            before = old_pods.get(key)
            if before is not pod:
                delta.append((before, pod))
                if len(delta) > _MAX_POD_DELTA:
                    return None
        if len(old_pods) + sum(1 for before, _ in delta if before is None) != len(new_pods):
            delta.extend((pod, None) for key, pod in old_pods.items() if key not in new_pods)
        return delta if len(delta) <= _MAX_POD_DELTA else None

    def _apply_pod_delta(
        self, snapshot: Snapshot, delta: list[tuple[Pod | None, Pod | None]]
    ) -> dict[str, tuple[Endpoint, ...]]:
        """Patch the label index and recompute only the Services selecting a changed Pod."""
        assert self._endpoint_lists is not None
        old_sources, services, old_table = self._endpoint_lists
        by_label = dict(old_sources.pods_by_label)
        for before, after in delta:
            for pod, add in ((before, False), (after, True)):
                if pod is None:
                    continue
                namespace = pod.metadata.namespace
                for label, value in pod.metadata.labels.items():
                    slot = (namespace, label, value)
                    if add:
                        by_label[slot] = (*by_label.get(slot, ()), pod)
                    else:
                        kept = tuple(p for p in by_label.get(slot, ()) if p is not pod)
                        if kept:
                            by_label[slot] = kept
                        else:
                            by_label.pop(slot, None)
        sources = EndpointSources(
            pods_by_label=by_label,
            endpoints=old_sources.endpoints,
            slices_by_service=old_sources.slices_by_service,
        )
        by_namespace = self._selectors_by_namespace(services)
        affected: set[tuple[str, str]] = set()
        for before, after in delta:
            for pod in (before, after):
                if pod is None:
                    continue
                labels = pod.metadata.labels
                for key, selector in by_namespace.get(pod.metadata.namespace, ()):
                    if all(labels.get(k) == v for k, v in selector.items()):
                        affected.add(key)
        table = dict(old_table)
        for key in affected:
            service = services[key]
            found = service_endpoints(service, sources)
            self._service_endpoints[key] = (service, found)
            table.update(found)
        self._sources = self._memo_sources = sources
        self._sources_input = (snapshot.pods, snapshot.endpoints, snapshot.endpoint_slices)
        self._endpoint_lists = (sources, services, table)
        return table

    def _selectors_by_namespace(
        self, services: Mapping[tuple[str, str], Service]
    ) -> dict[str, list[tuple[tuple[str, str], dict[str, str]]]]:
        if self._selectors is None or self._selectors[0] is not services:
            index: dict[str, list[tuple[tuple[str, str], dict[str, str]]]] = {}
            for key, service in services.items():
                if service.spec.selector and service.spec.type != "ExternalName":
                    index.setdefault(key[0], []).append((key, service.spec.selector))
            self._selectors = (services, index)
        return self._selectors[1]

    def _ingress_status(
        self, ours: dict[tuple[str, str], Ingress], options: Options
    ) -> dict[tuple[str, str], tuple[str, ...]]:
        if self._status is None or self._status.keys() != ours.keys():
            self._status = dict.fromkeys(sorted(ours), options.publish_addresses)
        return self._status

    def _fragment(
        self, key: tuple[str, str], ingress: Ingress, snapshot: Snapshot, services_unchanged: bool
    ) -> IngressFragment:
        cached = self._fragments.get(key)
        if (
            cached is not None
            and cached[0] is ingress
            and (services_unchanged or _still_valid(cached[1], snapshot.services))
        ):
            return cached[1]
        fragment = build_fragment(ingress, snapshot.services)
        self._fragments[key] = (ingress, fragment)
        return fragment

    def _clusters(
        self,
        services: ServicesResult,
        endpoint_lists: dict[str, tuple[Endpoint, ...]],
        extra: dict[str, Cluster],
        balances: dict[str, tuple[str, str | None, ObjectKey]],
    ) -> tuple[tuple[Cluster, ...], EndpointTable]:
        """The sorted clusters and their endpoints; reused while none of their inputs changed, since
        sorting 10,000 clusters on every Ingress edit would be most of the work."""
        old = self._assembled
        if (
            old is not None
            and self._assembled_result is not None
            and old[0] is services
            and old[1] is endpoint_lists
            and old[2] == extra
            and old[3] == balances
        ):
            return self._assembled_result
        clusters = dict(services.clusters)
        for name, cluster in extra.items():
            clusters.setdefault(name, cluster)
        for name, (balance, hash_by, _) in balances.items():
            clusters[name] = msgspec.structs.replace(clusters[name], balance=balance, hash_by=hash_by)
        names = sorted(clusters)
        result = (
            tuple(clusters[name] for name in names),
            EndpointTable(clusters={name: endpoint_lists.get(name, ()) for name in names}),
        )
        self._assembled = (services, endpoint_lists, extra, balances)
        self._assembled_result = result
        return result

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

        # ingresses: refresh the fragments that changed and note the hosts they touch
        services_unchanged = self._services_seen is snapshot.services
        self._services_seen = snapshot.services
        current, by_host = self._current, self._by_host
        dirty: set[str] = set()
        for key, ingress in ours.items():
            fragment = self._fragment(key, ingress, snapshot, services_unchanged)
            previous = current.get(key)
            if previous is fragment:
                continue
            if previous is not None:
                for host in previous.hosts:
                    by_host[host].pop(key, None)
                dirty.update(previous.hosts)
            for host in fragment.hosts:
                by_host.setdefault(host, {})[key] = fragment
            dirty.update(fragment.hosts)
            current[key] = fragment
        for stale in current.keys() - ours.keys():
            gone = current.pop(stale)
            for host in gone.hosts:
                by_host[host].pop(stale, None)
            dirty.update(gone.hosts)
            self._fragments.pop(stale, None)

        extra_clusters: dict[str, Cluster] = {}
        with_tls: list[IngressFragment] = []
        rule_less: list[IngressFragment] = []
        balancing: list[IngressFragment] = []
        for fragment in current.values():
            diagnostics.extend(fragment.diagnostics)
            for cluster in fragment.extra_clusters:
                extra_clusters.setdefault(cluster.name, cluster)
            if fragment.tls:
                with_tls.append(fragment)
            if not fragment.has_rules and fragment.default_backend is not None:
                rule_less.append(fragment)
            if fragment.balances:
                balancing.append(fragment)

        # TLS (before hosts: a host's routes redirect to HTTPS only when it has a certificate)
        tls = translate_tls(with_tls, snapshot.secrets, self._certificates)
        diagnostics.extend(tls.diagnostics)
        certificates, old_certificates = tls.host_certificates, self._host_certificates
        if certificates != old_certificates:
            dirty.update(
                h
                for h in certificates.keys() | old_certificates.keys()
                if certificates.get(h) != old_certificates.get(h)
            )
        self._host_certificates = certificates

        # hosts: rebuild only the dirty ones
        hosts = self._hosts
        for host in dirty:
            contributors = by_host.get(host)
            if not contributors:
                by_host.pop(host, None)
                hosts.pop(host, None)
                continue
            ordered = tuple(sorted(contributors.values(), key=lambda f: f.age))
            hosts[host] = _build_host(host, ordered, certificates.get(host))
        if dirty or self._virtual_hosts is None:
            ordered_hosts = [hosts[host] for host in sorted(hosts)]
            self._virtual_hosts = tuple(h.virtual_host for h in ordered_hosts)
            self._host_diagnostics = tuple(d for h in ordered_hosts for d in h.diagnostics)
        diagnostics.extend(self._host_diagnostics)

        # the table-wide default: the oldest rule-less Ingress's defaultBackend, else the controller's
        default_backend: Backend | None = None
        rule_less.sort(key=lambda f: f.age)
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
        chosen: dict[str, tuple[str, str | None, ObjectKey]] = {}
        for fragment in sorted(balancing, key=lambda f: f.age):
            for choice in fragment.balances:
                earlier = chosen.get(choice.cluster)
                if earlier is None:
                    chosen[choice.cluster] = (choice.balance, choice.hash_by, fragment.key)
                elif earlier[:2] != (choice.balance, choice.hash_by):
                    diagnostics.append(
                        Diagnostic(
                            fragment.key,
                            choice.field,
                            "warning",
                            f"cluster {choice.cluster} already balances {earlier[0]} as {earlier[2]} asks, "
                            "which is older; this load-balance/upstream-hash-by is not used for it",
                        )
                    )
        cluster_tuple, endpoint_table = self._clusters(services, endpoint_lists, extra_clusters, chosen)

        routing = RoutingTable(
            virtual_hosts=self._virtual_hosts,
            default_backend=default_backend,
            clusters=cluster_tuple,
            certificates=tls.certificates,
            services=services.services,
        )
        return Translation(
            routing=routing,
            endpoints=endpoint_table,
            allocations=services.allocations,
            service_status=dict(sorted(services.service_status.items())),
            ingress_status=self._ingress_status(ours, options),
            diagnostics=tuple(sorted(set(diagnostics))),
        )


def translate(
    snapshot: Snapshot, options: Options = _DEFAULT_OPTIONS, allocations: Allocations = _NO_ALLOCATIONS
) -> Translation:
    """Translate a snapshot from scratch (see ``Translator`` for the memoising form)."""
    return Translator().translate(snapshot, options, allocations)
