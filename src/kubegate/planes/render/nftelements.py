"""Add set and map elements to existing nftables sets in one netlink transaction, without running nft.

nft 1.0.6 spends about 16 µs of its own CPU on each element of a map such as ``endpoints-10`` (parsing,
evaluating, building the libnftnl objects): 1.6 s for the 100,000 endpoints of 10,000 Services, more than
the kernel needs to insert them. Here an element's nft text (as the renderer writes it) is encoded
straight into its netlink attributes, about 1-2 µs each in Python, and all of them are sent as one
batch (BEGIN, NEWSETELEM messages, END) that the kernel commits whole or not at all.

Only the key and data types the renderer declares are understood (``layout``): IPv4 addresses,
protocols, ports, 32-bit integers (numgen results), verdicts (``goto``/``jump`` a chain) and their
concatenations. A declaration with anything else gives None, and the caller lets nft load those
elements instead.

Byte layout, as nft writes it: every field of a concatenation starts on a 4-byte boundary (nft keeps
each in its own 32-bit register); addresses, protocols and ports are in network order, integers from
numgen in host order.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Sequence

from kubegate.planes.render import nftlink

NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
NFT_JUMP = -3
NFT_GOTO = -4
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# one NFTA_SET_ELEM_LIST_ELEMENTS attribute has a 16-bit length: stay well below it per message
MESSAGE_PAYLOAD = 60_000

_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1}

# the field kinds of a key or data: what `type` and `typeof` declarations name
_TYPE_FIELDS = {"ipv4_addr": "ip", "inet_proto": "proto", "inet_service": "port", "verdict": "verdict"}
_TYPEOF_FIELDS = {
    "ip daddr": "ip",
    "ip saddr": "ip",
    "meta l4proto": "proto",
    "th dport": "port",
    "th sport": "port",
}


class ElementError(ValueError):
    """An element's text does not fit its set's declaration; the message names the set and the element."""


def _fields(text: str, typeof: bool) -> tuple[str, ...] | None:
    kinds = []
    for part in text.split(" . "):
        part = part.strip()
        if typeof:
            kind = _TYPEOF_FIELDS.get(part)
            if kind is None and part.startswith("numgen "):
                kind = "int"
        else:
            kind = _TYPE_FIELDS.get(part)
        if kind is None:
            return None
        kinds.append(kind)
    return tuple(kinds)


def layout(declaration: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The field kinds of the key and the data (empty for a set) of a ``type ...`` or ``typeof ...``
    declaration line; None when it names a type this module cannot encode."""
    if declaration.startswith("typeof "):
        body, typeof = declaration[len("typeof ") :], True
    elif declaration.startswith("type "):
        body, typeof = declaration[len("type ") :], False
    else:
        return None
    key_text, _, data_text = body.partition(" : ")
    key = _fields(key_text, typeof)
    if key is None or "verdict" in key:
        return None
    if not data_text:
        return key, ()
    # a verdict in a typeof map is written as a type (`typeof ip daddr : verdict`)
    data = ("verdict",) if data_text.strip() == "verdict" else _fields(data_text, typeof)
    if data is None or ("verdict" in data and len(data) > 1):
        return None
    return key, data


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _value(kinds: tuple[str, ...], values: list[str], what: str) -> bytes:
    if len(values) != len(kinds):
        raise ElementError(f"{what}: {len(values)} fields where the declaration has {len(kinds)}")
    out = bytearray()
    for kind, text in zip(kinds, values, strict=True):
        text = text.strip()
        try:
            if kind == "ip":
                out += socket.inet_pton(socket.AF_INET, text)
            elif kind == "proto":
                number = _PROTOCOLS[text] if text in _PROTOCOLS else int(text)
                out += struct.pack("=B3x", number)
            elif kind == "port":
                out += struct.pack("!H2x", int(text))
            else:
                out += struct.pack("=I", int(text))
        except (OSError, ValueError, KeyError, struct.error):
            raise ElementError(f"{what}: {text!r} is not a valid {kind}") from None
    return bytes(out)


def _verdict(text: str, what: str) -> bytes:
    word, _, chain = text.strip().partition(" ")
    code = {"goto": NFT_GOTO, "jump": NFT_JUMP}.get(word)
    if code is None or not chain:
        raise ElementError(f"{what}: {text.strip()!r} is not 'goto CHAIN' or 'jump CHAIN'")
    verdict = _attr(NFTA_VERDICT_CODE, struct.pack("!i", code)) + _attr(
        NFTA_VERDICT_CHAIN, chain.encode() + b"\0"
    )
    return _attr(NFTA_DATA_VERDICT | NLA_F_NESTED, verdict)


def encoder(declaration: str, set_name: str, *, fast: bool = True) -> Callable[[str], bytes] | None:
    """A function from an element's text (``10.96.0.1 . tcp . 80 : goto pick-10``) to its NFTA_LIST_ELEM
    attribute for a set declared ``declaration``; None when the declaration is not understood. ``fast``
    takes the unrolled encoder where there is one (the tests compare the two)."""
    found = layout(declaration)
    if found is None:
        return None
    key_kinds, data_kinds = found

    def encode(element: str) -> bytes:
        what = f"set {set_name}, element {element!r}"
        key_text, separator, data_text = element.partition(" : ")
        if bool(separator) != bool(data_kinds):
            raise ElementError(f"{what}: {'no' if data_kinds else 'unexpected'} data after ' : '")
        key = _attr(NFTA_DATA_VALUE, _value(key_kinds, key_text.split(" . "), what))
        body = _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, key)
        if data_kinds == ("verdict",):
            body += _attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, _verdict(data_text, what))
        elif data_kinds:
            data = _attr(NFTA_DATA_VALUE, _value(data_kinds, data_text.split(" . "), what))
            body += _attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, data)
        return _attr(NFTA_LIST_ELEM | NLA_F_NESTED, body)

    return (_fast(key_kinds, data_kinds, set_name) if fast else None) or encode


def _fast(
    key_kinds: tuple[str, ...], data_kinds: tuple[str, ...], set_name: str
) -> Callable[[str], bytes] | None:
    """Hand-unrolled encoders for the two element shapes that come by the hundred thousand (endpoint
    maps and the hairpin set); the general encoder above is the reference for their bytes."""
    inet_pton, af_inet, protocols = socket.inet_pton, socket.AF_INET, _PROTOCOLS
    if key_kinds == ("ip", "proto", "port", "int") and data_kinds == ("ip", "port"):
        # LIST_ELEM(44) { KEY(24) { VALUE(20) ip proto port index }, DATA(16) { VALUE(12) ip port } }
        pack = struct.Struct("=HHHHHH4sB3xH2xIHHHH4sH2x").pack
        head = (44, NFTA_LIST_ELEM | NLA_F_NESTED, 24, NFTA_SET_ELEM_KEY | NLA_F_NESTED, 20, NFTA_DATA_VALUE)
        tail = (16, NFTA_SET_ELEM_DATA | NLA_F_NESTED, 12, NFTA_DATA_VALUE)
        htons = socket.htons

        def endpoint(element: str) -> bytes:
            try:
                key, data = element.split(" : ")
                ip, proto, port, index = key.split(" . ")
                to_ip, to_port = data.split(" . ")
                return pack(
                    *head, inet_pton(af_inet, ip), protocols[proto], htons(int(port)), int(index),
                    *tail, inet_pton(af_inet, to_ip), htons(int(to_port)),
                )  # fmt: skip
            except (ValueError, KeyError, OSError, OverflowError, struct.error):
                raise ElementError(
                    f"set {set_name}, element {element!r}: not 'IP . PROTO . PORT . N : IP . PORT'"
                ) from None

        return endpoint
    if key_kinds == ("proto", "port", "int") and data_kinds == ("ip", "port"):
        pack = struct.Struct("=HHHHHHB3xH2xIHHHH4sH2x").pack
        head = (40, NFTA_LIST_ELEM | NLA_F_NESTED, 20, NFTA_SET_ELEM_KEY | NLA_F_NESTED, 16, NFTA_DATA_VALUE)
        tail = (16, NFTA_SET_ELEM_DATA | NLA_F_NESTED, 12, NFTA_DATA_VALUE)
        htons = socket.htons

        def nodeport_endpoint(element: str) -> bytes:
            try:
                key, data = element.split(" : ")
                proto, port, index = key.split(" . ")
                to_ip, to_port = data.split(" . ")
                return pack(
                    *head, protocols[proto], htons(int(port)), int(index),
                    *tail, inet_pton(af_inet, to_ip), htons(int(to_port)),
                )  # fmt: skip
            except (ValueError, KeyError, OSError, OverflowError, struct.error):
                raise ElementError(
                    f"set {set_name}, element {element!r}: not 'PROTO . PORT . N : IP . PORT'"
                ) from None

        return nodeport_endpoint
    if key_kinds == ("ip", "ip") and not data_kinds:
        pack = struct.Struct("=HHHHHH4s4s").pack
        head = (20, NFTA_LIST_ELEM | NLA_F_NESTED, 16, NFTA_SET_ELEM_KEY | NLA_F_NESTED, 12, NFTA_DATA_VALUE)

        def pair(element: str) -> bytes:
            try:
                first, second = element.split(" . ")
                return pack(*head, inet_pton(af_inet, first), inet_pton(af_inet, second))
            except (ValueError, OSError):
                raise ElementError(f"set {set_name}, element {element!r}: not 'IP . IP'") from None

        return pair
    return None


def _message(kind: int, flags: int, family: int, seq: int, attributes: bytes, *, res_id: int = 0) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attributes
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def batch(family: str, table: str, elements: Iterable[tuple[str, Sequence[bytes]]]) -> tuple[bytes, int]:
    """One transaction adding the encoded elements (per set name) to ``family table``, and the number
    of messages in it that the kernel acknowledges."""
    family_number = nftlink.FAMILIES[family]
    table_attr = _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    kind = (nftlink.NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
    parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, 1, b"", res_id=nftlink.NFNL_SUBSYS_NFTABLES)]
    seq = 1
    for set_name, encoded in elements:
        head = table_attr + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
        start = 0
        while start < len(encoded):
            size, end = 0, start
            while end < len(encoded) and size + len(encoded[end]) <= MESSAGE_PAYLOAD:
                size += len(encoded[end])
                end += 1
            end = max(end, start + 1)
            chunk = b"".join(encoded[start:end])
            nest = _ATTR.pack(_ATTR.size + len(chunk), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED) + chunk
            seq += 1
            parts.append(_message(kind, flags, family_number, seq, head + nest))
            start = end
    seq += 1
    parts.append(
        _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, seq, b"", res_id=nftlink.NFNL_SUBSYS_NFTABLES)
    )
    return b"".join(parts), seq - 2


def send(payload: bytes, acks: int, netns: str | None = None, timeout: float = 30.0) -> None:
    """Send one batch from ``batch`` and wait for every acknowledgement; raises nftlink.NetlinkError with
    the kernel's reason when it refused the transaction (then nothing of it was committed)."""
    with _connect(netns, timeout) as sock:
        _transact(sock, payload, acks)


def load(
    family: str,
    table: str,
    sets: Iterable[tuple[str, Callable[[str], bytes], Sequence[str]]],
    netns: str | None = None,
    per_transaction: int = 25_000,
) -> None:
    """Encode and add the elements of each (set name, encoder, element texts) in transactions of about
    ``per_transaction`` elements. A worker thread hands each transaction to the kernel (which inserts the
    elements while the syscall runs, without the GIL) as this thread encodes the next: on two cores the
    encoding and the kernel's work overlap. Several transactions, so a refusal leaves the earlier ones
    committed: only for a table outside the packet path, which the caller deletes on failure.

    Raises ElementError for an element that does not fit its set, nftlink.NetlinkError when the kernel
    refuses.
    """
    outbox: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=2)
    failures: list[BaseException] = []

    def deliver() -> None:
        try:
            with _connect(netns, 30.0) as sock:
                while (item := outbox.get()) is not None:
                    if not failures:
                        _transact(sock, *item)
        except BaseException as error:  # handed to the encoding thread below
            failures.append(error)
            while outbox.get() is not None:  # let the producer finish without blocking
                pass

    worker = threading.Thread(target=deliver, name="nft-elements", daemon=True)
    worker.start()
    try:
        pending: list[tuple[str, list[bytes]]] = []
        count = 0
        for name, encode, elements in sets:
            for start in range(0, len(elements), per_transaction):
                chunk = [encode(element) for element in elements[start : start + per_transaction]]
                pending.append((name, chunk))
                count += len(chunk)
                if count >= per_transaction:
                    outbox.put(batch(family, table, pending))
                    pending, count = [], 0
                if failures:
                    break
            if failures:
                break
        if pending and not failures:
            outbox.put(batch(family, table, pending))
    finally:
        outbox.put(None)
        worker.join()
    if failures:
        raise failures[0]


def _connect(netns: str | None, timeout: float) -> socket.socket:
    sock = nftlink.open_socket(netns)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    except OSError as error:
        sock.close()
        raise nftlink.NetlinkError(error.errno or errno.EIO, f"netlink: {error}") from None
    return sock


def _transact(sock: socket.socket, payload: bytes, acks: int) -> None:
    try:
        # the whole batch goes in one message: the socket must take it (SO_SNDBUFFORCE needs
        # CAP_NET_ADMIN, as does changing nftables at all)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(payload) + 65536)
        sock.send(payload)
        confirmed = 0
        while confirmed < acks:
            reply = sock.recv(1 << 20)
            offset = 0
            while offset + _HEADER.size <= len(reply):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(reply, offset)
                if length < _HEADER.size:
                    break
                if kind == nftlink.NLMSG_ERROR:
                    code = -struct.unpack_from("=i", reply, offset + _HEADER.size)[0]
                    if code:
                        raise nftlink.NetlinkError(
                            code,
                            f"nftables: the kernel refused elements (message {seq}): {os.strerror(code)}",
                        )
                    confirmed += 1
                offset += (length + 3) & ~3
    except TimeoutError:
        raise nftlink.NetlinkError(errno.ETIMEDOUT, "nftables: no answer from the kernel") from None
    except OSError as error:
        if isinstance(error, nftlink.NetlinkError):
            raise
        raise nftlink.NetlinkError(error.errno or errno.EIO, f"netlink: {error}") from None
