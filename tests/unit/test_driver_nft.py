"""NftDriver with NftRenderer renderings, in a throwaway namespace: small transactions, a refused load
that keeps the table, and a full replace when the table was edited behind its back (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from bench.services import one_endpoint_changed, scale_ir

from kubegate.ir.model import Endpoint, EndpointTable
from kubegate.planes.render import NftOptions
from kubegate.planes.render.driver import ApplyError, NftDriver
from kubegate.planes.render.nftables import NftRenderer

pytestmark = pytest.mark.root


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and nft")
    name = f"kgdr{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def _nft(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", namespace, "nft", *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("dispatch", ["inline", "vmap"])
def test_renderings_apply_as_small_transactions_and_equal_a_fresh_load(namespace: str, dispatch: str) -> None:
    routing, endpoints = scale_ir(6, 3)
    renderer = NftRenderer(NftOptions(dispatch=dispatch))  # type: ignore[arg-type]
    driver = NftDriver(netns=namespace)
    assert driver.apply(renderer.render(routing, endpoints))
    assert not driver.last_incremental
    changed = one_endpoint_changed(endpoints)
    assert driver.apply(renderer.render(routing, changed))
    assert driver.last_incremental and "10.250.0.1" in driver.last_script
    assert "svc00003" not in driver.last_script
    assert not driver.apply(renderer.render(routing, changed))  # nothing differs: nothing sent
    listing = driver.listing()
    assert "10.250.0.1" in listing and "10.128.0.0:8080" not in listing
    # the text of the last rendering, loaded on its own, gives the same table
    fresh = NftRenderer(NftOptions(dispatch=dispatch)).render(routing, changed).text()
    assert driver.applied == fresh


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
        for o in renderer.render(routing, endpoints).groups["bench/svc00001"]
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
