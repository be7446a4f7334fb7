"""decode_object: kinds, defaults, reworded type errors, legacy Ingress forms, API-server normalisation."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kubegate.objects.decode import DecodeError, UnknownKind, check_object, decode_object
from kubegate.objects.kinds import Ingress, IngressClass, Pod, Secret, Service
from tests.unit.manifests import DELETE, ingress, ingress_class, pod, secret, service, with_field


def error_of(document: object) -> tuple[str, str]:
    with pytest.raises(DecodeError) as raised:
        decode_object(document)
    return raised.value.field, raised.value.message


def test_service_decodes_with_api_defaults() -> None:
    obj = decode_object(with_field(service(), "metadata.namespace", DELETE))
    assert isinstance(obj, Service)
    assert obj.metadata.namespace == "default"
    assert obj.spec.type == "ClusterIP"
    assert obj.spec.session_affinity == "None"
    assert obj.spec.ports[1].protocol == "TCP"
    assert obj.spec.ports[0].target_port == "http"
    assert obj.spec.ports[1].target_port == 9090


def test_service_of_every_type_decodes() -> None:
    lb = with_field(service(), "spec.type", "LoadBalancer")
    lb = with_field(lb, "spec.loadBalancerClass", "example.com/metal")
    lb = with_field(lb, "spec.loadBalancerIP", "192.0.2.7")
    lb = with_field(lb, "spec.externalIPs", ["192.0.2.8"])
    obj = decode_object(lb)
    assert isinstance(obj, Service)
    assert (obj.spec.load_balancer_class, obj.spec.load_balancer_ip, obj.spec.external_ips) == (
        "example.com/metal",
        "192.0.2.7",
        ("192.0.2.8",),
    )
    headless = decode_object(with_field(service(), "spec.clusterIP", "None"))
    assert isinstance(headless, Service)
    assert headless.spec.cluster_ip == "None"


def test_pod_ready_condition_and_ips() -> None:
    obj = decode_object(with_field(pod(), "status.podIPs", [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]))
    assert isinstance(obj, Pod)
    assert [c.type for c in obj.status.conditions] == ["Ready"]
    assert [ip.ip for ip in obj.status.pod_ips] == ["10.0.0.5", "fd00::5"]
    assert obj.spec.containers[0].ports[0].name == "http"


def test_ingress_class_is_cluster_scoped_and_default_annotation_read() -> None:
    document = with_field(ingress_class(), "metadata.namespace", "ignored")
    document["metadata"]["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    obj = decode_object(document)
    assert isinstance(obj, IngressClass)
    assert obj.metadata.namespace == ""
    assert obj.is_default


def test_secret_string_data_is_merged_into_data_base64_encoded() -> None:
    document = with_field(secret(), "stringData", {"tls.key": "plain key", "extra": "x"})
    obj = decode_object(document)
    assert isinstance(obj, Secret)
    assert base64.b64decode(obj.data["tls.key"]) == b"plain key"  # stringData wins over data
    assert base64.b64decode(obj.data["extra"]) == b"x"
    assert obj.data["tls.crt"] == "Y2VydA=="
    assert obj.string_data == {}


def test_tls_secret_from_string_data_alone_is_valid() -> None:
    document = with_field(secret(), "data", DELETE)
    document["stringData"] = {"tls.crt": "c", "tls.key": "k"}
    assert isinstance(decode_object(document), Secret)


# --------------------------------------------------------------------------------------------------
# type errors, in words


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("spec.ports[0].port", "x", "spec.ports[0].port", 'expected an integer, got a string "x"'),
        ("spec.ports[0].port", True, "spec.ports[0].port", "expected an integer, got a boolean true"),
        ("spec.ports[0].port", 80.5, "spec.ports[0].port", "expected an integer, got a number 80.5"),
        ("spec.ports[0].port", DELETE, "spec.ports[0].port", "required"),
        ("spec.ports", {"port": 80}, "spec.ports", "expected a list, got a mapping"),
        (
            "spec.ports[0].targetPort",
            [1],
            "spec.ports[0].targetPort",
            "expected an integer or a string, got a list",
        ),
        ("metadata.labels", {"app": None}, "metadata.labels[app]", "expected a string, got null"),
        (
            "metadata.labels",
            {"version": 2},
            "metadata.labels[version]",
            "expected a string, got an integer 2",
        ),
        ("spec", "none", "spec", 'expected a mapping, got a string "none"'),
        ("metadata", DELETE, "metadata", "required"),
    ],
)
def test_type_errors_are_reworded(path: str, value: object, field: str, message: str) -> None:
    assert error_of(with_field(service(), path, value)) == (field, message)


def test_non_string_keys_are_named() -> None:
    document = service()
    document["metadata"]["labels"] = {80: "x"}
    assert error_of(document) == ("metadata.labels", "keys must be strings, got an integer 80 (quote it)")


def test_missing_api_version_and_kind() -> None:
    assert error_of({"kind": "Service"}) == ("apiVersion", "required")
    assert error_of({"apiVersion": "v1"}) == ("kind", "required")
    assert error_of({"apiVersion": "v1", "kind": 3}) == ("kind", "expected a string, got an integer 3")
    assert error_of(["not", "a", "mapping"])[1].startswith("expected an object")


def test_unknown_kind_and_unknown_version_are_unknown() -> None:
    with pytest.raises(UnknownKind) as raised:
        decode_object({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}})
    assert (raised.value.api_version, raised.value.kind) == ("apps/v1", "Deployment")
    with pytest.raises(UnknownKind):
        decode_object({"apiVersion": "v2", "kind": "Service"})


def test_huge_integers_are_range_errors_not_crashes() -> None:
    field, message = error_of(with_field(service(), "spec.ports[0].port", 10**30))
    assert field == "spec.ports[0].port"
    assert "between 1 and 65535" in message


def test_self_referencing_and_exploding_documents_fail_cleanly() -> None:
    looped: dict[str, Any] = service()
    looped["spec"]["ports"].append(looped["spec"]["ports"])
    field, message = error_of(looped)
    assert "deeper than" in message
    assert field.startswith("spec.ports[2]")

    bomb: list[Any] = ["x"]
    for _ in range(30):  # 2**30 values once expanded, as a YAML alias bomb would be
        bomb = [bomb, bomb]
    assert "more than" in error_of(with_field(service(), "metadata.annotations", {"a": bomb}))[1]


def test_validation_error_is_the_first_problem() -> None:
    assert error_of(with_field(ingress(), "spec.rules[0].http.paths[0].pathType", DELETE)) == (
        "spec.rules[0].http.paths[0].pathType",
        "required in networking.k8s.io/v1",
    )


# --------------------------------------------------------------------------------------------------
# legacy Ingress


def legacy(version: str, backend: dict[str, Any], path: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": "/", "backend": backend} if path is None else path
    return {
        "apiVersion": version,
        "kind": "Ingress",
        "metadata": {"name": "old", "annotations": {"kubernetes.io/ingress.class": "kubegate"}},
        "spec": {
            "backend": {"serviceName": "fallback", "servicePort": 8080},
            "rules": [
                {"host": "old.example.com", "http": {"paths": [entry]}},
                {"host": "nopaths.example.com"},
            ],
        },
    }


@pytest.mark.parametrize("version", ["extensions/v1beta1", "networking.k8s.io/v1beta1"])
@pytest.mark.parametrize(
    ("service_port", "name", "number"), [(80, "", 80), ("http", "http", 0), ("8080", "", 8080)]
)
def test_legacy_ingress_converts_to_v1(version: str, service_port: object, name: str, number: int) -> None:
    obj = decode_object(legacy(version, {"serviceName": "web", "servicePort": service_port}))
    assert isinstance(obj, Ingress)
    assert obj.api_version == "networking.k8s.io/v1"
    rule, bare = obj.spec.rules
    path = rule.http.paths[0] if rule.http else None
    assert path is not None
    assert path.path_type == "ImplementationSpecific"  # what the API server defaults a missing pathType to
    assert path.backend.service is not None
    assert (path.backend.service.name, path.backend.service.port.name, path.backend.service.port.number) == (
        "web",
        name,
        number,
    )
    assert bare.host == "nopaths.example.com"
    assert bare.http is None
    assert obj.spec.default_backend is not None
    assert obj.spec.default_backend.service is not None
    assert obj.spec.default_backend.service.port.number == 8080
    assert obj.metadata.annotations["kubernetes.io/ingress.class"] == "kubegate"


def test_legacy_path_type_is_kept_when_given() -> None:
    document = legacy(
        "networking.k8s.io/v1beta1",
        {},
        {"path": "/exact", "pathType": "Exact", "backend": {"serviceName": "web", "servicePort": 80}},
    )
    obj = decode_object(document)
    assert isinstance(obj, Ingress)
    assert obj.spec.rules[0].http is not None
    assert obj.spec.rules[0].http.paths[0].path_type == "Exact"


def test_legacy_errors_name_the_fields_the_user_wrote() -> None:
    _, errors = check_object(legacy("extensions/v1beta1", {"serviceName": "web", "servicePort": 70000}))
    assert [e.field for e in errors] == ["spec.rules[0].http.paths[0].backend.servicePort"]
    assert errors[0].message == "70000 is not a valid port: must be between 1 and 65535"
    _, errors = check_object(legacy("extensions/v1beta1", {"servicePort": 80}))
    assert errors[0].field == "spec.rules[0].http.paths[0].backend.serviceName"
    document = legacy("extensions/v1beta1", {"serviceName": "web", "servicePort": 80})
    document["spec"]["backend"] = {"serviceName": "Bad_Name", "servicePort": 80}
    _, errors = check_object(document)
    assert errors[0].field == "spec.backend.serviceName"


def test_legacy_type_errors_are_reworded() -> None:
    field, message = error_of(legacy("extensions/v1beta1", {"serviceName": "web", "servicePort": [80]}))
    assert field == "spec.rules[0].http.paths[0].backend.servicePort"
    assert message == "expected an integer or a string, got a list"
