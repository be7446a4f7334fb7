"""The same objects in any order give an equal Translation, from scratch or from a warm Translator."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from kubegate.ir.dump import dump_translation
from kubegate.ir.validate import problems
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
from kubegate.objects.meta import ObjectMeta
from kubegate.objects.snapshot import Snapshot
from kubegate.translate import Translator, translate
from kubegate.translate.context import Options
from tests.golden.harness import case_paths, load_case


@cache
def _cases() -> tuple[tuple[tuple[KubeObject, ...], Options], ...]:
    loaded = []
    for path in case_paths():
        objects, options = load_case(path)
        loaded.append((tuple(objects), options))
    return tuple(loaded)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_golden_inputs_in_any_order_translate_equal(data: st.DataObject) -> None:
    objects, options = data.draw(st.sampled_from(_cases()))
    shuffled = data.draw(st.permutations(objects))
    assert translate(Snapshot.of(shuffled), options) == translate(Snapshot.of(objects), options)


_hosts = st.sampled_from(["", "a.example.com", "*.example.com", "b.example.com"])
_paths = st.sampled_from(["/", "/a", "/a/", "/a/b", "/ab"])
_types = st.sampled_from(["Exact", "Prefix", "ImplementationSpecific"])
_services = st.sampled_from(["s1", "s2", "gone"])
_stamps = st.sampled_from(["", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"])


@st.composite
def _ingress(draw: st.DrawFn, index: int) -> Ingress:
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        paths = tuple(
            HTTPIngressPath(
                path=draw(_paths),
                path_type=draw(_types),
                backend=IngressBackend(
                    service=IngressServiceBackend(name=draw(_services), port=ServiceBackendPort(number=80))
                ),
            )
            for _ in range(draw(st.integers(1, 3)))
        )
        rules.append(IngressRule(host=draw(_hosts), http=HTTPIngressRuleValue(paths=paths)))
    default = None
    if not rules or draw(st.booleans()):
        default = IngressBackend(
            service=IngressServiceBackend(name=draw(_services), port=ServiceBackendPort(number=80))
        )
    return Ingress(
        metadata=ObjectMeta(name=f"ing-{index}", creation_timestamp=draw(_stamps)),
        spec=IngressSpec(rules=tuple(rules), default_backend=default),
    )


@st.composite
def _world(draw: st.DrawFn) -> list[KubeObject]:
    objects: list[KubeObject] = [
        Service(metadata=ObjectMeta(name=name), spec=ServiceSpec(ports=(ServicePort(port=80),)))
        for name in ("s1", "s2")
    ]
    objects.extend(draw(_ingress(index)) for index in range(draw(st.integers(1, 5))))
    return objects


@settings(max_examples=80, deadline=None)
@given(objects=_world(), data=st.data())
def test_conflicting_ingresses_in_any_order_translate_equal(
    objects: list[KubeObject], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(objects))
    first = translate(Snapshot.of(objects))
    assert problems(first.routing, first.endpoints) == []
    assert translate(Snapshot.of(shuffled)) == first
    assert dump_translation(translate(Snapshot.of(shuffled))) == dump_translation(first)


@settings(max_examples=60, deadline=None)
@given(before=_world(), after=_world())
def test_warm_translator_equals_fresh_translation(before: list[KubeObject], after: list[KubeObject]) -> None:
    translator = Translator()
    translator.translate(Snapshot.of(before))
    # keep the unchanged objects identical, as a store does, and replace the rest
    kept = {(type(o).__name__, o.metadata.name): o for o in before}
    merged = [
        kept.get((type(o).__name__, o.metadata.name), o)
        if o == kept.get((type(o).__name__, o.metadata.name))
        else o
        for o in after
    ]
    assert translator.translate(Snapshot.of(merged)) == translate(Snapshot.of(merged))


_labels = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]), max_size=2)


@st.composite
def _pods(draw: st.DrawFn) -> dict[str, Pod]:
    pods = {}
    for index in draw(st.sets(st.integers(0, 6), max_size=6)):
        pods[f"p{index}"] = Pod(
            metadata=ObjectMeta(
                name=f"p{index}", namespace=draw(st.sampled_from(["default", "other"])), labels=draw(_labels)
            ),
            spec=PodSpec(
                containers=(
                    Container(
                        name="c",
                        ports=(
                            ContainerPort(name="web", container_port=draw(st.sampled_from([8080, 9090]))),
                        ),
                    ),
                )
            ),
            status=PodStatus(
                phase="Running",
                pod_ip=f"10.0.0.{index}",
                conditions=(PodCondition(type="Ready", status=draw(st.sampled_from(["True", "False"]))),),
            ),
        )
    return pods


@settings(max_examples=80, deadline=None)
@given(before=_pods(), after=_pods(), keep=st.sets(st.integers(0, 6)))
def test_warm_translator_follows_pod_changes(
    before: dict[str, Pod], after: dict[str, Pod], keep: set[int]
) -> None:
    services: list[KubeObject] = [
        Service(
            metadata=ObjectMeta(name=name),
            spec=ServiceSpec(
                selector=selector, ports=(ServicePort(name="http", port=80, target_port="web"),)
            ),
        )
        for name, selector in (
            ("app-a", {"app": "a"}),
            ("tier-b", {"tier": "b"}),
            ("both", {"app": "a", "tier": "b"}),
        )
    ]
    # some pods stay the very same objects, the rest come and go or change
    merged = dict(after)
    for index in keep:
        if f"p{index}" in before:
            merged[f"p{index}"] = before[f"p{index}"]
    translator = Translator()
    translator.translate(Snapshot.of([*services, *before.values()]))
    second = Snapshot.of([*services, *merged.values()])
    assert translator.translate(second) == translate(second)
