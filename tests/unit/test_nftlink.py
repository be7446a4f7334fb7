"""nftlink: the table handle asked over netlink, and the parsing of the kernel's answers."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from collections.abc import Iterator

import pytest

from kubegate.planes.render import nftlink
from tests.netns.topology import scratch_namespace


def _message(kind: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def _attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-(4 + len(payload)) % 4)


NEWTABLE = (nftlink.NFNL_SUBSYS_NFTABLES << 8) | nftlink.NFT_MSG_NEWTABLE


def test_handle_is_read_from_the_newtable_reply() -> None:
    body = b"\x01\x00\x00\x00" + _attr(1, b"kubegate\0") + _attr(4, struct.pack(">Q", 4242))
    assert nftlink.parse_handle(_message(NEWTABLE, 7, body), 7) == 4242


def test_enoent_means_no_table_and_other_errors_are_raised() -> None:
    assert nftlink.parse_handle(_message(2, 1, struct.pack("=i", -errno.ENOENT) + b"\0" * 16), 1) is None
    with pytest.raises(nftlink.NetlinkError, match="Operation not permitted"):
        nftlink.parse_handle(_message(2, 1, struct.pack("=i", -errno.EPERM) + b"\0" * 16), 1)


def test_replies_to_other_requests_and_garbage_are_not_taken_for_an_answer() -> None:
    other = _message(NEWTABLE, 9, b"\x01\x00\x00\x00" + _attr(4, struct.pack(">Q", 1)))
    with pytest.raises(nftlink.NetlinkError, match="no reply"):
        nftlink.parse_handle(other, 1)
    with pytest.raises(nftlink.NetlinkError, match="without the value"):
        nftlink.parse_handle(_message(NEWTABLE, 1, b"\x01\x00\x00\x00" + _attr(1, b"x\0")), 1)
    with pytest.raises(nftlink.NetlinkError):
        nftlink.parse_handle(b"\x00\x01", 1)


def test_generation_is_read_from_the_newgen_reply() -> None:
    kind = (nftlink.NFNL_SUBSYS_NFTABLES << 8) | nftlink.NFT_MSG_NEWGEN
    body = b"\x00\x00\x00\x00" + _attr(nftlink.NFTA_GEN_ID, struct.pack(">I", 77))
    assert nftlink.parse_generation(_message(kind, 3, body), 3) == 77


def test_unknown_family_is_named() -> None:
    with pytest.raises(nftlink.NetlinkError, match="unknown nftables family 'arp6'"):
        nftlink.table_handle("arp6", "t")


@pytest.fixture
def namespace() -> Iterator[str]:
    with scratch_namespace() as name:
        yield name


@pytest.mark.root
def test_handle_matches_nft_and_changes_when_the_table_is_recreated(namespace: str) -> None:
    def nft(*args: str) -> str:
        argv = ["ip", "netns", "exec", namespace, "nft", *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout

    assert nftlink.table_handle("inet", "kg", namespace) is None
    before = nftlink.generation(namespace)
    assert nftlink.generation(namespace) == before  # nothing committed in between
    nft("add", "table", "inet", "kg")
    assert nftlink.generation(namespace) != before
    first = nftlink.table_handle("inet", "kg", namespace)
    assert first is not None and f'"handle": {first}' in nft("-j", "list", "tables")
    assert nftlink.table_handle("ip", "kg", namespace) is None  # other family
    nft("delete", "table", "inet", "kg")
    nft("add", "table", "inet", "kg")
    assert nftlink.table_handle("inet", "kg", namespace) not in (None, first)


def test_unknown_namespace_is_an_error_not_a_traceback() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(OSError, match="kg-no-such-ns"):
        nftlink.table_handle("inet", "t", "kg-no-such-ns")
