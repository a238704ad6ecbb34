#!/usr/bin/env bash
# caslab set-up and entry point. Safe to run again and again: it installs only what is
# missing (Debian packages, the venv, the project), starts Open vSwitch if it is not
# running, then does what you asked.
#
#   sudo ./lab.sh run [SPEC] [caslab run options]   default failover experiment + report
#   sudo ./lab.sh test [pytest options]             the test suite
#   sudo ./lab.sh setup | doctor | caslab ARGS...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY_SYSTEM="${CASLAB_PYTHON:-/usr/bin/python3}"
DEBS=(mininet openvswitch-switch iproute2 ethtool tcpdump iputils-ping haproxy dnsmasq-base iperf3
      python3-venv python3-dev curl procps kmod nftables)
# Only the tests need a browser (report.html in headless Chromium). Debian ships these;
# Ubuntu ships Chromium as a snap, so there the browser test skips (CI runs on Debian).
TEST_DEBS=(chromium chromium-driver)

say() { printf '[lab.sh] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    say "run as root (sudo ./lab.sh $*): Mininet and Open vSwitch need it"
    exit 2
  fi
}

install_debs() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The lab starts its own HAProxy per run: the distribution's idle service is not needed.
  if [[ " ${missing[*]} " == *" haproxy "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now haproxy >/dev/null 2>&1 || true
  fi
}

start_ovs() {
  if ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    return 0
  fi
  say "starting Open vSwitch"
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl start openvswitch-switch
  else
    /usr/share/openvswitch/scripts/ovs-ctl start --no-monitor >/dev/null 2>&1 \
      || /usr/share/openvswitch/scripts/ovs-ctl start
  fi
  for _ in $(seq 1 50); do
    ovs-vsctl --timeout=3 show >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  say "Open vSwitch did not start; see /var/log/openvswitch/"
  exit 1
}

install_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the venv in $VENV"
    "$PY_SYSTEM" -m venv "$VENV"
  fi
  local stamp="$VENV/.caslab-installed" want
  want="$(sha256sum "$HERE/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import caslab" 2>/dev/null; then
    say "installing caslab and its dependencies into the venv"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$HERE[test]"
    echo "$want" > "$stamp"
  fi
}

install_ryu_venv() {
  # Upstream Ryu 4.34 for the compatibility smoke test, in a venv of its own: it needs
  # eventlet 0.33.3, dnspython 2.2.x and setuptools < 58 to build (DESIGN section 7).
  local venv="$HERE/.venv-ryu"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import ryu, caslab" 2>/dev/null; then
    return 0
  fi
  say "creating $venv (upstream Ryu 4.34, for the compatibility test)"
  {
    "$PY_SYSTEM" -m venv "$venv" &&
    "$venv/bin/python" -m pip install -q "setuptools<58" wheel &&
    "$venv/bin/python" -m pip install -q --no-build-isolation "ryu==4.34" "eventlet==0.33.3" "dnspython>=2.2,<2.3" &&
    "$venv/bin/python" -m pip install -q --no-deps -e "$HERE"
  } || say "could not build the Ryu 4.34 venv on this Python; its compatibility test will say so"
}

install_test_debs() {
  if ! apt-cache show chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
  fi
  if apt-cache show chromium >/dev/null 2>&1; then
    install_debs "${TEST_DEBS[@]}"
  else
    say "no Debian chromium package here: the headless report test will skip"
  fi
}

setup() {
  need_root "$@"
  install_debs "${DEBS[@]}"
  start_ovs
  install_venv
}

cmd="${1:-run}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup)
    setup setup
    "$VENV/bin/caslab" doctor
    ;;
  run)
    setup run
    exec "$VENV/bin/caslab" run "$@"
    ;;
  test)
    setup test
    install_test_debs
    install_ryu_venv
    cd "$HERE"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      say "pytest ran no test: that is a failure"
      exit 1
    fi
    exit "$rc"
    ;;
  doctor)
    setup doctor
    exec "$VENV/bin/caslab" doctor
    ;;
  caslab)
    setup caslab
    exec "$VENV/bin/caslab" "$@"
    ;;
  *)
    say "unknown command '$cmd': use run, test, setup, doctor or caslab"
    exit 2
    ;;
esac
