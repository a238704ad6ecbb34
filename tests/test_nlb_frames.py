"""controllers/nlb_frames.py: the NLB's own bounded frame parser and reply builders,
checked against scapy and os-ken's packet library as independent references. Whatever
the bytes, ``parse`` returns a Frame or None and never raises; a layer that is truncated,
malformed or fragmented is left out of the frame."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from os_ken.lib.packet import packet as osken_packet
from os_ken.lib.packet import tcp as osken_tcp
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from controllers import nlb_frames as frames
from tests.nlb_lab import checksums_ok, vlan_ids

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MACS = st.binary(min_size=6, max_size=6).map(frames.mac_text)
IPS = st.binary(min_size=4, max_size=4).map(frames.ip_text)
PORTS = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
TCP_OPTIONS = st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("WScale", 7)], [("SAckOK", b"")],
                               [("Timestamp", (1, 2))], [("MSS", 1), ("NOP", None), ("Timestamp", (3, 4))]])


@st.composite
def tags(draw, most: int = 2):
    """Up to ``most`` VLAN tags, 802.1Q or 802.1ad, as scapy layers and (TPID, TCI) pairs."""
    layers, tcis = [], []
    for _ in range(draw(st.integers(0, most))):
        prio, vid = draw(st.integers(0, 7)), draw(st.integers(0, 4095))
        kind = draw(st.sampled_from([Dot1Q, Dot1AD]))
        layers.append(kind(prio=prio, vlan=vid))
        tcis.append((0x88A8 if kind is Dot1AD else 0x8100, prio << 13 | vid))
    return layers, tuple(tcis)


def stack(eth, layers, rest):
    for layer in layers:
        eth = eth / layer
    return eth / rest


# ---- parsing, against scapy ----------------------------------------------------------------------


@FAST
@given(src=MACS, dst=MACS, ips=st.tuples(IPS, IPS), ports=st.tuples(PORTS, PORTS), seq=U32, ack=U32,
       flags=st.integers(0, 0x1FF), options=TCP_OPTIONS, payload=st.binary(max_size=40), tagging=tags(),
       ip_options=st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00" * 2]))
def test_tcp_frames_parse_like_scapy_builds_them(src, dst, ips, ports, seq, ack, flags, options, payload, tagging,
                                                 ip_options):
    layers, tcis = tagging
    ip = IP(src=ips[0], dst=ips[1], options=[Raw(ip_options)] if ip_options else [])
    segment = TCP(sport=ports[0], dport=ports[1], seq=seq, ack=ack, flags=flags, options=options)
    data = bytes(stack(Ether(src=src, dst=dst), layers, ip / segment / payload))
    frame = frames.parse(data)
    assert (frame.eth_src, frame.eth_dst, frame.vlans, frame.ethertype) == (src, dst, tcis, 0x0800)
    assert (frame.ip_src, frame.ip_dst, frame.ip_proto) == (ips[0], ips[1], 6)
    assert (frame.tcp_src, frame.tcp_dst, frame.tcp_seq, frame.tcp_ack, frame.tcp_flags) == (*ports, seq, ack, flags)
    assert frame.tcp_payload_len == len(payload) and frame.is_tcp and frame.arp_op is None
    # Ethernet padding after the IP packet is not payload
    assert frames.parse(data + b"\0" * 20).tcp_payload_len == len(payload)


@FAST
@given(sender=MACS, spa=IPS, tpa=IPS, op=st.integers(1, 2), tagging=tags())
def test_arp_parses_like_scapy_builds_it(sender, spa, tpa, op, tagging):
    layers, tcis = tagging
    data = bytes(stack(Ether(src=sender, dst="ff:ff:ff:ff:ff:ff"), layers,
                       ARP(op=op, hwsrc=sender, psrc=spa, pdst=tpa)))
    frame = frames.parse(data)
    assert (frame.arp_op, frame.arp_sha, frame.arp_spa, frame.arp_tpa, frame.vlans) == (op, sender, spa, tpa, tcis)
    assert frame.ip_src is None and not frame.is_tcp


def test_icmp_echo_parses_with_its_body():
    data = bytes(Ether() / IP(src="10.1.3.1", dst="10.1.0.100") / ICMP(type=8, id=0x1234, seq=9) / b"ping!")
    frame = frames.parse(data)
    assert (frame.icmp_type, frame.icmp_body) == (8, struct.pack("!HH", 0x1234, 9) + b"ping!")
    assert frame.ip_proto == 1 and not frame.is_tcp


def test_other_ethertypes_parse_to_ethernet_only():
    frame = frames.parse(bytes(Ether(type=0x86DD) / (b"\x60" + b"\0" * 50)))
    assert frame.ethertype == 0x86DD and frame.ip_src is None and frame.arp_op is None


# ---- what is refused ----------------------------------------------------------------------------------

GOOD = bytes(Ether(src="02:00:0a:01:03:01", dst="02:00:0a:01:00:64") / IP(src="10.1.3.1", dst="10.1.0.100")
             / TCP(sport=40000, dport=6001, flags="PA", seq=1, ack=2) / b"data")
IP_AT = 14


def patched(offset: int, fmt: str, value: int, data: bytes = GOOD) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 13])
def test_less_than_an_ethernet_header_is_none(data):
    assert frames.parse(data) is None


def tag(tpid: int, tci: int) -> bytes:
    return struct.pack("!HH", tpid, tci)


def test_three_tags_or_a_cut_tag_is_none_two_tags_parse():
    base, rest = GOOD[:12], GOOD[12:]
    assert frames.parse(base + tag(0x88A8, 5) + tag(0x8100, 7) + rest).vlans == ((0x88A8, 5), (0x8100, 7))
    assert frames.parse(base + tag(0x8100, 1) + tag(0x8100, 2) + tag(0x8100, 3) + rest) is None
    assert frames.parse(base + tag(0x8100, 5)) is None
    assert frames.parse(base + b"\x81\x00\x00") is None


@pytest.mark.parametrize("why, data", [
    ("IPv6 version", patched(IP_AT, "!B", 0x65)),
    ("IHL below 5", patched(IP_AT, "!B", 0x44)),
    ("IHL past the packet", patched(IP_AT, "!B", 0x4F)),
    ("total length below the header", patched(IP_AT + 2, "!H", 19)),
    ("total length past the frame", patched(IP_AT + 2, "!H", len(GOOD) - IP_AT + 1)),
    ("header cut", GOOD[:IP_AT + 19]),
])
def test_a_bad_ipv4_header_leaves_out_the_ip_layer(why, data):
    frame = frames.parse(data)
    assert frame.ethertype == 0x0800 and frame.ip_src is None and not frame.is_tcp, why


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x1FFF, 0x3FFF])
def test_a_fragment_keeps_its_addresses_and_no_transport(frag):
    frame = frames.parse(patched(IP_AT + 6, "!H", frag))
    assert frame.ip_src == "10.1.3.1" and frame.ip_proto == 6 and not frame.is_tcp
    assert frames.parse(patched(IP_AT + 6, "!H", 0x4000)).is_tcp  # DF alone is not a fragment


@pytest.mark.parametrize("offset_words", [0, 1, 4, 8, 15])
def test_a_tcp_data_offset_outside_the_segment_leaves_out_tcp(offset_words):
    tcp_at = IP_AT + 20
    frame = frames.parse(patched(tcp_at + 12, "!B", offset_words << 4))
    assert frame.ip_src == "10.1.3.1" and not frame.is_tcp and frame.tcp_src is None


def test_tcp_options_are_never_parsed():
    """A zero-length option made os-ken's parser loop forever: here options are skipped."""
    tcp_at = IP_AT + 20
    data = bytearray(GOOD[:tcp_at + 20] + bytes([0xFE, 0x00, 0x00, 0x00]))
    data[tcp_at + 12] = 6 << 4
    struct.pack_into("!H", data, IP_AT + 2, 44)
    frame = frames.parse(bytes(data))
    assert frame.is_tcp and frame.tcp_payload_len == 0


@FAST
@given(cut=st.integers(0, len(GOOD)))
def test_a_truncated_frame_loses_the_layers_it_cut(cut):
    frame = frames.parse(GOOD[:cut])
    if cut < 14:
        assert frame is None
    elif cut < len(GOOD):
        assert frame.ethertype == 0x0800 and frame.ip_src is None and not frame.is_tcp
    else:
        assert frame.is_tcp and frame.tcp_payload_len == 4


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=120) | st.binary(max_size=100).map(lambda b: GOOD[:14] + b)
       | st.binary(max_size=100).map(lambda b: GOOD[:34] + b))
def test_any_bytes_parse_without_raising(data):
    frame = frames.parse(data)
    assert frame is None or isinstance(frame, frames.Frame)
    if frame is not None and frame.is_tcp:
        assert 0 <= frame.tcp_payload_len <= len(data)


# ---- building replies ------------------------------------------------------------------------------


def test_checksum_agrees_with_scapy():
    for data in (b"", b"\x01", b"\xff\xff", bytes(range(256)), b"\x45\x00" * 33 + b"\x07"):
        assert frames.checksum(data) == scapy_checksum(data)


@pytest.mark.parametrize("vlans", [(), ((0x8100, 42),), ((0x88A8, 0x2005), (0x8100, 7))])
def test_arp_reply_reads_back_in_scapy(vlans):
    data = frames.arp_reply("02:00:0a:01:00:64", "10.1.0.100", "02:00:0a:01:03:01", "10.1.3.1", vlans)
    frame = Ether(data)
    arp = frame[ARP]
    assert (frame.src, frame.dst, frame[ARP].op) == ("02:00:0a:01:00:64", "02:00:0a:01:03:01", 2)
    assert (arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == ("02:00:0a:01:00:64", "10.1.0.100", "02:00:0a:01:03:01",
                                                          "10.1.3.1")
    assert vlan_ids(frame) == [tci & 0xFFF for _, tci in vlans]
    assert frames.parse(data).vlans == vlans, "a reply carries the request's tags, TPIDs included"


@FAST
@given(body=st.binary(max_size=64), ident=PORTS, seq=PORTS, tagging=tags())
def test_icmp_echo_reply_answers_the_request(body, ident, seq, tagging):
    layers, tcis = tagging
    request = frames.parse(bytes(stack(Ether(src="02:00:0a:01:03:01", dst="02:00:0a:01:00:64"), layers,
                                       IP(src="10.1.3.1", dst="10.1.0.100") / ICMP(type=8, id=ident, seq=seq) / body)))
    reply = Ether(frames.icmp_echo_reply(request, "02:00:0a:01:00:64", "10.1.0.100"))
    assert (reply.src, reply.dst, reply[IP].src, reply[IP].dst) == ("02:00:0a:01:00:64", "02:00:0a:01:03:01",
                                                                    "10.1.0.100", "10.1.3.1")
    echo = reply[ICMP]
    assert (echo.type, echo.code, echo.id, echo.seq, bytes(echo.payload)) == (0, 0, ident, seq, body)
    assert checksums_ok(bytes(reply)) and vlan_ids(reply) == [t & 0xFFF for _, t in tcis]
    assert frames.parse(bytes(reply)).vlans == tcis


@FAST
@given(ports=st.tuples(st.integers(1024, 0xFFFF), st.integers(1024, 0xFFFF)), seq=st.integers(0, 2**33),
       ack=st.integers(0, 2**33), flags=st.integers(0, 0x1FF), payload=st.binary(max_size=30))
def test_tcp_segment_is_what_scapy_and_os_ken_read(ports, seq, ack, flags, payload):
    data = frames.tcp_segment("02:00:0a:01:00:64", "02:00:0a:01:03:01", "10.1.0.100", "10.1.3.1", *ports, seq, ack,
                              flags, payload)
    seg = Ether(data)[TCP]
    assert (seg.sport, seg.dport, seg.seq, seg.ack, int(seg.flags), seg.dataofs) == (*ports, seq % 2**32,
                                                                                   ack % 2**32, flags, 5)
    assert bytes(seg.payload) == payload and checksums_ok(data)
    parsed = osken_packet.Packet(data).get_protocol(osken_tcp.tcp)
    assert (parsed.src_port, parsed.seq, parsed.ack, parsed.bits) == (ports[0], seq % 2**32, ack % 2**32,
                                                                   flags & 0x3F)  # os-ken keeps 6 flag bits


@pytest.mark.parametrize("flags, payload, expected", [
    ("S", b"", ("RA", 0, 1001)),           # a SYN: RST|ACK of it
    ("S", b"xyz", ("RA", 0, 1004)),        # data on the SYN counts too
    ("A", b"", ("R", 0xBEEF, 0)),          # anything with an ACK: seq = that ack
    ("PA", b"hello", ("R", 0xBEEF, 0)),
    ("SA", b"", ("R", 0xBEEF, 0)),
    ("FA", b"", ("R", 0xBEEF, 0)),
    ("R", b"", None), ("RA", b"", None),    # never answer an RST
    ("F", b"", None), ("", b"", None),      # nor a segment without SYN or ACK
])
def test_reset_for_follows_rfc_793(flags, payload, expected):
    client = Ether(src="02:00:0a:01:03:01", dst="02:00:0a:01:00:64") / Dot1Q(vlan=9)
    data = bytes(client / IP(src="10.1.3.1", dst="10.1.1.2") / TCP(sport=40000, dport=6001, flags=flags, seq=1000,
                                                                   ack=0xBEEF) / payload)
    reset = frames.reset_for(frames.parse(data), "02:00:0a:01:00:64", "10.1.0.100", 6001)
    if expected is None:
        assert reset is None
        return
    frame = Ether(reset)
    seg = frame[TCP]
    assert (str(seg.flags), seg.seq, seg.ack) == expected
    assert (frame.src, frame.dst, frame[IP].src, frame[IP].dst) == ("02:00:0a:01:00:64", "02:00:0a:01:03:01",
                                                                    "10.1.0.100", "10.1.3.1")
    assert (seg.sport, seg.dport) == (6001, 40000) and vlan_ids(frame) == [9] and checksums_ok(reset)


def test_reset_for_a_frame_without_tcp_is_none():
    assert frames.reset_for(frames.parse(GOOD[:IP_AT + 30]), "02:00:0a:01:00:64", "10.1.0.100", 6001) is None


def test_challenge_is_one_byte_the_client_must_answer():
    data = frames.challenge("02:00:0a:01:00:64", "10.1.0.100", 6001, "02:00:0a:01:03:01", "10.1.3.1", 40000,
                            0x80000000, 0x1234)
    frame = Ether(data)
    assert (frame[IP].src, frame[IP].dst, frame[IP].len, frame[IP].flags.DF) == ("10.1.0.100", "10.1.3.1", 41, 1)
    seg = frame[TCP]
    assert (str(seg.flags), seg.seq, seg.ack, bytes(seg.payload)) == ("A", 0x80000000, 0x1234, b"\x00")
    assert checksums_ok(data) and frames.parse(data).tcp_payload_len == 1


def test_mac_text_round_trip_and_bad_macs():
    assert frames.mac_text(frames.mac_bytes("02:00:0A:01:00:64")) == "02:00:0a:01:00:64"
    for bad in ("", "02:00:0a:01:00", "02:00:0a:01:00:64:01", "zz:00:0a:01:00:64"):
        with pytest.raises(ValueError):
            frames.mac_bytes(bad)
