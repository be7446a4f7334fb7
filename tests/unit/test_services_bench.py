"""bench/services.py: its incremental-update diff is right, and --quick runs to the end (root only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bench.services import incremental_script, missing_requirements, one_endpoint_changed, scale_ir

from kubegate.planes.render import NftOptions, render_nftables

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dispatch", ["inline", "rules", "vmap"])
def test_incremental_script_rewrites_only_what_one_endpoint_change_touches(dispatch: str) -> None:
    routing, endpoints = scale_ir(20, 3)
    options = NftOptions(table="t", dispatch=dispatch)  # type: ignore[arg-type]
    old = render_nftables(routing, endpoints, options)
    new = render_nftables(routing, one_endpoint_changed(endpoints), options)
    script = incremental_script(old, new, "inet", "t")
    assert script is not None
    assert "10.250.0.1" in script  # the new endpoint goes in
    removed = endpoints.clusters["c0"][0].ip
    if dispatch == "inline":
        # the Service chain is rewritten and the hairpin set swaps the endpoint's element
        assert f"delete element inet t hairpin-endpoints {{ {removed} . {removed} }}" in script
        assert "add element inet t hairpin-endpoints { 10.250.0.1 . 10.250.0.1 }" in script
    else:
        # the endpoint's own chain goes away (after the Service chain stops referring to it)
        deletes = [line for line in script.splitlines() if line.startswith("delete chain")]
        assert len(deletes) == 1 and removed in deletes[0]
        assert script.index("flush chain") < script.index("delete chain")
    # nothing about the other 19 Services
    assert "svc00001" not in script and "svc00019" not in script


def test_incremental_script_handles_a_removed_service_by_map_element_deltas() -> None:
    routing, endpoints = scale_ir(3, 2)
    smaller, _ = scale_ir(2, 2)
    options = NftOptions(table="t", dispatch="inline")
    old = render_nftables(routing, endpoints, options)
    new = render_nftables(smaller, endpoints, options)
    script = incremental_script(old, new, "inet", "t")
    assert script is not None
    assert "delete element inet t service-ips" in script


@pytest.mark.root
@pytest.mark.slow
def test_quick_bench_completes_and_reports_every_figure() -> None:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "services.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout[done.stdout.index("measure") :]
    for dispatch in ("map", "inline", "rules"):
        for step in (
            "render",
            "validate (nft -c)",
            "first load (apply)",
            "render + apply",
            "whole text by one",
        ):
            assert f"500 Services x 10, {dispatch}: {step}" in table
        # the first load went the staged way: skeleton, elements over netlink, base chains
        first_load = next(line for line in table.splitlines() if f"{dispatch}: first load" in line)
        assert "skeleton" in first_load and "elements" in first_load and "base" in first_load, first_load
    assert "map: render + apply, no endpoint on a named node" in table
    assert "machine speed" in table
    # the incremental transaction loaded and took effect in every mode
    assert table.count("incremental nft -f") == 4 and "did not take effect" not in table, table
    assert "kernel rules (Gbit/s)" in table and "haproxy tcp" in table
