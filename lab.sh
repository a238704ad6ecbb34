#!/usr/bin/env bash
# caslab set-up and entry point. Safe to run again and again: it installs only what is
# missing (Debian packages, the venv, the project), starts Open vSwitch if it is not
# running, then does what you asked. It needs root and never calls sudo itself:
#
#   ./lab.sh run [SPEC] [caslab run options]   as root: default failover experiment + report
#   ./lab.sh test [pytest options]             as root: the test suite
#   ./lab.sh setup | doctor | caslab ARGS...
#   ./lab.sh paths                             where the venvs, scratch and results go
#   (from another user: sudo ./lab.sh ...)
#
# Where things go (environment, else /etc/caslab.env, else the defaults):
#   CASLAB_VENV      the venv (default .venv here; /var/lib/caslab/venv when this checkout
#                    is on a VM's shared folder, where a venv is slow and fragile)
#   CASLAB_RYU_VENV  upstream Ryu 4.34's own venv for its compatibility test (<venv>-ryu)
#   CASLAB_SCRATCH   the mailbox stores while a lab runs (SQLite's WAL needs a local disk)
#   CASLAB_RESULTS   result folders (default results/ here)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY_SYSTEM="${CASLAB_PYTHON:-/usr/bin/python3}"
DEBS=(mininet openvswitch-switch iproute2 ethtool tcpdump iputils-ping haproxy dnsmasq-base iperf3
      python3-venv python3-dev curl procps kmod util-linux nftables git)
LOCAL_STATE=/var/lib/caslab

say() { printf '[lab.sh] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    say "run as root: Mininet and Open vSwitch need it (as root: ./lab.sh $*; from another user: sudo ./lab.sh $*)"
    exit 2
  fi
}

# Machine-wide defaults (the Vagrantfile writes them): only the lab's own keys are read.
read_machine_defaults() {
  local file="${CASLAB_ENV_FILE:-/etc/caslab.env}" key value
  [ -r "$file" ] || return 0
  while IFS='=' read -r key value; do
    case "$key" in
      CASLAB_VENV|CASLAB_RYU_VENV|CASLAB_SCRATCH|CASLAB_RESULTS)
        [ -z "${!key:-}" ] && [ -n "$value" ] && export "$key=$value" ;;
    esac
  done < "$file"
}

on_shared_folder() {
  local fs
  fs="$(findmnt -n -o FSTYPE --target "$1" 2>/dev/null || true)"
  case "$fs" in
    vboxsf|9p|v9fs|nfs|nfs4|cifs|smb3|smbfs|virtiofs|prl_fs|vmhgfs|fuse.*) return 0 ;;
  esac
  return 1
}

read_machine_defaults
if [ -z "${CASLAB_VENV:-}" ] && on_shared_folder "$HERE"; then
  say "$HERE is a shared folder: venv and scratch go to $LOCAL_STATE (set CASLAB_VENV to choose)"
  CASLAB_VENV="$LOCAL_STATE/venv"
  CASLAB_SCRATCH="${CASLAB_SCRATCH:-$LOCAL_STATE/scratch}"
fi
VENV="${CASLAB_VENV:-$HERE/.venv}"
RYU_VENV="${CASLAB_RYU_VENV:-$VENV-ryu}"
export CASLAB_VENV="$VENV" CASLAB_RYU_VENV="$RYU_VENV" PLAYWRIGHT_BROWSERS_PATH="$VENV/playwright"
[ -n "${CASLAB_SCRATCH:-}" ] && export CASLAB_SCRATCH

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

ovs_answers() {
  # Both the database server and ovs-vswitchd itself: bridges need the daemon, and its
  # database may run without it (a crashed or never started ovs-vswitchd).
  ovs-vsctl --timeout=3 show >/dev/null 2>&1 && ovs-appctl --timeout=3 -t ovs-vswitchd version >/dev/null 2>&1
}

start_ovs() {
  if ovs_answers; then
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
    ovs_answers && return 0
    sleep 0.2
  done
  say "Open vSwitch did not start; see /var/log/openvswitch/"
  exit 1
}

install_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the venv in $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY_SYSTEM" -m venv "$VENV"
  fi
  local stamp="$VENV/.caslab-installed" want
  want="$(sha256sum "$HERE/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import caslab" 2>/dev/null; then
    say "installing caslab and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$HERE[test]"
    echo "$want" > "$stamp"
  fi
}

python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# What the NLB app imports besides Ryu and the standard library (labcommon reads its typed
# configuration with dacite), pinned as pyproject.toml pins it (tests/test_platform.py
# holds them equal). The project itself goes into Ryu's venv without its dependencies.
RYU_APP_DEPS=("dacite>=1.8,<2")

install_ryu_venv() {
  # Upstream Ryu 4.34 for the compatibility test, in a venv of its own: it needs eventlet
  # 0.33.3, dnspython 2.2.x and setuptools < 58 to build (docs/ARCHITECTURE.md), which
  # Python 3.12+ cannot provide. One attempt per Python version: a failure is written to
  # <venv>.unavailable (the test reads it) and not retried until that file is removed.
  local venv="$RYU_VENV" marker="$RYU_VENV.unavailable" pyver
  pyver="$(python_version "$PY_SYSTEM")"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import ryu, caslab" 2>/dev/null; then
    # a venv made before the app needed them gets them now (nothing to do when it has them)
    "$venv/bin/python" -m pip install -q --no-input "${RYU_APP_DEPS[@]}" ||
      say "could not add ${RYU_APP_DEPS[*]} to $venv: the Ryu compatibility test will fail to start the app"
    return 0
  fi
  if "$PY_SYSTEM" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    printf 'python %s\nupstream Ryu 4.34 does not build on Python %s (its build needs setuptools < 58 and eventlet 0.33, which support Python 3.11 at most)\n' \
      "$pyver" "$pyver" > "$marker"
    say "no Ryu 4.34 venv on Python $pyver (it cannot build there): its compatibility test will skip and say why"
    return 0
  fi
  if [ -f "$marker" ] && head -1 "$marker" | grep -qx "python $pyver"; then
    say "the Ryu 4.34 venv failed to build before on Python $pyver ($marker); remove that file to try again"
    return 0
  fi
  say "creating $venv (upstream Ryu 4.34, for the compatibility test)"
  rm -rf "$venv"
  local pip=(timeout 900 "$venv/bin/python" -m pip install -q --no-input --timeout 60 --retries 2)
  if "$PY_SYSTEM" -m venv "$venv" &&
     "${pip[@]}" "setuptools<58" wheel &&
     "${pip[@]}" --no-build-isolation "ryu==4.34" "eventlet==0.33.3" "dnspython>=2.2,<2.3" &&
     "${pip[@]}" --no-deps -e "$HERE" &&
     "${pip[@]}" "${RYU_APP_DEPS[@]}"; then
    rm -f "$marker"
  else
    printf 'python %s\nbuilding upstream Ryu 4.34 failed on Python %s (see the pip output of ./lab.sh test)\n' \
      "$pyver" "$pyver" > "$marker"
    rm -rf "$venv"
    say "could not build the Ryu 4.34 venv on Python $pyver; its compatibility test will say so"
  fi
}

distribution_ships_chromium() {
  # Debian has real chromium / chromium-driver packages; Ubuntu's install the snap.
  # (Read into a variable: grep -q closing the pipe early fails the pipeline under pipefail.)
  local info
  info="$(apt-cache show chromium 2>/dev/null || true)"
  grep -q '^Package: chromium$' <<<"$info" && ! grep -qi 'snap' <<<"$info"
}

install_test_browser() {
  # The report test opens report.html in a headless Chromium (tests/browser.py).
  if ! apt-cache show chromium >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
  fi
  if distribution_ships_chromium; then
    install_debs chromium chromium-driver
    return 0
  fi
  . /etc/os-release 2>/dev/null || true
  say "${PRETTY_NAME:-this distribution} ships no Chromium package (only a snap): installing Playwright's Chromium"
  "$VENV/bin/python" -c "import playwright" 2>/dev/null || "$VENV/bin/python" -m pip install -q -e "$HERE[test,browser]"
  if ! timeout 900 "$VENV/bin/python" -m playwright install --with-deps chromium >/dev/null; then
    say "Playwright's Chromium could not be installed: the headless report test will skip and say why"
  fi
}

vagrant_candidate() {
  apt-cache policy vagrant 2>/dev/null | awk '/Candidate:/ {print $2}'
}

install_test_vagrant() {
  # tests/test_vagrant.py runs `vagrant validate` on the Vagrantfile (no VM boots). Debian 12's
  # vagrant installs cleanly; where the archive offers none, that test skips and says why.
  command -v vagrant >/dev/null && return 0
  local candidate
  candidate="$(vagrant_candidate)"
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    apt-get update -q >/dev/null 2>&1 || true
    candidate="$(vagrant_candidate)"
  fi
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    say "this distribution's archive has no vagrant package: the Vagrantfile test will skip and say why"
    return 0
  fi
  install_debs vagrant || say "vagrant $candidate did not install: the Vagrantfile test will skip and say why"
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
    install_test_browser
    install_test_vagrant
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
  paths)
    printf 'venv=%s\nryu_venv=%s\nscratch=%s\nresults=%s\n' "$VENV" "$RYU_VENV" \
      "${CASLAB_SCRATCH:-(system temporary folder)}" "${CASLAB_RESULTS:-$HERE/results}"
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
    say "unknown command '$cmd': use run, test, setup, doctor, paths or caslab"
    exit 2
    ;;
esac
