"""The legacy Ingress forms (extensions/v1beta1, networking.k8s.io/v1beta1), converted to v1 here, once.

Conversion follows the API server's: ``serviceName``/``servicePort`` become ``service.name`` and
``service.port.number`` (an int) or ``service.port.name`` (a string); ``spec.backend`` becomes
``spec.defaultBackend``; a path without ``pathType`` defaults to ``ImplementationSpecific``.
"""

from __future__ import annotations

import msgspec

from kubegate.objects.kinds import (
    HTTPIngressPath,
    HTTPIngressRuleValue,
    Ingress,
    IngressBackend,
    IngressRule,
    IngressServiceBackend,
    IngressSpec,
    IngressStatus,
    IngressTLS,
    ServiceBackendPort,
    TypedLocalObjectReference,
)
from kubegate.objects.meta import ObjectMeta

LEGACY_INGRESS_VERSIONS = ("extensions/v1beta1", "networking.k8s.io/v1beta1")


class LegacyBackend(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    service_name: str = ""
    service_port: int | str | None = None
    resource: TypedLocalObjectReference | None = None


class LegacyPath(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    path: str = ""
    path_type: str | None = None
    backend: LegacyBackend


class LegacyRuleValue(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    paths: tuple[LegacyPath, ...] = ()


class LegacyRule(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    host: str = ""
    http: LegacyRuleValue | None = None


class LegacySpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ingress_class_name: str | None = None
    backend: LegacyBackend | None = None
    rules: tuple[LegacyRule, ...] = ()
    tls: tuple[IngressTLS, ...] = ()


class LegacyIngress(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str
    kind: str = "Ingress"
    metadata: ObjectMeta
    spec: LegacySpec = LegacySpec()
    status: IngressStatus = IngressStatus()


def _backend(legacy: LegacyBackend) -> IngressBackend:
    if legacy.resource is not None and not legacy.service_name:
        return IngressBackend(resource=legacy.resource)
    port = legacy.service_port
    if isinstance(port, int):
        backend_port = ServiceBackendPort(number=port)
    elif isinstance(port, str) and port.isdigit():
        # "80" as a string is an int-or-string holding a number in the API (intstr parses it)
        backend_port = ServiceBackendPort(number=int(port))
    else:
        backend_port = ServiceBackendPort(name=port or "")
    return IngressBackend(
        service=IngressServiceBackend(name=legacy.service_name, port=backend_port),
        resource=legacy.resource,
    )


def to_v1(legacy: LegacyIngress) -> Ingress:
    """The v1 Ingress the API server would serve for this legacy one."""
    spec = legacy.spec
    rules = tuple(
        IngressRule(
            host=rule.host,
            http=None
            if rule.http is None
            else HTTPIngressRuleValue(
                paths=tuple(
                    HTTPIngressPath(
                        path=path.path,
                        path_type=path.path_type or "ImplementationSpecific",
                        backend=_backend(path.backend),
                    )
                    for path in rule.http.paths
                )
            ),
        )
        for rule in spec.rules
    )
    return Ingress(
        metadata=legacy.metadata,
        spec=IngressSpec(
            ingress_class_name=spec.ingress_class_name,
            default_backend=None if spec.backend is None else _backend(spec.backend),
            rules=rules,
            tls=spec.tls,
        ),
        status=legacy.status,
    )


_V1_TO_LEGACY = (
    # longest first: the first matching v1 suffix decides
    (".backend.service.port.number", ".backend.servicePort"),
    (".backend.service.port.name", ".backend.servicePort"),
    (".backend.service.port", ".backend.servicePort"),
    (".backend.service.name", ".backend.serviceName"),
    (".backend.service", ".backend.serviceName"),
)


def legacy_field(field: str) -> str:
    """The field path a legacy manifest spells for a v1 field path (errors must name what the user wrote)."""
    if field.startswith("spec.defaultBackend"):
        field = "spec.backend" + field.removeprefix("spec.defaultBackend")
    for v1, legacy in _V1_TO_LEGACY:
        if v1 in field:
            head, _, tail = field.partition(v1)
            return head + legacy + tail
    return field
