"""NftRenderer: a repeated render reuses every unchanged Service and gives render_nftables' exact text."""

from __future__ import annotations

import pytest
from bench.services import one_endpoint_changed, scale_ir

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
