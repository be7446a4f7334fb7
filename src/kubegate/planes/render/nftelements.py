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
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat

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


def encoder(declaration: str, set_name: str) -> Callable[[str], bytes] | None:
    """A function from an element's text (``10.96.0.1 . tcp . 80 : goto pick-10``) to its NFTA_LIST_ELEM
    attribute for a set declared ``declaration``; None when the declaration is not understood. It is the
    reference for ``encode_many`` and what names a malformed element."""
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

    return encode


# how each field kind is packed (network order is what htons gives, packed in host order)
_PACKING = {"ip": "4s", "proto": "B3x", "port": "H2x", "int": "I"}
_SIZES = {"ip": 4, "proto": 4, "port": 4, "int": 4}
_PROTOCOL_NUMBERS = {**{str(number): number for number in range(256)}, **_PROTOCOLS}


def _column(kind: str, texts: list[str]) -> Iterator[object]:
    if kind == "ip":
        return map(socket.inet_pton, repeat(socket.AF_INET), texts)
    if kind == "proto":
        return map(_PROTOCOL_NUMBERS.__getitem__, texts)
    if kind == "port":
        # htons refuses what is not 0-65535 (OverflowError)
        return map(socket.htons, map(int, texts))
    return map(int, texts)


def encode_many(declaration: str, set_name: str, elements: Sequence[str]) -> list[bytes]:
    """``[encoder(declaration, set_name)(e) for e in elements]``, column by column: the texts are split
    into fields and each column converted and packed by ``map``, so the per-element work runs in C
    (about 1 µs an element against 4 for the loop). Anything the columns do not take (a malformed
    element, odd spacing) goes through the reference encoder, which names what is wrong.

    Raises ElementError; ValueError when the declaration is not understood.
    """
    found = layout(declaration)
    reference = encoder(declaration, set_name)
    if found is None or reference is None:
        raise ValueError(f"set {set_name}: cannot encode elements of {declaration!r}")
    if not elements:
        return []
    try:
        return _columns(found, elements)
    except (ValueError, KeyError, OSError, OverflowError, struct.error):
        return [reference(element) for element in elements]


def _columns(found: tuple[tuple[str, ...], tuple[str, ...]], elements: Sequence[str]) -> list[bytes]:
    key_kinds, data_kinds = found
    verdicts = data_kinds == ("verdict",)
    values = key_kinds + (() if verdicts else data_kinds)
    width = len(key_kinds) + len(data_kinds)
    # one split for all: " : " and the line breaks between elements become field separators too (names
    # and verdicts hold no " . ": chain names have no spaces)
    fields = "\n".join(elements).replace(" : ", " . ").replace("\n", " . ").split(" . ")
    if len(fields) != width * len(elements):
        raise ValueError("not the declaration's number of fields")
    columns = [_column(kind, fields[index::width]) for index, kind in enumerate(values)]
    key_size = sum(_SIZES[kind] for kind in key_kinds)
    key_format = "".join(_PACKING[kind] for kind in key_kinds)
    # KEY { VALUE key }
    key_head = (8 + key_size, NFTA_SET_ELEM_KEY | NLA_F_NESTED, 4 + key_size, NFTA_DATA_VALUE)
    if not verdicts:
        # LIST_ELEM { KEY { VALUE key }, DATA { VALUE data } }: fixed size, one pack per element
        data_size = sum(_SIZES[kind] for kind in data_kinds)
        data_head: tuple[int, ...] = ()
        if data_kinds:
            data_head = (8 + data_size, NFTA_SET_ELEM_DATA | NLA_F_NESTED, 4 + data_size, NFTA_DATA_VALUE)
        size = 4 + key_head[0] + (data_head[0] if data_head else 0)
        layout_format = "=HH" + "HHHH" + key_format
        if data_kinds:
            layout_format += "HHHH" + "".join(_PACKING[kind] for kind in data_kinds)
        pack = struct.Struct(layout_format).pack
        key_columns, data_columns = columns[: len(key_kinds)], columns[len(key_kinds) :]
        constants = [repeat(value) for value in (size, NFTA_LIST_ELEM | NLA_F_NESTED, *key_head)]
        data_constants = [repeat(value) for value in data_head]
        return list(map(pack, *constants, *key_columns, *data_constants, *data_columns))
    # a verdict's DATA attribute is as long as its chain's name: pack the key, wrap per distinct verdict
    pack_key = struct.Struct("=HHHH" + key_format).pack
    keys = map(pack_key, *(repeat(value) for value in key_head), *columns)
    wrapped: dict[str, tuple[bytes, bytes]] = {}
    texts = fields[width - 1 :: width]
    for text in set(texts):
        data = _attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, _verdict(text, "verdict"))
        head = _ATTR.pack(4 + 8 + key_size + len(data), NFTA_LIST_ELEM | NLA_F_NESTED)
        wrapped[text] = (head, data)
    return [
        head + key + data for (head, data), key in zip(map(wrapped.__getitem__, texts), keys, strict=True)
    ]


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


def load(
    family: str,
    table: str,
    sets: Iterable[tuple[str, str, Sequence[str]]],
    netns: str | None = None,
    per_transaction: int = 10_000,
) -> None:
    """Encode and add the elements of each (set name, declaration, element texts) in transactions of about
    ``per_transaction`` elements. A worker thread hands each transaction to the kernel (which inserts the
    elements while the syscall runs, without the GIL) as this thread encodes the next: on two cores the
    encoding and the kernel's work overlap. Several transactions, so a refusal leaves the earlier ones
    committed: only for a table outside the packet path, which the caller deletes on failure.

    Raises ElementError for an element that does not fit its set, ValueError for a declaration this
    module does not understand (``layout``), nftlink.NetlinkError when the kernel refuses.
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
        for name, declaration, elements in sets:
            for start in range(0, len(elements), per_transaction):
                chunk = encode_many(declaration, name, elements[start : start + per_transaction])
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
