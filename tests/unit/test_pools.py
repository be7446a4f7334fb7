"""Pool configuration: the --pool flag syntax, AddressPool and MetalLB IPAddressPool files, validation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kubegate.pools import PoolError, load_pools, parse_pool, parse_pools, validate_pools
from kubegate.translate.context import Pool


def test_plain_addresses_make_a_numbered_pool() -> None:
    assert parse_pool("192.0.2.0/28") == Pool(name="pool-1", addresses=("192.0.2.0/28",))
    assert parse_pool("192.0.2.0/28|198.51.100.10-198.51.100.20", index=3) == Pool(
        name="pool-3", addresses=("192.0.2.0/28", "198.51.100.10-198.51.100.20")
    )


def test_key_value_syntax() -> None:
    text = (
        "name=public,addresses=192.0.2.0/28|198.51.100.10-198.51.100.20,namespaces=a|b,classes=x,"
        "autoAssign=false,avoidBuggyIPs=true"
    )
    assert parse_pool(text) == Pool(
        name="public",
        addresses=("192.0.2.0/28", "198.51.100.10-198.51.100.20"),
        namespaces=("a", "b"),
        service_classes=("x",),
        auto_assign=False,
        avoid_buggy_ips=True,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("name=x", "addresses is required"),
        ("name=x,addresses=192.0.2.0/28,color=red", "unknown key 'color'"),
        ("name=x,addresses=192.0.2.0/28,autoAssign=maybe", "autoAssign: expected true or false"),
        ("name=x,name=y,addresses=192.0.2.0/28", "name given twice"),
        ("name=x,addresses=192.0.2.1/28", "has host bits set; did you mean 192.0.2.0/28?"),
        ("192.0.2.20-192.0.2.10", "the range starts after it ends"),
        ("192.0.2.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ("name=x,addresses=300.0.0.1", "addresses[0]"),
        ("name=x,addresses=192.0.2.0/28,nonsense", "'nonsense' is not KEY=VALUE"),
    ],
)
def test_bad_flags_are_explained(text: str, message: str) -> None:
    with pytest.raises(PoolError) as raised:
        parse_pool(text)
    assert message in str(raised.value)
    assert str(raised.value).startswith("--pool")


def test_parse_pools_numbers_unnamed_pools_and_rejects_overlaps() -> None:
    pools = parse_pools(["192.0.2.0/30", "name=b,addresses=192.0.2.8/30", "2001:db8::/64"])
    assert [pool.name for pool in pools] == ["pool-1", "b", "pool-3"]
    with pytest.raises(PoolError, match=r"pools pool-1 and pool-2 overlap: 192\.0\.2\.0/24 and 192\.0\.2\.7"):
        parse_pools(["192.0.2.0/24", "192.0.2.7-192.0.2.9"])


def test_overlap_within_one_pool_and_duplicate_names_are_rejected() -> None:
    with pytest.raises(PoolError, match="pool p overlap"):
        validate_pools([Pool(name="p", addresses=("192.0.2.0/30", "192.0.2.3"))])
    with pytest.raises(PoolError, match="pool name 'p' is used twice"):
        validate_pools(
            [Pool(name="p", addresses=("192.0.2.0/30",)), Pool(name="p", addresses=("192.0.2.8/30",))]
        )
    # the same integers in different families do not overlap
    validate_pools([Pool(name="v4", addresses=("0.0.0.0/30",)), Pool(name="v6", addresses=("::/126",))])


def test_huge_ipv6_pools_validate_instantly() -> None:
    started = time.perf_counter()
    validate_pools(
        [Pool(name="a", addresses=("2001:db8::/32",)), Pool(name="b", addresses=("2001:db9::/64",))]
    )
    assert time.perf_counter() - started < 0.1


KUBEGATE_FILE = """\
apiVersion: kubegate.io/v1alpha1
kind: AddressPool
metadata:
  name: public
spec:
  addresses: [192.0.2.0/28, 198.51.100.10-198.51.100.20]
  autoAssign: false
  namespaces: [a, b]
  loadBalancerClasses: [x]
---
apiVersion: kubegate.io/v1alpha1
kind: AddressPool
metadata: {name: v6}
spec:
  addresses: ["2001:db8::/64"]
"""

METALLB_FILE = """\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: cheap
  namespace: metallb-system
spec:
  addresses:
  - 192.168.10.0/24
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: preferred
  namespace: metallb-system
spec:
  addresses:
  - 192.168.20.1 - 192.168.20.9
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 5
    namespaces: [prod]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: l2
  namespace: metallb-system
"""


def test_kubegate_address_pools(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(KUBEGATE_FILE)
    assert load_pools(path) == (
        Pool(
            name="public",
            addresses=("192.0.2.0/28", "198.51.100.10-198.51.100.20"),
            namespaces=("a", "b"),
            service_classes=("x",),
            auto_assign=False,
        ),
        Pool(name="v6", addresses=("2001:db8::/64",)),
    )


def test_metallb_pools_are_read_in_priority_order_and_other_kinds_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metallb.yaml"
    path.write_text(METALLB_FILE)
    assert load_pools(path) == (
        Pool(
            name="preferred",
            addresses=("192.168.20.1 - 192.168.20.9",),
            namespaces=("prod",),
            avoid_buggy_ips=True,
        ),
        Pool(name="cheap", addresses=("192.168.10.0/24",)),
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("kind: Service\napiVersion: v1\n", "document 1: Service (v1) is not a pool"),
        (
            "apiVersion: kubegate.io/v1alpha1\nkind: AddressPool\nmetadata: {}\n"
            "spec: {addresses: [192.0.2.0/30]}\n",
            "document 1: metadata.name is required",
        ),
        (
            "apiVersion: kubegate.io/v1alpha1\nkind: AddressPool\nmetadata: {name: p}\nspec: {}\n",
            "document 1 pool p: spec.addresses is required",
        ),
        (
            "apiVersion: kubegate.io/v1alpha1\nkind: AddressPool\nmetadata: {name: p}\n"
            "spec: {addresses: [192.0.2.0/30, bogus]}\n",
            "document 1 pool p: spec.addresses[1]: 'bogus' is not an IP address",
        ),
        (
            "apiVersion: kubegate.io/v1alpha1\nkind: AddressPool\nmetadata: {name: p}\n"
            "spec: {addresses: [192.0.2.0/30], autoAssign: 'no'}\n",
            "document 1 pool p: spec.autoAssign must be true or false",
        ),
        (
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: p}\nspec:\n"
            "  addresses: [192.0.2.0/30]\n  serviceAllocation:\n"
            "    namespaceSelectors: [{matchLabels: {a: b}}]\n",
            "spec.serviceAllocation.namespaceSelectors is not supported",
        ),
        (
            "apiVersion: kubegate.io/v1alpha1\nkind: AddressPool\nmetadata: {name: p}\n"
            "spec: {addresses: [192.0.2.0/30], autoassign: false}\n",
            "document 1 pool p: spec.autoassign is not a field of AddressPool",
        ),
        ("- just\n- a list\n", "document 1: expected a mapping, got list"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_name_file_document_pool_and_field(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(document)
    with pytest.raises(PoolError) as raised:
        load_pools(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)


def test_overlapping_pools_in_a_file_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(
        KUBEGATE_FILE + "---\napiVersion: kubegate.io/v1alpha1\nkind: AddressPool\nmetadata: {name: dup}\n"
        "spec: {addresses: ['192.0.2.8-192.0.2.9']}\n"
    )
    with pytest.raises(PoolError, match=r"pools\.yaml: pools public and dup overlap"):
        load_pools(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="cannot read"):
        load_pools(tmp_path / "absent.yaml")
