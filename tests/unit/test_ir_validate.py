"""ir.validate reports tables a plane could not serve consistently."""

from __future__ import annotations

from kubegate.ir.model import Backend, Cluster, EndpointTable, Route, RoutingTable, VirtualHost
from kubegate.ir.validate import problems


def test_consistent_table_has_no_problems() -> None:
    routing = RoutingTable(
        virtual_hosts=(
            VirtualHost(
                host="a",
                routes=(
                    Route(match="Exact", path="/x", backends=(Backend(cluster="ns/s:80"),)),
                    Route(match="Prefix", path="/long", backends=(Backend(cluster="ns/s:80"),)),
                    Route(match="Prefix", path="/", backends=(Backend(cluster="ns/s:80"),)),
                ),
            ),
        ),
        clusters=(Cluster(name="ns/s:80", service="ns/s", port=80),),
    )
    assert problems(routing, EndpointTable(clusters={"ns/s:80": ()})) == []


def test_dangling_references_and_bad_order_are_reported() -> None:
    routing = RoutingTable(
        virtual_hosts=(
            VirtualHost(
                host="b",
                routes=(
                    Route(match="Prefix", path="/", backends=(Backend(cluster="ns/gone:80"),)),
                    Route(match="Exact", path="/x", backends=(Backend(cluster="ns/s:80"),)),
                ),
                tls_certificate="ns/missing",
            ),
            VirtualHost(host="a"),
        ),
        clusters=(Cluster(name="ns/s:80", service="ns/s", port=80),),
    )
    found = problems(routing, EndpointTable())
    assert "virtual hosts are not sorted and unique" in found
    assert any("undefined cluster ns/gone:80" in p for p in found)
    assert any("undefined certificate ns/missing" in p for p in found)
    assert any("Exact /x after a Prefix/Regex route" in p for p in found)
    assert "clusters without an endpoint entry: ns/s:80" in found
