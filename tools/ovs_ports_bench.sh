#!/bin/bash
# What idle ports cost Open vSwitch's userspace datapath: ovs-vswitchd CPU per 64-byte TCP
# request/response between two namespaces on one userspace bridge, with N more ports on
# the bridge that carry nothing (docs/SCALING.md). Run as root on a machine where
# ovs-vswitchd runs:
#
#     tools/ovs_ports_bench.sh N [ROUND_TRIPS] [PORT_TYPE]
#
# PORT_TYPE: empty for ordinary (AF_PACKET) ports, or e.g. afxdp-nonpmd (native XDP).
# It makes bridge pbx0, namespaces pbxA and pbxB and veths named pbx*, and removes exactly
# those when it ends.
set -euo pipefail
N=${1:?usage: $0 N [ROUND_TRIPS] [PORT_TYPE]}
RT=${2:-20000}
TYPE=${3:-}
port_options() { [ -n "$TYPE" ] && echo "-- set Interface $1 type=$TYPE options:xdp-mode=native" || true; }
cleanup() {
  ovs-vsctl --if-exists del-br pbx0
  ip netns del pbxA 2>/dev/null || true
  ip netns del pbxB 2>/dev/null || true
  for i in $(seq 1 "$N"); do ip link del "pbxi$i" 2>/dev/null || true; done
}
trap cleanup EXIT
ovs-vsctl add-br pbx0 -- set bridge pbx0 datapath_type=netdev fail-mode=standalone
for ns in A B; do
  ip netns add "pbx$ns"
  ip link add "pbx${ns}h" type veth peer name "pbx${ns}s"
  ip link set "pbx${ns}h" netns "pbx$ns"
  ip -n "pbx$ns" addr add "10.99.0.$([ $ns = A ] && echo 1 || echo 2)/24" dev "pbx${ns}h"
  ip -n "pbx$ns" link set "pbx${ns}h" up
  ip netns exec "pbx$ns" ethtool -K "pbx${ns}h" tx off >/dev/null 2>&1 || true
  ip link set "pbx${ns}s" up
  ethtool -K "pbx${ns}s" tx off >/dev/null 2>&1 || true
  # shellcheck disable=SC2046
  ovs-vsctl add-port pbx0 "pbx${ns}s" $(port_options "pbx${ns}s")
done
for i in $(seq 1 "$N"); do
  ip link add "pbxi$i" type veth peer name "pbxj$i"
  ip link set "pbxi$i" up
  ip link set "pbxj$i" up
  # shellcheck disable=SC2046
  ovs-vsctl add-port pbx0 "pbxi$i" $(port_options "pbxi$i")
done
sleep 1
ip netns exec pbxB python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('10.99.0.2', 7000)); s.listen(1)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while (d := c.recv(64)):
    c.sendall(d)
" &
sleep 0.5
ip netns exec pbxA python3 - "$(cat /var/run/openvswitch/ovs-vswitchd.pid)" "$RT" "$N" "${TYPE:-af_packet}" <<'PY'
import os, socket, sys, time
pid, rounds, extra, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def cpu_ms():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")
s = socket.create_connection(("10.99.0.2", 7000)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(500):
    s.sendall(b"x" * 64); s.recv(64)
c0, t0 = cpu_ms(), time.monotonic()
for _ in range(rounds):
    s.sendall(b"x" * 64); s.recv(64)
c1, t1 = cpu_ms(), time.monotonic()
print(f"ports {kind}, idle ports {extra}: ovs-vswitchd {(c1 - c0) * 1000 / rounds:.1f} us CPU and "
      f"{(t1 - t0) * 1e6 / rounds:.1f} us wall per round trip ({rounds})")
s.close()
PY
wait
