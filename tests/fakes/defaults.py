"""Defaulting and allocation the real API server does on write, for the kinds where clients see it.

Services get ``type: ClusterIP``, ``sessionAffinity: None``, per-port ``protocol: TCP`` and
``targetPort = port``, a ClusterIP from 10.96.0.0/12 (unless headless or ExternalName), and nodePorts in
30000-32767 for NodePort and LoadBalancer Services. On update, unset allocated values are carried over from
the stored object (as kube-apiserver's ``patchAllocatedValues`` does), and changing the ClusterIP is refused.
Namespaces get the ``kubernetes`` finalizer, phase Active and the ``kubernetes.io/metadata.name`` label;
Secrets type Opaque with ``stringData`` folded into ``data``; Endpoints and EndpointSlice ports protocol TCP.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from tests.fakes.errors import ApiError, invalid

_SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORT_RANGE = range(30000, 32768)


class Allocator:
    """ClusterIPs and nodePorts in use; callers hold the cluster lock."""

    def __init__(self) -> None:
        self._next_ip = int(_SERVICE_NET.network_address) + 10  # .1 is the kubernetes Service in kube
        self.cluster_ips: set[str] = set()
        self.node_ports: set[int] = set()
        self._next_port = NODE_PORT_RANGE.start

    def allocate_ip(self) -> str:
        while True:
            candidate = str(ipaddress.IPv4Address(self._next_ip))
            self._next_ip += 1
            if self._next_ip >= int(_SERVICE_NET.broadcast_address):
                self._next_ip = int(_SERVICE_NET.network_address) + 2
            if candidate not in self.cluster_ips:
                self.cluster_ips.add(candidate)
                return candidate

    def allocate_port(self) -> int:
        for _ in range(len(NODE_PORT_RANGE)):
            port = self._next_port
            self._next_port = port + 1 if port + 1 < NODE_PORT_RANGE.stop else NODE_PORT_RANGE.start
            if port not in self.node_ports:
                self.node_ports.add(port)
                return port
        raise ApiError(500, "InternalError", "range of valid nodePorts is full")

    @staticmethod
    def _held(service: dict[str, Any]) -> tuple[set[Any], set[Any]]:
        spec = service.get("spec") or {}
        ips = set(spec.get("clusterIPs") or [spec.get("clusterIP")])
        ports = {port.get("nodePort") for port in spec.get("ports") or [] if isinstance(port, dict)}
        ports.add(spec.get("healthCheckNodePort"))
        return ips, ports

    def release(self, service: dict[str, Any], kept: dict[str, Any] | None = None) -> None:
        """Free what ``service`` held, except what ``kept`` (its successor after an update) still holds."""
        ips, ports = self._held(service)
        if kept is not None:
            kept_ips, kept_ports = self._held(kept)
            ips -= kept_ips
            ports -= kept_ports
        self.cluster_ips.difference_update(ips)
        self.node_ports.difference_update(ports)


def _wants_node_ports(spec: dict[str, Any]) -> bool:
    service_type = spec.get("type")
    if service_type == "NodePort":
        return True
    return service_type == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True) is not False


def default_service(
    service: dict[str, Any], old: dict[str, Any] | None, allocator: Allocator
) -> dict[str, Any]:
    """Return ``service`` with defaults and allocations applied (a new dict; the input is not changed)."""
    name = (service.get("metadata") or {}).get("name", "")
    spec = dict(service.get("spec") or {})
    old_spec = (old or {}).get("spec") or {}
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    service_type = spec["type"]
    if service_type == "ExternalName":
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    else:
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
            spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
        requested = spec.get("clusterIP")
        if old_spec.get("clusterIP") and requested != old_spec["clusterIP"]:
            raise invalid(
                "Service",
                "",
                name,
                [("spec.clusterIPs[0]", "Invalid value: []string(nil): may not change once set")],
            )
        if not requested:
            spec["clusterIP"] = allocator.allocate_ip()
        elif requested != "None" and old is None:
            try:
                address = ipaddress.IPv4Address(requested)
            except ValueError:
                raise invalid(
                    "Service",
                    "",
                    name,
                    [("spec.clusterIPs[0]", f'Invalid value: "{requested}": must be a valid IP')],
                ) from None
            if address not in _SERVICE_NET:
                raise invalid(
                    "Service",
                    "",
                    name,
                    [
                        (
                            "spec.clusterIPs",
                            f'Invalid value: []string{{"{requested}"}}: failed to allocate IP '
                            f"{requested}: provided IP is not in the valid range. The range of valid IPs is "
                            f"{_SERVICE_NET}",
                        )
                    ],
                )
            if requested in allocator.cluster_ips:
                raise invalid(
                    "Service",
                    "",
                    name,
                    [
                        (
                            "spec.clusterIPs",
                            f'Invalid value: []string{{"{requested}"}}: failed to allocate IP '
                            f"{requested}: provided IP is already allocated",
                        )
                    ],
                )
            allocator.cluster_ips.add(requested)
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    old_node_ports = {
        (port.get("port"), port.get("protocol", "TCP")): port.get("nodePort")
        for port in old_spec.get("ports") or []
        if isinstance(port, dict)
    }
    ports = []
    for port in spec.get("ports") or []:
        port = dict(port)
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        if _wants_node_ports(spec):
            if not port.get("nodePort"):
                carried = old_node_ports.get((port.get("port"), port["protocol"]))
                port["nodePort"] = carried if carried else allocator.allocate_port()
            elif port["nodePort"] not in old_node_ports.values():
                if port["nodePort"] in allocator.node_ports:
                    raise invalid(
                        "Service",
                        "",
                        name,
                        [
                            (
                                "spec.ports[].nodePort",
                                f"Invalid value: {port['nodePort']}: provided port is already allocated",
                            )
                        ],
                    )
                allocator.node_ports.add(port["nodePort"])
        else:
            port.pop("nodePort", None)
        ports.append(port)
    if "ports" in spec:
        spec["ports"] = ports
    if service_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    return {**service, "spec": spec}


def default_namespace(namespace: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(namespace.get("metadata") or {})
    labels = dict(metadata.get("labels") or {})
    labels["kubernetes.io/metadata.name"] = metadata.get("name", "")
    metadata["labels"] = labels
    spec = dict(namespace.get("spec") or {})
    spec.setdefault("finalizers", ["kubernetes"])
    return {**namespace, "metadata": metadata, "spec": spec}


def _default_port_protocols(ports: Any) -> Any:
    if not isinstance(ports, list):
        return ports
    return [{"protocol": "TCP", **port} if isinstance(port, dict) else port for port in ports]


def default_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """Type Opaque by default; ``stringData`` is folded into ``data`` (base64), not stored, as in kube."""
    result = {"type": "Opaque", **secret}
    string_data = result.pop("stringData", None)
    if isinstance(string_data, dict):
        data = dict(result.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        result["data"] = data
    return result


def plain_defaults(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The defaults that need no allocation state (Service allocation is ``default_service``)."""
    if kind == "Namespace":
        return default_namespace(obj)
    if kind == "Secret":
        return default_secret(obj)
    if kind == "Endpoints" and isinstance(obj.get("subsets"), list):
        subsets = [
            {**subset, "ports": _default_port_protocols(subset.get("ports"))}
            if isinstance(subset, dict)
            else subset
            for subset in obj["subsets"]
        ]
        return {**obj, "subsets": subsets}
    if kind == "EndpointSlice" and "ports" in obj:
        return {**obj, "ports": _default_port_protocols(obj["ports"])}
    return obj


def pod_qos_class(pod: dict[str, Any]) -> str:
    """The QoS class kube records at creation: BestEffort without any requests or limits, Guaranteed when
    every container limits cpu and memory with requests (if given) equal to the limits, else Burstable."""
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    resources: list[dict[str, Any]] = []
    for container in containers if isinstance(containers, list) else []:
        given = container.get("resources") if isinstance(container, dict) else None
        resources.append(given if isinstance(given, dict) else {})
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    for r in resources:
        limits = r.get("limits") or {}
        requests = r.get("requests") or {}
        if not all(limits.get(name) for name in ("cpu", "memory")):
            return "Burstable"
        if any(requests.get(name, limits[name]) != limits[name] for name in ("cpu", "memory")):
            return "Burstable"
    return "Guaranteed"
