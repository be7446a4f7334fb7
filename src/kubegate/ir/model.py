"""The routing model: what the planes consume. Free of Kubernetes types.

Everything is frozen and deterministic: the translator emits tuples in a defined order, so two
translations of the same objects compare equal and dump to the same text. ``omit_defaults`` keeps the
canonical dump (golden files, ``/debug/ir``) short.

Naming:
- a *cluster* is one Service port: ``namespace/service:port`` (``/UDP`` or ``/SCTP`` appended when not
  TCP). Routes point at clusters; endpoints are looked up by cluster name in the separately versioned
  ``EndpointTable``, so pod churn never rebuilds routes.
- a *virtual host* is one hostname (``foo.bar.com``, ``*.bar.com``) or ``""`` for rules without a host,
  which match any Host header.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MatchKind = Literal["Exact", "Prefix", "Regex"]
Balance = Literal["round_robin", "least_request", "hash"]
Protocol = Literal["TCP", "UDP", "SCTP"]


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    pass


def cluster_name(namespace: str, service: str, port: int, protocol: str = "TCP") -> str:
    """The name of the cluster for one Service port."""
    base = f"{namespace}/{service}:{port}"
    return base if protocol == "TCP" else f"{base}/{protocol}"


class Backend(_Frozen, frozen=True):
    cluster: str
    weight: int = 100


class RouteOptions(_Frozen, frozen=True):
    """Per-route behaviour taken from annotations."""

    # rewrite the matched part of the path to this (ingress-nginx rewrite-target; with Regex matches
    # it may use $1.. capture groups)
    rewrite_target: str | None = None
    # answer plain-HTTP requests with a 308 to https (set when the host has TLS, unless disabled)
    ssl_redirect: bool = False
    force_ssl_redirect: bool = False
    app_root: str | None = None
    # body size limit in bytes; None means the controller default
    max_body_size: int | None = None
    upstream_vhost: str | None = None
    backend_protocol: Literal["HTTP", "HTTPS"] = "HTTP"


class Route(_Frozen, frozen=True):
    match: MatchKind
    # Exact: the path as written. Prefix: without trailing slash ("/" stays "/"). Regex: a Python
    # regular expression anchored at the start, as ingress-nginx's use-regex locations are.
    path: str
    backends: tuple[Backend, ...]
    options: RouteOptions = RouteOptions()
    # "Ingress namespace/name", for logs, /debug and diagnostics
    source: str = ""


class VirtualHost(_Frozen, frozen=True):
    host: str
    # in match order: the first route that matches wins
    routes: tuple[Route, ...] = ()
    # the certificate served for this host (a Certificate.name), if it has TLS
    tls_certificate: str | None = None
    # used when no route matches (an Ingress defaultBackend for this host)
    default_backend: Backend | None = None


class Certificate(_Frozen, frozen=True):
    # "namespace/secret"
    name: str
    cert_pem: str
    key_pem: str
    # hosts this certificate is served for (from Ingress spec.tls[].hosts)
    hosts: tuple[str, ...] = ()


class Cluster(_Frozen, frozen=True):
    name: str
    # "namespace/name" of the Service
    service: str
    port: int
    protocol: Protocol = "TCP"
    port_name: str = ""
    balance: Balance = "round_robin"
    # for balance == "hash": what to hash, in ingress-nginx's upstream-hash-by notation
    # ("$remote_addr", "$cookie_NAME", "$http_NAME", "$request_uri")
    hash_by: str | None = None
    # ExternalName Services: proxy to this DNS name instead of endpoints
    external_name: str | None = None


class L4Port(_Frozen, frozen=True):
    name: str
    protocol: Protocol
    port: int
    # the cluster whose endpoints receive this port's traffic
    cluster: str
    node_port: int | None = None


class L4Service(_Frozen, frozen=True):
    # "namespace/name"
    name: str
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
    cluster_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    ports: tuple[L4Port, ...] = ()
    session_affinity: Literal["None", "ClientIP"] = "None"
    affinity_timeout_seconds: int = 10800
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    headless: bool = False


class RoutingTable(_Frozen, frozen=True):
    """Everything but endpoints. Rebuilt when Ingresses, Services, classes or Secrets change."""

    virtual_hosts: tuple[VirtualHost, ...] = ()
    # for requests that match no virtual host, and for hosts with no matching route and no
    # default of their own: the oldest rule-less Ingress defaultBackend, else the controller's
    default_backend: Backend | None = None
    clusters: tuple[Cluster, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    services: tuple[L4Service, ...] = ()


class Endpoint(_Frozen, frozen=True):
    ip: str
    port: int
    node: str = ""
    zone: str = ""
    # "namespace/name" of the pod behind it, when known
    pod: str = ""


class EndpointTable(_Frozen, frozen=True):
    """Ready endpoints per cluster name. Only addresses that may receive traffic are listed."""

    clusters: dict[str, tuple[Endpoint, ...]] = {}
