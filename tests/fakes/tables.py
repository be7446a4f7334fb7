"""Server-side printing: the ``Table`` (meta.k8s.io/v1) kubectl asks for to print ``kubectl get``.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...`` for human-readable output and
prints whatever columns the server returns; these are kube-apiserver's columns and cell formats for the
kinds served here (the printers in kubernetes/pkg/printers/internalversion), so ``kubectl get svc`` looks
as it does against a real cluster. Kinds without a printer get kube's default: Name, Created At.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
Column = tuple[str, str, int]  # name, type, priority (1: only with -o wide)


def _age(obj: Obj) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    created = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(obj: Obj) -> Obj:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _lb_addresses(obj: Obj) -> list[str]:
    ingress = (_status(obj).get("loadBalancer") or {}).get("ingress") or []
    return [
        str(entry.get("ip") or entry.get("hostname") or "") for entry in ingress if isinstance(entry, dict)
    ]


def _service(obj: Obj) -> list[Any]:
    spec = _spec(obj)
    service_type = spec.get("type", "ClusterIP")
    cluster_ip = spec.get("clusterIP") or "<none>"
    external = list(spec.get("externalIPs") or [])
    if service_type == "LoadBalancer":
        external = _lb_addresses(obj) + external
        shown = ",".join(external) if external else "<pending>"
    elif service_type == "ExternalName":
        shown = spec.get("externalName") or "<none>"
    else:
        shown = ",".join(external) if external else "<none>"
    ports = []
    for port in spec.get("ports") or []:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        ports.append(f"{text}/{port.get('protocol', 'TCP')}")
    selector = spec.get("selector") or {}
    selector_text = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) if selector else "<none>"
    return [service_type, cluster_ip, shown, ",".join(ports) or "<none>", _age(obj), selector_text]


def _ingress(obj: Obj) -> list[Any]:
    spec = _spec(obj)
    hosts = [
        str(rule["host"]) for rule in spec.get("rules") or [] if isinstance(rule, dict) and rule.get("host")
    ]
    if not hosts:
        hosts_text = "*"
    elif len(hosts) > 4:
        hosts_text = ",".join(hosts[:4]) + f" + {len(hosts) - 4} more..."
    else:
        hosts_text = ",".join(hosts)
    ports = "80, 443" if spec.get("tls") else "80"
    return [
        spec.get("ingressClassName") or "<none>",
        hosts_text,
        ",".join(_lb_addresses(obj)),
        ports,
        _age(obj),
    ]


def _endpoints(obj: Obj) -> list[Any]:
    shown: list[str] = []
    total = 0
    for subset in obj.get("subsets") or []:
        ports = subset.get("ports") or [{}]
        for address in subset.get("addresses") or []:
            for port in ports:
                total += 1
                if len(shown) < 3:
                    ip = address.get("ip", "")
                    shown.append(f"{ip}:{port['port']}" if "port" in port else ip)
    text = ",".join(shown) if shown else "<none>"
    if total > 3:
        text += f" + {total - 3} more..."
    return [text, _age(obj)]


def _endpoint_slice(obj: Obj) -> list[Any]:
    ports = [str(p.get("port")) for p in obj.get("ports") or [] if isinstance(p, dict) and "port" in p]
    addresses = [a for e in obj.get("endpoints") or [] for a in (e.get("addresses") or [])]
    shown = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [obj.get("addressType", ""), ",".join(ports) or "<unset>", shown or "<unset>", _age(obj)]


def _pod(obj: Obj) -> list[Any]:
    containers = _spec(obj).get("containers") or []
    statuses = _status(obj).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [
        f"{ready}/{len(containers)}",
        _status(obj).get("phase", ""),
        restarts,
        _age(obj),
        _status(obj).get("podIP") or "<none>",
        _spec(obj).get("nodeName") or "<none>",
    ]


def _node(obj: Obj) -> list[Any]:
    conditions = _status(obj).get("conditions") or []
    ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
    state = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    labels = (obj.get("metadata") or {}).get("labels") or {}
    prefix = "node-role.kubernetes.io/"
    roles = ",".join(sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))) or "<none>"
    version = (_status(obj).get("nodeInfo") or {}).get("kubeletVersion", "")
    return [state, roles, _age(obj), version]


def _since(stamp: Any) -> str:
    return (
        _age({"metadata": {"creationTimestamp": stamp}}) if isinstance(stamp, str) and stamp else "<unknown>"
    )


def _event(obj: Obj) -> list[Any]:
    """Core v1 and events.k8s.io/v1 Events (involvedObject/message vs regarding/note)."""
    about = obj.get("involvedObject") or obj.get("regarding") or {}
    stamp = (
        obj.get("lastTimestamp")
        or obj.get("deprecatedLastTimestamp")
        or (obj.get("series") or {}).get("lastObservedTime")
        or obj.get("eventTime")
        or (obj.get("metadata") or {}).get("creationTimestamp")
    )
    first = obj.get("firstTimestamp") or obj.get("deprecatedFirstTimestamp") or obj.get("eventTime")
    source = obj.get("source") or obj.get("deprecatedSource") or {}
    return [
        _since(str(stamp)[:19] + "Z" if stamp else ""),
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{str(about.get('kind', '')).lower()}/{about.get('name', '')}",
        about.get("fieldPath", ""),
        source.get("component") or obj.get("reportingController") or obj.get("reportingComponent") or "",
        obj.get("message") or obj.get("note") or "",
        _since(str(first)[:19] + "Z" if first else ""),
        obj.get("count") or obj.get("deprecatedCount") or 1,
        (obj.get("metadata") or {}).get("name", ""),
    ]


PRINTERS: dict[str, tuple[tuple[Column, ...], Callable[[Obj], list[Any]]]] = {
    "Event": (
        (
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ),
        _event,
    ),
    "Service": (
        (
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ),
        _service,
    ),
    "Ingress": (
        (
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            ("Age", "string", 0),
        ),
        _ingress,
    ),
    "IngressClass": (
        (("Controller", "string", 0), ("Parameters", "string", 0), ("Age", "string", 0)),
        lambda o: [_spec(o).get("controller", ""), "<none>", _age(o)],
    ),
    "Endpoints": ((("Endpoints", "string", 0), ("Age", "string", 0)), _endpoints),
    "EndpointSlice": (
        (
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ),
        _endpoint_slice,
    ),
    "Namespace": (
        (("Status", "string", 0), ("Age", "string", 0)),
        lambda o: [_status(o).get("phase", ""), _age(o)],
    ),
    "ConfigMap": (
        (("Data", "integer", 0), ("Age", "string", 0)),
        lambda o: [len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age(o)],
    ),
    "Secret": (
        (("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)),
        lambda o: [
            o.get("type", "Opaque"),
            len(o.get("data") or {}) + len(o.get("stringData") or {}),
            _age(o),
        ],
    ),
    "Lease": (
        (("Holder", "string", 0), ("Age", "string", 0)),
        lambda o: [_spec(o).get("holderIdentity") or "", _age(o)],
    ),
    "Pod": (
        (
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ),
        _pod,
    ),
    "Node": (
        (("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0), ("Version", "string", 0)),
        _node,
    ),
}


def wants_table(accept: str) -> bool:
    """True when the client's first acceptable type is a meta.k8s.io/v1 Table."""
    for offer in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[-1].strip() for p in offer.split(";")[1:]}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
        if "as" not in params:
            return False
    return False


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(kind: str, items: list[Obj], list_metadata: Obj, include: str = "Metadata") -> Obj:
    """A Table of ``items``; ``list_metadata`` is the list's (resourceVersion, and continue when paged)."""
    columns, cells = PRINTERS.get(
        kind, ((("Created At", "date", 0),), lambda o: [(o.get("metadata") or {}).get("creationTimestamp")])
    )
    # kube leads with the name for every kind but Event, whose printer has it as its last (wide) column
    leading_name = kind != "Event"
    name_column = {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    definitions = [name_column] if leading_name else []
    definitions += [
        {"name": name, "type": kind_, "format": "", "description": name, "priority": priority}
        for name, kind_, priority in columns
    ]
    rows = []
    for obj in items:
        name = [(obj.get("metadata") or {}).get("name", "")] if leading_name else []
        row: Obj = {"cells": [*name, *cells(obj)]}
        shown = _row_object(obj, include)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
