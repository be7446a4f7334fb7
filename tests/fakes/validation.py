"""The subset of kube-apiserver's create/update validation that a gateway's tests can trip over.

Names (DNS-1123 subdomain for most kinds, DNS-1035 label for Services, DNS-1123 label for Namespaces),
Service ports, Ingress paths' ``pathType`` and backends. Each failure is a (field path, message) pair in
kube's wording; the caller turns them into one 422 Invalid Status.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")


def name_problems(kind: str, name: str) -> list[tuple[str, str]]:
    field = "metadata.name"
    if kind == "Service":
        if len(name) > 63 or not _LABEL_1035.match(name):
            return [
                (
                    field,
                    f'Invalid value: "{name}": a DNS-1035 label must consist of lower case alphanumeric '
                    "characters or '-', start with an alphabetic character, and end with an alphanumeric "
                    "character",
                )
            ]
        return []
    if kind == "Namespace":
        if len(name) > 63 or not _LABEL_1123.match(name):
            return [
                (
                    field,
                    f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                    "alphanumeric characters or '-', and must start and end with an alphanumeric character",
                )
            ]
        return []
    if len(name) > 253 or not _SUBDOMAIN.match(name):
        return [
            (
                field,
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def _service_problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    service_type = spec.get("type", "ClusterIP")
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        problems.append(
            (
                "spec.type",
                f'Unsupported value: "{service_type}": supported values: "ClusterIP", "ExternalName", '
                '"LoadBalancer", "NodePort"',
            )
        )
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if not ports and service_type != "ExternalName" and not headless:
        problems.append(("spec.ports", "Required value"))
    if not isinstance(ports, list):
        return [*problems, ("spec.ports", "Invalid value: must be a list")]
    seen: set[tuple[Any, Any]] = set()
    for index, port in enumerate(ports):
        where = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            problems.append((where, "Invalid value: must be an object"))
            continue
        number = port.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            problems.append(
                (f"{where}.port", f"Invalid value: {number}: must be between 1 and 65535, inclusive")
            )
        protocol = port.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            problems.append(
                (
                    f"{where}.protocol",
                    f'Unsupported value: "{protocol}": supported values: "SCTP", "TCP", "UDP"',
                )
            )
        if (number, protocol) in seen:
            problems.append((where, f'Duplicate value: {{"protocol":"{protocol}","port":{number}}}'))
        seen.add((number, protocol))
        if len(ports) > 1 and not port.get("name"):
            problems.append((f"{where}.name", "Required value"))
    return problems


def _ingress_backend_problems(backend: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(backend, dict) or ("service" not in backend and "resource" not in backend):
        return [(where, "Invalid value: backend must specify either a service or a resource")]
    if "service" in backend:
        service = backend["service"]
        port = service.get("port") if isinstance(service, dict) else None
        if not isinstance(port, dict) or ("number" not in port and "name" not in port):
            return [(f"{where}.service.port", "Invalid value: port name or number is required")]
    return []


def _host_problems(host: Any, where: str) -> list[tuple[str, str]]:
    """kube's Ingress host rule: a DNS-1123 subdomain, optionally with one leading ``*.``, not an IP."""
    text = str(host)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return [(where, f'Invalid value: "{text}": must be a DNS name, not an IP address')]
    bare = text[2:] if text.startswith("*.") else text
    if len(text) > 253 or not _SUBDOMAIN.match(bare):
        kind = "a wildcard DNS-1123 subdomain" if text.startswith("*") else "a lowercase RFC 1123 subdomain"
        return [
            (
                where,
                f'Invalid value: "{text}": {kind} must consist of lower case alphanumeric characters, '
                "'-' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def _ingress_problems(spec: dict[str, Any], strict: bool) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if "defaultBackend" in spec:
        problems += _ingress_backend_problems(spec["defaultBackend"], "spec.defaultBackend")
    rules = spec.get("rules") or []
    if not rules and "defaultBackend" not in spec:
        problems.append(
            ("spec.rules", "Required value: either `defaultBackend` or `rules` must be specified")
        )
    for r, rule in enumerate(rules if isinstance(rules, list) else []):
        if strict and isinstance(rule, dict) and rule.get("host"):
            problems += _host_problems(rule["host"], f"spec.rules[{r}].host")
        http = rule.get("http") if isinstance(rule, dict) else None
        if not isinstance(http, dict):
            continue
        for p, path in enumerate(http.get("paths") or []):
            where = f"spec.rules[{r}].http.paths[{p}]"
            if not isinstance(path, dict):
                problems.append((where, "Invalid value: must be an object"))
                continue
            path_type = path.get("pathType")
            if path_type is None:
                problems.append((f"{where}.pathType", "Required value: pathType must be specified"))
            elif path_type not in _PATH_TYPES:
                problems.append(
                    (
                        f"{where}.pathType",
                        f'Unsupported value: "{path_type}": supported values: "Exact", '
                        '"ImplementationSpecific", "Prefix"',
                    )
                )
            value = path.get("path", "")
            if path_type in ("Exact", "Prefix") and not str(value).startswith("/"):
                problems.append((f"{where}.path", f'Invalid value: "{value}": must be an absolute path'))
            problems += _ingress_backend_problems(path.get("backend"), f"{where}.backend")
    return problems


def spec_problems(kind: str, obj: dict[str, Any], *, strict: bool = False) -> list[tuple[str, str]]:
    """Problems in ``obj``'s spec; ``strict`` adds the checks the fake skips by default (Ingress hosts)."""
    spec = obj.get("spec")
    if kind == "Service":
        return _service_problems(spec if isinstance(spec, dict) else {})
    if kind == "Ingress":
        return _ingress_problems(spec if isinstance(spec, dict) else {}, strict)
    return []
