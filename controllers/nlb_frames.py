"""Frames the SDN NLB reads and writes, by hand, with bounds checks: no framework parser.

Every packet-in comes from the network, so from anyone: a frame is parsed only as far as
the NLB needs it (Ethernet, up to two 802.1Q/802.1ad tags, ARP, IPv4, ICMP echo and the
TCP fixed header), every length is checked against the bytes present, and TCP options
are never parsed at all (os-ken's option parser loops forever on some of them). Anything
malformed, truncated or fragmented parses to ``None`` (or to a frame without the layer
that was bad): the NLB drops it. Replies (ARP, ICMP echo, TCP RST and challenges) are
built here too, with their checksums, so the app never hands bytes to a packet library.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_IP, ETH_ARP = 0x0800, 0x0806
VLAN_TAGS = (0x8100, 0x88A8)
PROTO_ICMP, PROTO_TCP = 1, 6
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
ARP_REQUEST, ARP_REPLY = 1, 2
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MAX_TAGS = 2


@dataclass(frozen=True)
class Frame:
    eth_dst: str
    eth_src: str
    vlans: tuple[tuple[int, int], ...]  # (TPID, TCI) of each tag, outermost first
    ethertype: int
    arp_op: int | None = None
    arp_sha: str | None = None
    arp_spa: str | None = None
    arp_tpa: str | None = None
    ip_src: str | None = None
    ip_dst: str | None = None
    ip_proto: int | None = None
    icmp_type: int | None = None
    icmp_body: bytes = b""          # echo identifier, sequence and data (after type/code/checksum)
    tcp_src: int | None = None
    tcp_dst: int | None = None
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    tcp_flags: int | None = None
    tcp_payload_len: int = 0

    @property
    def is_tcp(self) -> bool:
        return self.tcp_flags is not None

    def has(self, flags: int) -> bool:
        return self.tcp_flags is not None and self.tcp_flags & flags == flags


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def ip_text(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def parse(data: bytes) -> Frame | None:
    """The parts of a frame the NLB acts on, or None when even Ethernet is not there."""
    if len(data) < 14:
        return None
    dst, src = mac_text(data[0:6]), mac_text(data[6:12])
    offset, vlans = 12, []
    (ethertype,) = struct.unpack_from("!H", data, offset)
    while ethertype in VLAN_TAGS:
        if len(vlans) == MAX_TAGS or len(data) < offset + 6:
            return None
        (tci, inner) = struct.unpack_from("!HH", data, offset + 2)
        vlans.append((ethertype, tci))
        ethertype = inner
        offset += 4
    offset += 2
    base = Frame(dst, src, tuple(vlans), ethertype)
    if ethertype == ETH_ARP:
        return _arp(base, data, offset)
    if ethertype == ETH_IP:
        return _ipv4(base, data, offset)
    return base


def _arp(base: Frame, data: bytes, offset: int) -> Frame:
    if len(data) < offset + 28:
        return base
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", data, offset)
    if (htype, ptype, hlen, plen) != (1, ETH_IP, 6, 4):
        return base
    sha, spa = data[offset + 8:offset + 14], data[offset + 14:offset + 18]
    tpa = data[offset + 24:offset + 28]
    return Frame(**{**base.__dict__, "arp_op": op, "arp_sha": mac_text(sha), "arp_spa": ip_text(spa),
                    "arp_tpa": ip_text(tpa)})


def _ipv4(base: Frame, data: bytes, offset: int) -> Frame:
    if len(data) < offset + 20:
        return base
    version_ihl, _, total_len, _, frag, _, proto = struct.unpack_from("!BBHHHBB", data, offset)
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or total_len < ihl or len(data) < offset + total_len:
        return base
    fields = {"ip_src": ip_text(data[offset + 12:offset + 16]), "ip_dst": ip_text(data[offset + 16:offset + 20]),
              "ip_proto": proto}
    if frag & 0x3FFF:  # a fragment (MF set or an offset): no transport header to trust
        return Frame(**{**base.__dict__, **fields})
    l4, l4_len = offset + ihl, total_len - ihl
    if proto == PROTO_TCP and l4_len >= 20:
        sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", data, l4)
        data_offset = (off_flags >> 12) * 4
        if 20 <= data_offset <= l4_len:
            fields.update(tcp_src=sport, tcp_dst=dport, tcp_seq=seq, tcp_ack=ack, tcp_flags=off_flags & 0x1FF,
                          tcp_payload_len=l4_len - data_offset)
    elif proto == PROTO_ICMP and l4_len >= 8:
        fields.update(icmp_type=data[l4], icmp_body=bytes(data[l4 + 4:l4 + l4_len]))
    return Frame(**{**base.__dict__, **fields})


# ---------------------------------------------------------------- building replies

def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: str, src: str, ethertype: int, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    header = mac_bytes(dst) + mac_bytes(src)
    for tpid, tci in vlans:
        header += struct.pack("!HH", tpid, tci)
    return header + struct.pack("!H", ethertype)


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, ttl, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def arp_reply(mac: str, ip: str, to_mac: str, to_ip: str, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, ARP_REPLY, mac_bytes(mac), ipaddress.IPv4Address(ip).packed,
                       mac_bytes(to_mac), ipaddress.IPv4Address(to_ip).packed)
    return ethernet(to_mac, mac, ETH_ARP, vlans) + body


def icmp_echo_reply(request: Frame, mac: str, ip: str) -> bytes:
    body = struct.pack("!BBH", ICMP_ECHO_REPLY, 0, 0) + request.icmp_body
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ethernet(request.eth_src, mac, ETH_IP, request.vlans) + ipv4(ip, request.ip_src, PROTO_ICMP, body)


def tcp_segment(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int, seq: int, ack: int,
                flags: int, payload: bytes = b"", vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    header = struct.pack("!HHIIHHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (5 << 12) | flags, 0, 0, 0)
    pseudo = ipaddress.IPv4Address(src_ip).packed + ipaddress.IPv4Address(dst_ip).packed + \
        struct.pack("!BBH", 0, PROTO_TCP, len(header) + len(payload))
    header = header[:16] + struct.pack("!H", checksum(pseudo + header + payload)) + header[18:]
    return ethernet(dst_mac, src_mac, ETH_IP, vlans) + ipv4(src_ip, dst_ip, PROTO_TCP, header + payload)


def reset_for(segment: Frame, vip_mac: str, vip_ip: str, service_port: int) -> bytes | None:
    """An RST the client's TCP accepts, answering a client segment sent to the VIP (or,
    after the switch's NAT, to a CAS): for a SYN, RST|ACK of it; for anything carrying an
    ACK, seq = that ack. Never answers an RST, nor a segment without SYN or ACK."""
    if not segment.is_tcp or segment.has(RST):
        return None
    if segment.has(SYN) and not segment.has(ACK):
        seq, ack, flags = 0, segment.tcp_seq + 1 + segment.tcp_payload_len, RST | ACK
    elif segment.has(ACK):
        seq, ack, flags = segment.tcp_ack, 0, RST
    else:
        return None
    return tcp_segment(vip_mac, segment.eth_src, vip_ip, segment.ip_src, service_port, segment.tcp_src, seq, ack,
                       flags, vlans=segment.vlans)


def challenge(vip_mac: str, vip_ip: str, service_port: int, client_mac: str, client_ip: str, client_port: int,
              seq: int, ack: int) -> bytes:
    """A one-byte segment the client must answer (see NlbCore.challenge_frame)."""
    return tcp_segment(vip_mac, client_mac, vip_ip, client_ip, service_port, client_port, seq, ack, ACK, b"\0")
