"""Behaviour of the haproxy renderer: which addresses are served and where connections go."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kubegate.ir.model import L4Port, L4Service, RoutingTable
from kubegate.planes.render.haproxy import HAProxyOptions, HAProxyOptionsError, render_haproxy

NODES = (("node-b", "10.0.0.2"), ("node-a", "10.0.0.1"))


def lb(**overrides: object) -> L4Service:
    fields: dict[str, object] = {
        "name": "shop/web",
        "type": "LoadBalancer",
        "cluster_ips": ("10.96.0.10",),
        "load_balancer_ips": ("203.0.113.10",),
        "ports": (L4Port(name="http", protocol="TCP", port=80, cluster="shop/web:80", node_port=30080),),
    }
    fields.update(overrides)
    return L4Service(**fields)  # type: ignore[arg-type]


def render(*services: L4Service, **options: object) -> str:
    opts = HAProxyOptions(**{"node_addresses": NODES, **options})  # type: ignore[arg-type]
    return render_haproxy(RoutingTable(services=services), opts)


def section(text: str, header: str) -> list[str]:
    match = re.search(r"^" + re.escape(header) + r"\n((?:    .*\n)*)", text, re.M)
    assert match, f"no section {header!r}"
    return [line.strip() for line in match.group(1).splitlines()]


def test_global_runs_master_worker_with_runtime_socket() -> None:
    rules = section(render(), "global")
    assert "master-worker" in rules and "daemon" not in rules
    assert "stats socket /run/kubegate/haproxy.sock mode 600 level admin expose-fd listeners" in rules
    assert section(render(), "defaults")[0] == "mode tcp"


def test_frontend_binds_lb_and_external_ips_and_backend_balances_over_nodes() -> None:
    text = render(lb(external_ips=("198.51.100.7",)), check_inter_ms=1500, check_fall=2, check_rise=4)
    assert section(text, "frontend fe:shop.web:tcp:80") == [
        "bind 198.51.100.7:80",
        "bind 203.0.113.10:80",
        "default_backend be:shop.web:tcp:80",
    ]
    assert section(text, "backend be:shop.web:tcp:80") == [
        "balance roundrobin",
        "default-server check inter 1500ms fall 2 rise 4",
        "server node-a 10.0.0.1:30080 check",
        "server node-b 10.0.0.2:30080 check",
    ]


def test_only_load_balancer_services_are_served() -> None:
    text = render(lb(type="NodePort"), lb(name="shop/int", type="ClusterIP"))
    assert "frontend" not in text and "backend" not in text


def test_udp_ports_are_left_out_with_a_comment() -> None:
    ports = (
        L4Port(name="dns", protocol="UDP", port=53, cluster="shop/web:53/UDP", node_port=30053),
        L4Port(name="http", protocol="TCP", port=80, cluster="shop/web:80", node_port=30080),
    )
    text = render(lb(ports=ports))
    assert "# shop/web port 53/UDP: haproxy proxies only TCP; left out" in text
    assert text.count("\nfrontend ") == 1


def test_pending_load_balancer_and_missing_node_port_are_explained() -> None:
    text = render(
        lb(load_balancer_ips=()),
        lb(name="shop/nonp", ports=(L4Port(name="", protocol="TCP", port=81, cluster="shop/nonp:81"),)),
    )
    assert "# shop/web: no LoadBalancer or external IP yet; not served" in text
    assert "# shop/nonp port 81/TCP: no nodePort to send traffic to; left out" in text
    assert "frontend" not in text


def test_ipv6_addresses_are_bracketed() -> None:
    text = render(lb(load_balancer_ips=("2001:db8::10",)), node_addresses=(("n6", "fd00::6"),))
    assert "bind [2001:db8::10]:80" in text and "server n6 [fd00::6]:30080 check" in text


def test_shared_address_and_port_stays_with_the_first_service() -> None:
    text = render(lb(name="b/second"), lb(name="a/first"))
    assert "# b/second: 203.0.113.10:80 already used by a/first; not bound" in text
    assert "frontend fe:a.first:tcp:80" in text and "fe:b.second" not in text


def test_names_are_sanitised_and_unique() -> None:
    text = render(lb(), node_addresses=(("node a", "10.0.0.1"), ("node_a", "10.0.0.2")))
    servers = [
        line.split()[1] for line in section(text, "backend be:shop.web:tcp:80") if line.startswith("server")
    ]
    assert len(servers) == 2 and len(set(servers)) == 2
    assert all(re.fullmatch(r"[A-Za-z0-9_.:-]+", s) for s in servers)


def test_output_is_deterministic() -> None:
    services = [lb(name=f"ns/s{i}", load_balancer_ips=(f"203.0.113.{i}",)) for i in range(10)]
    assert render(*services) == render(*reversed(services))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"runtime_socket": "relative.sock"}, "runtime_socket"),
        ({"node_addresses": (("n1", "nowhere"),)}, "node_addresses"),
        ({"check_inter_ms": 0}, "check_inter_ms"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], field: str) -> None:
    with pytest.raises(HAProxyOptionsError, match=f"option {field}:"):
        render_haproxy(RoutingTable(), HAProxyOptions(**options))  # type: ignore[arg-type]


@pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (Debian package haproxy)"
)
def test_haproxy_accepts_a_config_with_many_services(tmp_path: Path) -> None:
    services = [
        lb(
            name=f"ns{i % 7}/svc{i}",
            load_balancer_ips=(f"203.0.{i // 250}.{i % 250 + 1}",),
            ports=(
                L4Port(name="http", protocol="TCP", port=80, cluster=f"ns/svc{i}:80", node_port=30000 + i),
                L4Port(name="dns", protocol="UDP", port=53, cluster=f"ns/svc{i}:53/UDP", node_port=31000 + i),
            ),
        )
        for i in range(200)
    ]
    path = tmp_path / "haproxy.cfg"
    path.write_text(render(*services, runtime_socket=str(tmp_path / "admin.sock")))
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
