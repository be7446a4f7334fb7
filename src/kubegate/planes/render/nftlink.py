"""Ask the kernel over netlink, without running nft, for a table's handle and the ruleset generation.

``nft list tables`` (1.0.6) fetches the whole ruleset into its cache before printing the table names: 2-4 s
once a 10,000-Service table is loaded. The drift check only needs the table's handle (new each time the
table is created), which one NFT_MSG_GETTABLE request answers in well under a millisecond; the periodic
check for edits lists the table only when the generation (NFT_MSG_GETGEN) moved since it last looked.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWTABLE = 0
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NFTA_TABLE_NAME = 1
NFTA_TABLE_HANDLE = 4
CLONE_NEWNET = 0x40000000
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}
_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    """The request could not be made or the kernel's answer was not understood."""


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _request(message_kind: int, family: int, attributes: bytes, seq: int) -> bytes:
    # nfgenmsg: family, version 0, resource id 0 (big endian)
    body = struct.pack("=BBH", family, 0, 0) + attributes
    kind = (NFNL_SUBSYS_NFTABLES << 8) | message_kind
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def parse_handle(reply: bytes, seq: int) -> int | None:
    """The handle in a NEWTABLE reply; None when the kernel answered ENOENT (no such table)."""
    return _parse(reply, seq, NFT_MSG_NEWTABLE, NFTA_TABLE_HANDLE, layout=">Q", what="GETTABLE")


def parse_generation(reply: bytes, seq: int) -> int | None:
    """The ruleset generation in a NEWGEN reply."""
    return _parse(reply, seq, NFT_MSG_NEWGEN, NFTA_GEN_ID, layout=">I", what="GETGEN")


def _parse(
    reply: bytes, seq: int, message_kind: int, attribute: int, *, layout: str, what: str
) -> int | None:
    size = struct.calcsize(layout)
    offset = 0
    while offset + _HEADER.size <= len(reply):
        length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(reply, offset)
        if length < _HEADER.size:
            break
        message = reply[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3
        if got_seq != seq:
            continue
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", message)[0]
            if code == errno.ENOENT:
                return None
            raise NetlinkError(code, f"nftables {what}: {os.strerror(code)}")
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | message_kind:
            position = 4  # after nfgenmsg
            while position + _ATTR.size <= len(message):
                attr_length, attr_kind = _ATTR.unpack_from(message, position)
                if attr_length < _ATTR.size:
                    break
                if attr_kind & 0x3FFF == attribute and attr_length >= _ATTR.size + size:
                    return int(struct.unpack_from(layout, message, position + _ATTR.size)[0])
                position += (attr_length + 3) & ~3
            raise NetlinkError(errno.EPROTO, f"nftables {what}: reply without the value asked for")
    raise NetlinkError(errno.EPROTO, f"nftables {what}: no reply to the request")


def open_socket(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    # setns changes only the calling thread; a socket keeps the namespace it was created in, so a
    # short-lived thread enters the namespace, opens the socket and ends
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise NetlinkError(code, f"cannot enter network namespace {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        except BaseException as error:  # handed to the caller's thread below
            result.append(error)

    thread = threading.Thread(target=enter, name=f"netns-{netns}")
    thread.start()
    thread.join(5.0)
    if not result:
        raise NetlinkError(errno.ETIMEDOUT, f"entering network namespace {netns} did not finish")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def table_handle(family: str, table: str, netns: str | None = None, timeout: float = 2.0) -> int | None:
    """The kernel's handle of ``family table`` (in namespace ``netns``), None when there is no such table.

    Raises NetlinkError (an OSError) when netlink cannot be used (no permission, unknown namespace).
    """
    if family not in FAMILIES:
        raise NetlinkError(errno.EINVAL, f"unknown nftables family {family!r}")
    name = _attribute(NFTA_TABLE_NAME, table.encode() + b"\0")
    return _ask(_request(NFT_MSG_GETTABLE, FAMILIES[family], name, 1), parse_handle, netns, timeout)


def generation(netns: str | None = None, timeout: float = 2.0) -> int:
    """The namespace's nftables ruleset generation: it changes with every committed transaction, ours
    or anyone's, so an unchanged generation means no table changed."""
    found = _ask(_request(NFT_MSG_GETGEN, 0, b"", 1), parse_generation, netns, timeout)
    if found is None:
        raise NetlinkError(errno.EPROTO, "nftables GETGEN: no generation in the reply")
    return found


def _ask(
    request: bytes, parse: Callable[[bytes, int], int | None], netns: str | None, timeout: float
) -> int | None:
    try:
        sock = open_socket(netns)
    except OSError as error:
        if isinstance(error, NetlinkError):
            raise
        raise NetlinkError(error.errno or errno.EIO, f"netlink: {error}") from None
    with sock:
        sock.settimeout(timeout)
        try:
            sock.send(request)
            return parse(sock.recv(65536), 1)
        except TimeoutError:
            raise NetlinkError(errno.ETIMEDOUT, "nftables: no answer from the kernel") from None
