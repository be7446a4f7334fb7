"""Golden tests: IR (YAML) -> nftables ruleset and haproxy.cfg, byte for byte.

Each ``<case>.in.yaml`` holds ``routing`` (a RoutingTable), ``endpoints`` (an EndpointTable) and
optional ``nftables`` / ``haproxy`` renderer options. Run pytest with ``--update-golden`` to rewrite
``<case>.nft`` and ``<case>.haproxy.cfg`` after an intended change, then review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from kubegate.ir.model import EndpointTable, RoutingTable
from kubegate.planes.render import HAProxyOptions, NftOptions, render_haproxy, render_nftables

HERE = Path(__file__).parent
CASES = sorted(p.name.removesuffix(".in.yaml") for p in HERE.glob("*.in.yaml"))


def load_case(name: str) -> tuple[RoutingTable, EndpointTable, NftOptions, HAProxyOptions]:
    data: dict[str, Any] = yaml.safe_load((HERE / f"{name}.in.yaml").read_text())
    return (
        msgspec.convert(data.get("routing", {}), RoutingTable),
        msgspec.convert(data.get("endpoints", {}), EndpointTable),
        msgspec.convert(data.get("nftables", {}), NftOptions),
        msgspec.convert(data.get("haproxy", {}), HAProxyOptions),
    )


def render_case(name: str) -> dict[str, str]:
    routing, endpoints, nft_options, haproxy_options = load_case(name)
    return {
        f"{name}.nft": render_nftables(routing, endpoints, nft_options),
        f"{name}.haproxy.cfg": render_haproxy(routing, haproxy_options),
    }


def test_cases_exist() -> None:
    assert len(CASES) >= 4


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    update = bool(request.config.getoption("--update-golden", default=False))
    for filename, text in render_case(case).items():
        path = HERE / filename
        if update:
            path.write_text(text)
            continue
        assert path.exists(), f"{path} is missing: run pytest with --update-golden"
        assert text == path.read_text(), f"{filename} differs from the rendering; --update-golden to accept"


def _needs(binary: str, root: bool) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} is not installed (Debian package {'nftables' if binary == 'nft' else binary})")
    if root and os.geteuid() != 0:
        pytest.skip(f"{binary} -c talks to the kernel over netlink and needs root")
    return found


@pytest.mark.parametrize("case", CASES)
def test_golden_nft_is_accepted_by_nft(case: str, tmp_path: Path) -> None:
    nft = _needs("nft", root=True)
    path = tmp_path / f"{case}.nft"
    path.write_text(render_case(case)[f"{case}.nft"])
    result = subprocess.run(
        [nft, "-c", "-f", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", CASES)
def test_golden_haproxy_is_accepted_by_haproxy(case: str, tmp_path: Path) -> None:
    haproxy = _needs("haproxy", root=False)
    path = tmp_path / f"{case}.haproxy.cfg"
    path.write_text(render_case(case)[f"{case}.haproxy.cfg"])
    result = subprocess.run(
        [haproxy, "-c", "-f", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
