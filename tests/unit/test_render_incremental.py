"""NftRenderer: a repeated render reuses every unchanged Service and gives render_nftables' exact text."""

from __future__ import annotations

import pytest
from bench.services import one_endpoint_changed, scale_ir
from hypothesis import given, settings
from hypothesis import strategies as st

from kubegate.ir.model import Endpoint, EndpointTable, L4Port, L4Service, RoutingTable
from kubegate.planes.render import NftOptions, render_nftables
from kubegate.planes.render.nftables import NftRenderer
from kubegate.planes.render.nftdiff import incremental, incremental_structured

DISPATCHES = ["inline", "rules", "vmap", "map"]


def _options(dispatch: str) -> NftOptions:
    return NftOptions(table="t", dispatch=dispatch)  # type: ignore[arg-type]


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_one_endpoint_change_rerenders_one_service_and_matches_a_fresh_render(dispatch: str) -> None:
    routing, endpoints = scale_ir(30, 3)
    renderer = NftRenderer(_options(dispatch))
    first = renderer.render(routing, endpoints)
    assert renderer.rendered == 30
    changed = one_endpoint_changed(endpoints)
    second = renderer.render(routing, changed)
    assert renderer.rendered == 31 and renderer.reused == 29
    assert second.text() == render_nftables(routing, changed, _options(dispatch))
    # unchanged Services keep the very same group, so the diff never looks inside them
    same = [name for name in first.groups if first.groups[name] is second.groups[name]]
    assert len(same) == 29 and "bench/svc00000" not in same


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_structured_diff_sends_what_the_text_diff_sends(dispatch: str) -> None:
    routing, endpoints = scale_ir(10, 3)
    renderer = NftRenderer(_options(dispatch))
    variants = [
        (routing, one_endpoint_changed(endpoints)),
        (RoutingTable(services=routing.services[:7]), endpoints),
        (routing, endpoints),
    ]
    previous = renderer.render(routing, endpoints)
    for variant in variants:
        current = renderer.render(*variant)
        structured = incremental_structured(previous, current)
        text = incremental(previous.text(), current.text(), "inet", "t")
        assert structured is not None and text is not None
        assert sorted(structured.splitlines()) == sorted(text.splitlines())
        assert structured  # every variant changes something
        previous = current


def test_equal_inputs_built_anew_are_still_reused() -> None:
    routing, endpoints = scale_ir(5, 2)
    renderer = NftRenderer(_options("inline"))
    first = renderer.render(routing, endpoints)
    copy = EndpointTable(
        clusters={k: tuple(Endpoint(ip=e.ip, port=e.port) for e in v) for k, v in endpoints.clusters.items()}
    )
    second = renderer.render(routing, copy)
    assert renderer.rendered == 5 and incremental_structured(first, second) == ""


def test_a_removed_service_hands_its_address_to_the_next_claimant() -> None:
    port = L4Port(name="http", protocol="TCP", port=80, cluster="c", node_port=30080)
    first = L4Service(name="a/first", type="NodePort", cluster_ips=("10.96.0.1",), ports=(port,))
    second = L4Service(name="b/second", type="NodePort", cluster_ips=("10.96.0.1",), ports=(port,))
    endpoints = EndpointTable(clusters={"c": (Endpoint(ip="10.244.0.1", port=8080),)})
    renderer = NftRenderer(_options("inline"))
    both = renderer.render(RoutingTable(services=(first, second)), endpoints)
    assert "# b/second: 10.96.0.1 tcp 80 already used by a/first; left out" in both.text()
    assert not any(
        obj.name.startswith("ext-") and "second" in obj.name for obj in both.groups["b/second"].objects
    )
    alone = renderer.render(RoutingTable(services=(second,)), endpoints)
    # the claim result changed, so b/second's group is rebuilt with its ext chain
    assert any(obj.name.startswith("ext-") for obj in alone.groups["b/second"].objects)
    assert alone.text() == render_nftables(RoutingTable(services=(second,)), endpoints, _options("inline"))
    script = incremental_structured(both, alone)
    assert script is not None and "add chain inet t ext-" in script and "goto svc-" in script


_ADDRESSES = ["10.96.0.1", "10.96.0.2", "10.96.0.3", "192.0.2.1", "fd00::1"]
_PODS = ["10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.4", "not-an-ip"]


@st.composite
def _states(draw: st.DrawFn) -> tuple[RoutingTable, EndpointTable]:
    """A few Services that often claim the same address, port or nodePort, with changing endpoints."""
    services = []
    clusters: dict[str, tuple[Endpoint, ...]] = {}
    for name in draw(st.lists(st.sampled_from(["a/one", "b/two", "c/three", "d/four"]), unique=True)):
        ports = tuple(
            L4Port(
                name=f"p{number}",
                protocol=draw(st.sampled_from(["TCP", "UDP"])),
                port=number,
                cluster=f"{name}:{number}",
                node_port=draw(st.sampled_from([None, 30000, 30001])),
            )
            for number in draw(st.lists(st.sampled_from([53, 80, 443]), unique=True, max_size=2))
        )
        services.append(
            L4Service(
                name=name,
                type=draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"])),
                cluster_ips=tuple(draw(st.lists(st.sampled_from(_ADDRESSES), max_size=2, unique=True))),
                external_ips=tuple(draw(st.lists(st.sampled_from(_ADDRESSES), max_size=1))),
                session_affinity=draw(st.sampled_from(["None", "ClientIP"])),
                external_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
                ports=ports,
            )
        )
        for port in ports:
            pods = draw(st.lists(st.sampled_from(_PODS), max_size=3))
            clusters[port.cluster] = tuple(Endpoint(ip=ip, port=8080, node="node-a") for ip in pods)
    return RoutingTable(services=tuple(services)), EndpointTable(clusters=clusters)


@pytest.mark.parametrize("dispatch", DISPATCHES)
@settings(max_examples=40, deadline=None)
@given(states=st.lists(_states(), min_size=2, max_size=5))
def test_any_sequence_renders_as_fresh_and_diffs_as_the_text_does(
    dispatch: str, states: list[tuple[RoutingTable, EndpointTable]]
) -> None:
    options = NftOptions(table="t", dispatch=dispatch, node_name="node-a")  # type: ignore[arg-type]
    renderer = NftRenderer(options)
    previous = renderer.render(*states[0])
    for state in states[1:]:
        current = renderer.render(*state)
        assert current.text() == render_nftables(*state, options)
        structured = incremental_structured(previous, current)
        text = incremental(previous.text(), current.text(), "inet", "t")
        assert structured is not None and text is not None
        assert sorted(structured.splitlines()) == sorted(text.splitlines())
        previous = current


def test_renderings_that_do_not_follow_each_other_are_not_diffed() -> None:
    routing, endpoints = scale_ir(4, 2)
    renderer = NftRenderer(_options("map"))
    first = renderer.render(routing, endpoints)
    renderer.render(routing, one_endpoint_changed(endpoints))  # never applied
    third = renderer.render(routing, endpoints)
    # the elements that changed in between are not in ``third``: only a full load is safe
    assert incremental_structured(first, third) is None
    assert incremental_structured(third, third) == ""
    other = NftRenderer(_options("map")).render(routing, endpoints)
    assert incremental_structured(first, other) is None
