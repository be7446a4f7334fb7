"""Valid manifests of every kind, and a helper to change one field: the base of the decode tests."""

from __future__ import annotations

import copy
import re
from typing import Any

DELETE = object()


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app.kubernetes.io/name": "web"}},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": 9090},
            ],
        },
    }


def node_port_service() -> dict[str, Any]:
    doc = service()
    doc["spec"]["type"] = "NodePort"
    doc["spec"]["externalTrafficPolicy"] = "Local"
    doc["spec"]["ports"][0]["nodePort"] = 30080
    return doc


def endpoints() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"name": "http", "port": 8080}]}],
    }


def endpoint_slice() -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def ingress() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {
            "tls": [{"hosts": ["www.example.com"], "secretName": "web-tls"}],
            "rules": [
                {
                    "host": "www.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


def ingress_class() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "kubegate"},
        "spec": {"controller": "kubegate.dev/ingress"},
    }


def secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "web-tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    }


def with_field(document: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of ``document`` with ``path`` (``spec.ports[0].port``) set to value (DELETE removes it)."""
    result = copy.deepcopy(document)
    parts: list[str | int] = [int(i) if i else n for n, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    current: Any = result
    for part in parts[:-1]:
        if isinstance(part, str) and part not in current:
            current[part] = {}
        current = current[part]
    last = parts[-1]
    if value is DELETE:
        del current[last]
    else:
        current[last] = value
    return result
