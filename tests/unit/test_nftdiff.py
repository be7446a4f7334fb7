"""nftdiff.incremental: the script rewrites only what changed, in an order the kernel accepts."""

from __future__ import annotations

import msgspec
import pytest
from bench.services import one_endpoint_changed, scale_ir

from kubegate.ir.model import RoutingTable
from kubegate.planes.render import NftOptions, render_nftables
from kubegate.planes.render.nftdiff import incremental


def _options(dispatch: str) -> NftOptions:
    return NftOptions(table="t", dispatch=dispatch)  # type: ignore[arg-type]


@pytest.mark.parametrize("dispatch", ["inline", "rules", "vmap"])
def test_one_endpoint_change_touches_only_that_service(dispatch: str) -> None:
    routing, endpoints = scale_ir(20, 3)
    old = render_nftables(routing, endpoints, _options(dispatch))
    new = render_nftables(routing, one_endpoint_changed(endpoints), _options(dispatch))
    script = incremental(old, new, "inet", "t")
    assert script is not None and "10.250.0.1" in script
    assert "svc00001" not in script and "svc00019" not in script
    if dispatch != "inline":
        assert script.index("flush chain") < script.index("delete chain")


@pytest.mark.parametrize("dispatch", ["inline", "rules", "vmap"])
def test_service_added_adds_chain_before_the_map_element_naming_it(dispatch: str) -> None:
    routing, endpoints = scale_ir(3, 2)
    smaller = RoutingTable(services=routing.services[:2])
    old = render_nftables(smaller, endpoints, _options(dispatch))
    new = render_nftables(routing, endpoints, _options(dispatch))
    script = incremental(old, new, "inet", "t")
    assert script is not None
    lines = script.splitlines()
    chain = next(i for i, line in enumerate(lines) if line.startswith("add chain") and "svc00002" in line)
    element = next(i for i, line in enumerate(lines) if "add element inet t service-ips" in line)
    assert chain < element
    back = incremental(new, old, "inet", "t")
    assert back is not None
    deleting = [i for i, line in enumerate(back.splitlines()) if line.startswith("delete chain")]
    stale = [i for i, line in enumerate(back.splitlines()) if line.startswith("delete element")]
    assert deleting and stale and max(stale) < min(deleting)


def test_same_ruleset_gives_an_empty_script() -> None:
    routing, endpoints = scale_ir(3, 2)
    ruleset = render_nftables(routing, endpoints, _options("vmap"))
    assert incremental(ruleset, ruleset, "inet", "t") == ""


def test_declines_base_chain_changes_and_foreign_input() -> None:
    routing, endpoints = scale_ir(3, 2)
    ruleset = render_nftables(routing, endpoints, _options("inline"))
    assert incremental(ruleset, ruleset.replace("policy accept", "policy drop", 1), "inet", "t") is None
    assert incremental(ruleset, ruleset, "inet", "other") is None
    assert incremental("not nft at all", ruleset, "inet", "t") is None


def test_affinity_toggle_adds_its_sets() -> None:
    routing, endpoints = scale_ir(1, 2)
    service = routing.services[0]
    sticky = msgspec.structs.replace(service, session_affinity="ClientIP")
    old = render_nftables(routing, endpoints, _options("vmap"))
    new = render_nftables(RoutingTable(services=(sticky,)), endpoints, _options("vmap"))
    script = incremental(old, new, "inet", "t")
    assert script is not None and "add set inet t aff-" in script
    back = incremental(new, old, "inet", "t")
    assert back is not None and "delete set inet t aff-" in back
