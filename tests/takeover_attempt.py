"""What a local unprivileged user would try against a running lab's controller (issue 18
item 1); run as that user (``setpriv --reuid=nobody ... python3 tests/takeover_attempt.py``).
Standard library only. Prints one JSON object: what each attempt got.

1. squat: bind the OpenFlow and admin API ports (to receive the switches or the token);
2. plain: connect to the OpenFlow port in plain TCP, say HELLO, then FEATURES_REPLY with the
   lab switch's datapath id, a PORT_STATUS taking a member's port down and a packet-in;
3. tls-no-cert / tls-own-ca: the same over TLS, without a client certificate, or with one
   of the attacker's own CA;
4. files: read the admin API's token file and the channel's private keys.

    python3 tests/takeover_attempt.py --of-port P --api-port A --dpid 1 --port-name clab1-eth1 \
        [--cert C --key K] [--read FILE ...]
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct

OFP13 = 4
HELLO, FEATURES_REQUEST, FEATURES_REPLY, PACKET_IN, PORT_STATUS = 0, 5, 6, 10, 12
MULTIPART_REQUEST, MULTIPART_REPLY, OFPMP_PORT_DESC = 18, 19, 13
OFPPS_LINK_DOWN, OFPPR_MODIFY = 1, 2


def header(msg_type: int, length: int, xid: int = 1) -> bytes:
    return struct.pack("!BBHI", OFP13, msg_type, length, xid)


def features_reply(dpid: int, xid: int) -> bytes:
    return header(FEATURES_REPLY, 32, xid) + struct.pack("!QIBB2xII", dpid, 0, 254, 0, 0, 0)


def port_status(port_name: str, port_no: int = 1) -> bytes:
    port = struct.pack("!I4s6s2s16sIIIIIIII", port_no, b"", bytes.fromhex("020000000001"), b"",
                       port_name.encode()[:15], 0, OFPPS_LINK_DOWN, 0, 0, 0, 0, 0, 0)
    return header(PORT_STATUS, 16 + len(port)) + struct.pack("!B7x", OFPPR_MODIFY) + port


def packet_in() -> bytes:
    frame = bytes.fromhex("ffffffffffff020000000001" "0806") + bytes(28)
    match = struct.pack("!HHBBHI", 1, 12, 0x80, 0, 4, 1) + bytes(4)  # OXM in_port=1, padded to 8
    body = struct.pack("!IHBBQ", 0xFFFFFFFF, len(frame), 1, 0, 0) + match + bytes(2) + frame
    return header(PACKET_IN, 8 + len(body)) + body


def recv_messages(sock, seconds: float = 1.5, xids: dict | None = None) -> list[int]:
    """The OpenFlow message types received until the peer stops talking (``xids``: the
    last xid of each type is noted there)."""
    sock.settimeout(seconds)
    data, types = b"", []
    xids = {} if xids is None else xids
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            while len(data) >= 8:
                length = struct.unpack_from("!H", data, 2)[0]
                if length < 8 or len(data) < length:
                    break
                types.append(data[1])
                xids[data[1]] = struct.unpack_from("!I", data, 4)[0]
                data = data[length:]
    except (socket.timeout, OSError):
        pass
    return types


def speak_openflow(sock, dpid: int, port_name: str) -> dict:
    """HELLO, and if the peer asks for features, claim the datapath id and lie."""
    sock.sendall(header(HELLO, 8))
    seen = recv_messages(sock)
    out = {"received": seen}
    if FEATURES_REQUEST in seen:
        sock.sendall(features_reply(dpid, 1))
        out["claimed_dpid"] = dpid
        xids: dict = {}
        out["after_claim"] = recv_messages(sock, xids=xids)  # a controller that took the claim programs the "switch"
        try:  # its port list (empty; os-ken's handshake ends with it), a forged link down of a member, a packet-in flood
            reply = b""
            if MULTIPART_REQUEST in xids:
                reply = header(MULTIPART_REPLY, 16, xids[MULTIPART_REQUEST]) + struct.pack("!HH4x", OFPMP_PORT_DESC, 0)
            sock.sendall(reply + port_status(port_name) + packet_in() * 50)
            out["after_lies"] = recv_messages(sock)
        except OSError as exc:
            out["after_lies"] = f"{type(exc).__name__}"
    return out


def attempt(name: str, func) -> dict:
    try:
        return {"ok": True, **func()}
    except (OSError, ssl.SSLError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--of-port", type=int, required=True)
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--dpid", type=int, default=1)
    parser.add_argument("--port-name", default="clab1-eth1")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--read", nargs="*", default=[])
    args = parser.parse_args()
    result: dict = {}

    def squat(port):
        def bind():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
                sock.listen(1)
            return {"bound": port}
        return bind

    result["squat_of"] = attempt("squat", squat(args.of_port))
    result["squat_api"] = attempt("squat", squat(args.api_port))

    def plain():
        with socket.create_connection(("127.0.0.1", args.of_port), timeout=3) as sock:
            return speak_openflow(sock, args.dpid, args.port_name)

    result["plain"] = attempt("plain", plain)

    def over_tls(cert=None, key=None):
        def run():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the attacker trusts anyone
            if cert:
                ctx.load_cert_chain(cert, key)
            with socket.create_connection(("127.0.0.1", args.of_port), timeout=3) as raw:
                with ctx.wrap_socket(raw) as sock:
                    return speak_openflow(sock, args.dpid, args.port_name)
        return run

    result["tls_no_cert"] = attempt("tls", over_tls())
    if args.cert:
        result["tls_own_ca"] = attempt("tls", over_tls(args.cert, args.key))
    for path in args.read:
        result[f"read {path}"] = attempt("read", lambda path=path: {"bytes": len(open(path, "rb").read())})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
