"""Rules that decoding cannot reach (objects built directly) and the memoising Translator's updates."""

from __future__ import annotations

import msgspec
import pytest

from kubegate.objects.kinds import (
    Container,
    ContainerPort,
    HTTPIngressPath,
    HTTPIngressRuleValue,
    Ingress,
    IngressBackend,
    IngressRule,
    IngressServiceBackend,
    IngressSpec,
    KubeObject,
    Pod,
    PodCondition,
    PodSpec,
    PodStatus,
    Service,
    ServiceBackendPort,
    ServicePort,
    ServiceSpec,
)
from kubegate.objects.meta import ObjectKey, ObjectMeta
from kubegate.objects.snapshot import Snapshot
from kubegate.translate import Translator, translate
from kubegate.translate.annotations import parse_annotations, parse_size

KEY = ObjectKey("Ingress", "default", "x")


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("100", 100), ("8k", 8192), ("8m", 8 * 1024**2), ("1G", 1024**3), ("8 m", None)],
)
def test_nginx_size_syntax(text: str, size: int | None) -> None:
    assert parse_size(text) == size


def test_nginx_prefix_wins_over_generic_prefix() -> None:
    parsed = parse_annotations(
        KEY,
        {"nginx.ingress.kubernetes.io/app-root": "/a", "ingress.kubernetes.io/app-root": "/b"},
    )
    assert parsed.app_root == "/a"
    assert parsed.diagnostics == ()


def test_capture_in_rewrite_target_implies_regex() -> None:
    assert parse_annotations(KEY, {"nginx.ingress.kubernetes.io/rewrite-target": "/$1"}).regex
    assert not parse_annotations(KEY, {"nginx.ingress.kubernetes.io/rewrite-target": "/"}).regex


def _service(name: str, *ports: ServicePort, selector: dict[str, str] | None = None) -> Service:
    return Service(metadata=ObjectMeta(name=name), spec=ServiceSpec(ports=ports, selector=selector))


def _ingress(name: str, host: str, path: str, service: str, path_type: str | None = "Prefix") -> Ingress:
    backend = IngressBackend(service=IngressServiceBackend(name=service, port=ServiceBackendPort(number=80)))
    return Ingress(
        metadata=ObjectMeta(name=name),
        spec=IngressSpec(
            rules=(
                IngressRule(
                    host=host,
                    http=HTTPIngressRuleValue(
                        paths=(HTTPIngressPath(path=path, path_type=path_type, backend=backend),)
                    ),
                ),
            )
        ),
    )


def _messages(objects: list[KubeObject]) -> list[str]:
    return [f"{d.severity} {d.field}: {d.message}" for d in translate(Snapshot.of(objects)).diagnostics]


def test_invalid_hosts_and_paths_become_diagnostics_not_exceptions() -> None:
    objects: list[KubeObject] = [
        _service("web", ServicePort(port=80)),
        _ingress("a", "foo.*.example.com", "/", "web"),
        _ingress("b", "ok.example.com", "relative", "web"),
        _ingress("c", "ok.example.com", "/x", "web", path_type="Regex"),
        _ingress("d", "OK.example.com", "/y", "web", path_type=None),
    ]
    translation = translate(Snapshot.of(objects))
    messages = _messages(objects)
    assert any("spec.rules[0].host: invalid host 'foo.*.example.com'" in m for m in messages)
    assert any("a Prefix path must start with '/'" in m for m in messages)
    assert any("unknown pathType 'Regex'" in m for m in messages)
    assert any(m.startswith("warning spec.rules[0].http.paths[0].pathType") for m in messages)
    # upper-case hosts compare lower-cased; the path without pathType is served as a Prefix
    (vhost,) = translation.routing.virtual_hosts
    assert vhost.host == "ok.example.com"
    assert [(r.match, r.path) for r in vhost.routes] == [("Prefix", "/y")]


def _pod(name: str, ip: str, port_name: str, number: int, ready: bool = True) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, labels={"app": "web"}),
        spec=PodSpec(
            containers=(Container(name="c", ports=(ContainerPort(name=port_name, container_port=number),)),)
        ),
        status=PodStatus(
            phase="Running",
            pod_ip=ip,
            conditions=(PodCondition(type="Ready", status="True" if ready else "False"),),
        ),
    )


def test_translator_follows_changes_like_a_fresh_translation() -> None:
    web = _service("web", ServicePort(name="http", port=80, target_port="http"), selector={"app": "web"})
    pod = _pod("p1", "10.0.0.1", "http", 8080)
    ingress = _ingress("site", "a.example.com", "/", "web")
    translator = Translator()
    first = Snapshot.of([web, pod, ingress])
    assert translator.translate(first) == translate(first)
    assert translator.translate(first).endpoints.clusters["default/web:80"][0].port == 8080

    # the pod's named port moves: endpoints follow although the Service did not change
    moved = Snapshot.of([web, _pod("p1", "10.0.0.1", "http", 9090), ingress])
    assert translator.translate(moved).endpoints.clusters["default/web:80"][0].port == 9090

    # the backend Service disappears: the unchanged Ingress is re-examined and reports it
    gone = Snapshot.of([_pod("p1", "10.0.0.1", "http", 9090), ingress])
    result = translator.translate(gone)
    assert result == translate(gone)
    assert [d.field for d in result.diagnostics] == ["spec.rules[0].http.paths[0].backend.service.name"]

    # the Ingress moves to another host: the old virtual host goes away
    elsewhere = Snapshot.of([web, pod, _ingress("site", "b.example.com", "/", "web")])
    result = translator.translate(elsewhere)
    assert result == translate(elsewhere)
    assert [v.host for v in result.routing.virtual_hosts] == ["b.example.com"]

    # and is deleted
    empty = Snapshot.of([web, pod])
    assert translator.translate(empty).routing.virtual_hosts == ()


def test_translation_does_not_mutate_its_input() -> None:
    objects: list[KubeObject] = [
        _service("web", ServicePort(port=80)),
        _ingress("a", "a.example.com", "/", "web"),
    ]
    snapshot = Snapshot.of(objects)
    before = msgspec.to_builtins(list(snapshot.ingresses.values()) + list(snapshot.services.values()))
    translate(snapshot)
    assert msgspec.to_builtins(list(snapshot.ingresses.values()) + list(snapshot.services.values())) == before
