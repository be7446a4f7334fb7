"""Prometheus metrics for the admin listener, read from live counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kubegate.planes.proxy.server import ProxyServer
from kubegate.reconcile import Reconciler


class _KubegateCollector(Collector):
    def __init__(self, reconciler: Reconciler, proxy: Callable[[], ProxyServer | None]) -> None:
        self._reconciler = reconciler
        self._proxy = proxy

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rec = self._reconciler
        yield CounterMetricFamily("kubegate_reloads", "Manifest reloads", value=rec.reloads)
        yield CounterMetricFamily("kubegate_reload_failures", "Reloads that failed", value=rec.failed_reloads)
        yield GaugeMetricFamily(
            "kubegate_config_version", "Published configuration version", rec.store.version
        )
        yield CounterMetricFamily(
            "kubegate_object_changes", "Object changes seen", value=rec.store.changes_seen
        )
        errors = sum(1 for problem in rec.last_problems if problem.severity == "error")
        yield GaugeMetricFamily("kubegate_config_errors", "Objects with errors in the last reload", errors)
        proxy = self._proxy()
        if proxy is None:
            return
        stats = proxy.stats
        requests = CounterMetricFamily("kubegate_http_requests", "Proxied HTTP requests", labels=["code"])
        for status, count in sorted(stats.status_counts.items()):
            requests.add_metric([str(status)], count)
        yield requests
        yield GaugeMetricFamily(
            "kubegate_http_connections", "Open client connections", len(proxy.connections)
        )
        yield CounterMetricFamily(
            "kubegate_tls_handshake_failures",
            "TLS connections whose handshake failed or was abandoned",
            value=stats.tls_handshake_failures,
        )


def metrics_handler(reconciler: Reconciler, proxy: Callable[[], ProxyServer | None]) -> Callable[[], bytes]:
    registry = CollectorRegistry()
    registry.register(_KubegateCollector(reconciler, proxy))
    return lambda: generate_latest(registry)
