"""NftDriver with NftRenderer renderings, in a throwaway namespace: small transactions, a refused load
that keeps the table, and a full replace when the table was edited behind its back (root only)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from bench.services import change_sequence, one_endpoint_changed, scale_ir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubegate.ir.model import Endpoint, EndpointTable, L4Port, L4Service, RoutingTable
from kubegate.planes.render import NftOptions, nftelements, nftlink
from kubegate.planes.render.driver import ApplyError, NftDriver
from kubegate.planes.render.nftables import NftRenderer, RenderedNftables
from kubegate.planes.render.nftdiff import parse_table
from tests.netns.topology import Topology, require_netns, scratch_namespace
from tests.unit.test_render_incremental import _states as states_strategy

pytestmark = pytest.mark.root


@pytest.fixture
def namespace() -> Iterator[str]:
    with scratch_namespace() as name:
        yield name


@pytest.fixture
def reference(namespace: str) -> Iterator[str]:
    """A second namespace, where a fresh driver loads what the one under test should have reached."""
    with scratch_namespace(f"{namespace}r") as name:
        yield name


def _fresh_load(netns: str, ruleset: str | RenderedNftables) -> NftDriver:
    """A new driver in ``netns`` that loaded ``ruleset`` from nothing."""
    driver = NftDriver(netns=netns)
    driver.remove()
    driver.apply(ruleset)
    return driver


def _nft(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", namespace, "nft", *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)


def _variants() -> list[tuple[RoutingTable, EndpointTable]]:
    return change_sequence(6, 3, kept=4)[1:]  # the first load is each test's own


def _normalised(listing: str) -> dict[tuple[str, str], tuple[tuple[str, ...], frozenset[str]]]:
    # nft lists objects in creation order and set elements in any order: compare by name and content
    return {key: (obj.body, obj.items) for key, obj in parse_table(listing, "inet", "kubegate").items()}


@pytest.mark.parametrize("dispatch", ["inline", "rules", "vmap", "map"])
def test_renderings_apply_as_small_transactions_that_leave_what_a_full_load_would(
    namespace: str, reference: str, dispatch: str
) -> None:
    routing, endpoints = scale_ir(6, 3)
    options = NftOptions(dispatch=dispatch)  # type: ignore[arg-type]
    renderer = NftRenderer(options)
    driver = NftDriver(netns=namespace)
    assert driver.apply(renderer.render(routing, endpoints)) and not driver.last_incremental
    for variant in _variants():
        assert driver.apply(renderer.render(*variant))
        assert driver.last_incremental, driver.last_script
        fresh = _fresh_load(reference, NftRenderer(options).render(*variant))
        assert _normalised(driver.listing()) == _normalised(fresh.listing())
    assert not driver.apply(renderer.render(routing, endpoints))  # nothing differs: nothing sent


def test_a_refused_ruleset_leaves_the_table_and_names_nfts_complaint(namespace: str) -> None:
    routing, endpoints = scale_ir(2, 2)
    driver = NftDriver(netns=namespace)
    driver.apply(NftRenderer(NftOptions()).render(routing, endpoints))
    before = driver.listing()
    with pytest.raises(ApplyError, match=r"nft rejected the ruleset: .*syntax error"):
        driver.apply("table inet kubegate { chain broken { this is not nft; } }")
    assert driver.listing() == before


def test_an_edited_table_makes_the_small_transaction_fail_and_the_full_load_repair_it(namespace: str) -> None:
    routing, endpoints = scale_ir(3, 2)
    renderer = NftRenderer(NftOptions(dispatch="inline"))
    driver = NftDriver(netns=namespace)
    driver.apply(renderer.render(routing, endpoints))
    chain = next(
        o.name
        for o in renderer.render(routing, endpoints).groups["bench/svc00001"].objects
        if o.name.startswith("svc-")
    )
    # someone removes a chain the next full render has (its map element first, or nft refuses)
    assert _nft(namespace, "flush", "map", "inet", "kubegate", "service-ips").returncode == 0
    assert _nft(namespace, "delete", "chain", "inet", "kubegate", chain).returncode == 0
    # one endpoint of svc00001 changes: the diff flushes the chain that is gone, so nft refuses it
    changed = dict(endpoints.clusters)
    changed["c1"] = (Endpoint(ip="10.250.0.1", port=8080), *changed["c1"][1:])
    assert driver.apply(renderer.render(routing, EndpointTable(clusters=changed)))
    assert not driver.last_incremental  # the diff was refused; the whole table replaced
    listing = driver.listing()
    assert chain in listing and "10.250.0.1" in listing and listing.count(": goto svc-") == 3


def test_map_dispatch_carries_clusterip_nodeport_and_hairpin_and_changes_by_elements_only() -> None:
    require_netns()
    topology = Topology()
    try:
        node, pods = topology.node_with_pods(["10.244.0.2", "10.244.0.3"])
        web = L4Service(
            name="default/web",
            type="NodePort",
            cluster_ips=("10.96.0.10",),
            ports=(L4Port(name="http", protocol="TCP", port=80, cluster="web", node_port=30080),),
        )
        sticky = L4Service(
            name="default/sticky",
            type="ClusterIP",
            cluster_ips=("10.96.0.11",),
            session_affinity="ClientIP",
            ports=(L4Port(name="http", protocol="TCP", port=80, cluster="web"),),
        )
        routing = RoutingTable(services=(web, sticky))
        both = tuple(Endpoint(ip=ip, port=8080) for ip in ("10.244.0.2", "10.244.0.3"))
        renderer = NftRenderer(NftOptions(dispatch="map"))
        driver = NftDriver(netns=node)
        driver.apply(renderer.render(routing, EndpointTable(clusters={"web": both})))

        def answers(netns: str, url: str, count: int = 30) -> set[str | None]:
            return {topology.answer(netns, url) for _ in range(count)}

        assert answers(node, "http://10.96.0.10/") == {"pod-0", "pod-1"}
        assert answers(pods[0], "http://10.96.0.10/") == {"pod-0", "pod-1"}  # hairpin included
        assert answers(pods[1], "http://10.244.0.1:30080/") == {"pod-0", "pod-1"}  # nodePort
        # the affinity Service (its own chains beside the shared ones) keeps a client on one pod
        assert len(answers(pods[0], "http://10.96.0.11/", 10)) == 1

        driver.apply(renderer.render(routing, EndpointTable(clusters={"web": both[:1]})))
        assert driver.last_incremental
        # the endpoint count changed (2 -> 1): the shared chains for one endpoint appear, those for two go
        script = driver.last_script
        assert "add chain inet kubegate pick-1" in script and "delete chain inet kubegate pick-2" in script
        assert answers(node, "http://10.96.0.10/", 15) == {"pod-0"}
        assert answers(pods[1], "http://10.244.0.1:30080/", 15) == {"pod-0"}
        moved = (Endpoint(ip="10.244.0.3", port=8080),)
        driver.apply(renderer.render(routing, EndpointTable(clusters={"web": moved})))
        # same count, other pod: only elements of endpoints-1 and nodeport-endpoints-1 change
        web_lines = [
            line for line in driver.last_script.splitlines() if "aff-" not in line and "sticky" not in line
        ]
        assert web_lines and all(" element " in line for line in web_lines), web_lines
        assert answers(node, "http://10.96.0.10/", 15) == {"pod-1"}
    finally:
        topology.teardown()


class CountingDriver(NftDriver):
    listings = 0

    def listing(self) -> str:
        self.listings += 1
        return super().listing()


def test_periodic_check_lists_only_when_something_was_committed_and_repairs_an_edit(namespace: str) -> None:
    routing, endpoints = scale_ir(3, 2)
    driver = CountingDriver(netns=namespace)
    driver.apply(NftRenderer(NftOptions(dispatch="map")).render(routing, endpoints))
    assert not driver.reapply_if_drifted()  # takes the baseline
    assert driver.listings == 1
    assert not driver.reapply_if_drifted() and not driver.reapply_if_drifted()
    assert driver.listings == 1  # nothing committed since: nothing listed
    # someone edits a rule inside our table: the same handle, another generation
    assert _nft(namespace, "add", "rule", "inet", "kubegate", "services", "drop").returncode == 0
    assert not driver.drifted()
    assert driver.reapply_if_drifted()
    assert "drop" not in driver.listing().split("chain services {")[1].split("}")[0]


@pytest.mark.parametrize("dispatch", ["inline", "vmap", "map"])
def test_random_sequences_of_renderings_leave_what_a_full_load_would(
    namespace: str, reference: str, dispatch: str
) -> None:
    options = NftOptions(dispatch=dispatch, node_name="node-a")  # type: ignore[arg-type]

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(states=st.lists(states_strategy(), min_size=2, max_size=4))
    def check(states: list[tuple[RoutingTable, EndpointTable]]) -> None:
        renderer = NftRenderer(options)
        driver = NftDriver(netns=namespace)
        driver.remove()
        driver.apply(renderer.render(*states[0]))
        for state in states[1:]:
            rendering = renderer.render(*state)
            driver.apply(rendering)
            fresh = _fresh_load(reference, rendering.text())
            assert _normalised(driver.listing()) == _normalised(fresh.listing()), driver.last_script
        # every step went by the small transaction: none was refused and replaced in full
        assert driver.incremental_applies == driver.applies - 1

    check()


def test_a_rendering_skipped_between_two_applies_makes_the_next_one_a_full_load(namespace: str) -> None:
    routing, endpoints = scale_ir(4, 2)
    renderer = NftRenderer(NftOptions(dispatch="map"))
    driver = NftDriver(netns=namespace)
    driver.apply(renderer.render(routing, endpoints))
    renderer.render(routing, one_endpoint_changed(endpoints))  # rendered, never applied
    smaller = RoutingTable(services=routing.services[:3])
    assert driver.apply(renderer.render(smaller, endpoints))
    assert not driver.last_incremental
    assert driver.listing().count(": goto pick-2") == 3


@pytest.mark.parametrize("dispatch", ["inline", "vmap", "map"])
def test_a_first_load_is_staged_and_leaves_what_nft_loading_the_text_would(
    namespace: str, reference: str, dispatch: str
) -> None:
    options = NftOptions(dispatch=dispatch, node_name="node-a")  # type: ignore[arg-type]

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(state=states_strategy())
    def check(state: tuple[RoutingTable, EndpointTable]) -> None:
        rendering = NftRenderer(options).render(*state)
        staged = _fresh_load(namespace, rendering)
        # skeleton, then the shared elements over netlink, then the base chains
        assert list(staged.last_load_steps) == ["skeleton", "elements", "base"]
        by_text = _fresh_load(reference, rendering.text())
        assert list(by_text.last_load_steps) == ["nft"]
        assert _normalised(staged.listing()) == _normalised(by_text.listing())

    check()


def test_a_table_already_there_is_replaced_by_nft_in_one_transaction(namespace: str) -> None:
    routing, endpoints = scale_ir(4, 2)
    renderer = NftRenderer(NftOptions(dispatch="map"))
    NftDriver(netns=namespace).apply(renderer.render(routing, endpoints))
    # a new agent finds the table its predecessor left: staging would take it out of the packet path
    driver = NftDriver(netns=namespace)
    driver.apply(NftRenderer(NftOptions(dispatch="map")).render(routing, one_endpoint_changed(endpoints)))
    assert list(driver.last_load_steps) == ["nft"]
    assert "10.250.0.1 . 8080" in driver.listing()


def test_a_staged_load_the_kernel_refuses_falls_back_to_nft_and_leaves_nothing_behind(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        # what a kernel without room for the elements would say; the staged table is there by now
        assert "table inet kubegate" in _nft(namespace, "list", "tables").stdout
        raise nftlink.NetlinkError(28, "nftables: the kernel refused elements (message 2): No space left")

    monkeypatch.setattr(nftelements, "load", refuse)
    rendering = NftRenderer(NftOptions(dispatch="map")).render(*scale_ir(3, 2))
    driver = NftDriver(netns=namespace)
    assert driver.apply(rendering)
    assert list(driver.last_load_steps) == ["nft"]
    listing = driver.listing()
    assert "hook prerouting" in listing and "10.96.0.1 . tcp . 80 . 1 : 10.128.0.1 . 8080" in listing
    assert listing.count("table inet kubegate") == 1
