"""nftelements: element texts encoded as nft would send them, and the batch that carries them.

The netns tests (tests/unit/test_driver_nft.py) check the kernel side: a table loaded this way lists
exactly as one loaded by nft from the same text.
"""

from __future__ import annotations

import socket
import struct

import pytest
from bench.services import scale_ir

from kubegate.planes.render import nftelements
from kubegate.planes.render.nftables import NftOptions, NftRenderer

ENDPOINTS = "typeof ip daddr . meta l4proto . th dport . numgen random mod 10 : ip daddr . th dport"
NODEPORT_ENDPOINTS = "typeof meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport"


def _attributes(data: bytes) -> list[tuple[int, bytes]]:
    found, offset = [], 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        found.append((kind, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return found


def test_the_declarations_the_renderer_writes_are_understood() -> None:
    rendering = NftRenderer(NftOptions(dispatch="map")).render(*scale_ir(20, 3))
    for obj, elements in rendering.shared_elements():
        assert nftelements.layout(obj.body[0]) is not None, obj.body[0]
        assert elements or obj.name.startswith("no-endpoint")
    assert nftelements.layout(ENDPOINTS) == (("ip", "proto", "port", "int"), ("ip", "port"))
    assert nftelements.layout("type ipv4_addr . inet_proto . inet_service : verdict") == (
        ("ip", "proto", "port"),
        ("verdict",),
    )


@pytest.mark.parametrize(
    "declaration",
    ["type ipv6_addr", "typeof ct mark", "type ipv4_addr . ifname", "flags interval", "type verdict"],
)
def test_a_declaration_it_cannot_encode_is_declined(declaration: str) -> None:
    assert nftelements.layout(declaration) is None
    assert nftelements.encoder(declaration, "s") is None


def test_an_endpoint_element_has_the_bytes_nft_sends() -> None:
    encode = nftelements.encoder(ENDPOINTS, "endpoints-10")
    assert encode is not None
    encoded = encode("10.96.0.1 . tcp . 80 . 3 : 10.128.0.3 . 8080")
    [(kind, body)] = _attributes(encoded)
    assert kind == nftelements.NFTA_LIST_ELEM | nftelements.NLA_F_NESTED
    (key_kind, key), (data_kind, data) = _attributes(body)
    assert key_kind & 0x3FFF == nftelements.NFTA_SET_ELEM_KEY
    assert data_kind & 0x3FFF == nftelements.NFTA_SET_ELEM_DATA
    # every field on a 4-byte boundary: address, protocol, port (network order), numgen (host order)
    expected_key = socket.inet_aton("10.96.0.1") + b"\x06\0\0\0" + b"\x00\x50\0\0" + struct.pack("=I", 3)
    assert _attributes(key) == [(nftelements.NFTA_DATA_VALUE, expected_key)]
    expected_data = socket.inet_aton("10.128.0.3") + b"\x1f\x90\0\0"
    assert _attributes(data) == [(nftelements.NFTA_DATA_VALUE, expected_data)]


@pytest.mark.parametrize(
    ("declaration", "elements"),
    [
        (
            ENDPOINTS,
            ["10.96.0.1 . tcp . 80 . 3 : 10.128.0.3 . 8080", "192.168.1.200 . udp . 53 . 9 : 10.0.0.1 . 53"],
        ),
        (NODEPORT_ENDPOINTS, ["sctp . 30000 . 2 : 10.128.0.3 . 65535", "tcp . 1 . 0 : 1.2.3.4 . 1"]),
        ("type ipv4_addr . ipv4_addr", ["10.1.2.3 . 10.1.2.3", "0.0.0.0 . 255.255.255.255"]),
        ("type ipv4_addr", ["10.96.0.1", "10.96.0.2"]),
        (
            "type ipv4_addr . inet_proto . inet_service : verdict",
            ["10.96.0.1 . tcp . 80 : goto pick-10", "10.96.0.2 . 17 . 53 : jump svc-1a2b3c4d-ns/a.b/udp/dns"],
        ),
        ("type inet_proto . inet_service : verdict", ["tcp . 30000 : goto nodeport-pick-3"]),
    ],
)
def test_encoding_by_columns_gives_the_reference_encoders_bytes(
    declaration: str, elements: list[str]
) -> None:
    reference = nftelements.encoder(declaration, "s")
    assert reference is not None
    assert nftelements.encode_many(declaration, "s", elements) == [reference(e) for e in elements]


def test_a_whole_rendering_encodes_by_columns_as_element_by_element() -> None:
    rendering = NftRenderer(NftOptions(dispatch="map")).render(*scale_ir(300, 4))
    for name, declaration, elements in rendering.staged().elements:
        reference = nftelements.encoder(declaration, name)
        assert reference is not None
        assert nftelements.encode_many(declaration, name, elements) == [reference(e) for e in elements]


def test_a_verdict_element_names_its_chain() -> None:
    encode = nftelements.encoder("type ipv4_addr . inet_proto . inet_service : verdict", "service-ips")
    assert encode is not None
    [(_, body)] = _attributes(encode("10.96.0.1 . tcp . 80 : goto pick-10"))
    _, data = _attributes(body)[1]
    [(_, verdict)] = _attributes(data)
    code, chain = _attributes(verdict)
    assert struct.unpack("!i", code[1])[0] == nftelements.NFT_GOTO
    assert chain[1] == b"pick-10\0"


@pytest.mark.parametrize(
    ("declaration", "element", "complaint"),
    [
        (ENDPOINTS, "10.96.0.300 . tcp . 80 . 3 : 10.128.0.3 . 8080", "10.96.0.300"),
        (ENDPOINTS, "10.96.0.1 . tcp . 80 : 10.128.0.3 . 8080", "10.96.0.1 . tcp . 80"),
        ("type ipv4_addr . inet_proto . inet_service : verdict", "10.96.0.1 . tcp . 80 : accept", "goto"),
        ("type ipv4_addr . inet_proto . inet_service : verdict", "10.96.0.1 . tcp . 99999 : goto x", "99999"),
        ("type ipv4_addr . inet_proto . inet_service : verdict", "10.96.0.1 . bogus . 80 : goto x", "bogus"),
        ("type ipv4_addr", "10.96.0.1 : goto x", "unexpected data"),
    ],
)
def test_a_malformed_element_is_named_with_its_set(declaration: str, element: str, complaint: str) -> None:
    encode = nftelements.encoder(declaration, "the-set")
    assert encode is not None
    with pytest.raises(nftelements.ElementError, match="the-set") as caught:
        encode(element)
    assert complaint in str(caught.value)
    # among good ones, encoded by columns: the same error
    good = "10.96.0.9 . tcp . 80 . 1 : 10.128.0.3 . 80" if declaration == ENDPOINTS else None
    elements = [element] if good is None else [good, element, good]
    with pytest.raises(nftelements.ElementError, match="the-set") as caught:
        nftelements.encode_many(declaration, "the-set", elements)
    assert complaint in str(caught.value)


def test_the_batch_splits_elements_into_messages_the_kernel_can_take() -> None:
    encode = nftelements.encoder(ENDPOINTS, "endpoints-10")
    assert encode is not None
    elements = [
        encode(f"10.96.{i >> 8}.{i & 255} . tcp . 80 . {i % 10} : 10.128.0.1 . 80") for i in range(5000)
    ]
    payload, acks = nftelements.batch(
        "inet", "kubegate", [("endpoints-10", elements), ("other", elements[:1])]
    )
    kinds, offset, carried = [], 0, 0
    while offset < len(payload):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", payload, offset)
        kinds.append(kind)
        if kind & 0xFF == nftelements.NFT_MSG_NEWSETELEM:
            assert length < 65536 and flags & nftelements.NLM_F_ACK
            carried += payload[offset : offset + length].count(elements[0][4:12])
        offset += length
    assert kinds[0] == nftelements.NFNL_MSG_BATCH_BEGIN and kinds[-1] == nftelements.NFNL_MSG_BATCH_END
    assert acks == len(kinds) - 2 and acks >= 5000 * 44 // nftelements.MESSAGE_PAYLOAD + 1
    assert carried >= 5001  # every element went into some message
