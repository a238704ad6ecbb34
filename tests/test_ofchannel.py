"""The lab's OpenFlow channel (caslab/network/ofchannel.py, issue 18 item 1), for real: a local
user who is not root cannot take the port, speak OpenFlow to the controller, register a
datapath, change a member's state, or read the token and keys, while a lab runs and its
failover keeps working; a second connection with the switch's own certificate is refused
by the NLB app. Open vSwitch's one SSL configuration is put back as it was, and one that
something else uses is never replaced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from caslab.network import ofchannel, tls
from caslab.network.machine import LabLock
from caslab.network.ofchannel import ChannelError, listening_socket, write_private
from caslab.base.waits import wait_until
from labcommon.catalogue import LB_MEMBER, NLB_SWITCH, NLB_SWITCH_GONE, NLB_SWITCH_REFUSED
from tests.conftest import ROOT
from tests.test_network import echo_from, nlb_cli, start_echo, start_network

pytestmark = pytest.mark.require_root

ATTEMPT = (ROOT / "tests" / "takeover_attempt.py").read_text()
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def attempt(as_user: list[str], *args: str) -> dict:
    """tests/takeover_attempt.py run as ``as_user`` (isolated Python: no site, no cwd)."""
    res = subprocess.run([*as_user, sys.executable, "-I", "-c", ATTEMPT, *args], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def nlb_events(tmp_path: Path, name: str) -> list[dict]:
    lines = (tmp_path / "nlb.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["ev"] == name]


def attacker_certificate() -> tuple[Path, Path, Path]:
    """A client certificate of the attacker's own CA, in a folder the attacker can read."""
    folder = Path(tempfile.mkdtemp(prefix="caslab-attacker-"))
    folder.chmod(0o755)
    ca_key, ca_cert = tls.make_ca("not the lab's CA")
    key, cert = tls.issue(ca_key, ca_cert, "caslab switch", ExtendedKeyUsageOID.CLIENT_AUTH)
    (folder / "cert.pem").write_bytes(tls.pem_cert(cert))
    (folder / "key.pem").write_bytes(ofchannel._pem_key(key))
    for name in ("cert.pem", "key.pem"):
        (folder / name).chmod(0o644)
    return folder, folder / "cert.pem", folder / "key.pem"


def test_a_local_user_cannot_take_over_the_controller_and_failover_still_works(tmp_path, no_residue):
    api = listening_socket()
    api_port, token = api.getsockname()[1], tmp_path / "nlb-token"
    write_private(token, b"t0ken")
    attacker, cert, key = attacker_certificate()
    lab, plan = start_network(tmp_path, "controllers.sdn_nlb", api=api, config={
        "fast_fail": True, "dataplane": "switch",
        "api": {"host": "127.0.0.1", "port": api_port, "fd": api.fileno(), "token_file": str(token)}})
    try:
        for cas in plan.by_role("cas"):
            start_echo(lab, cas.name)
        vip = plan.sites[0].vip
        wait_until(lambda: "hello" in echo_from(lab, "cl1", vip), 15, "TCP through the VIP", 0.2)
        cas1_port = lab.switch_port_name("cas1")
        files = lab.channel.files
        seen = attempt(NOBODY, "--of-port", str(lab.controller_port), "--api-port", str(api_port), "--dpid", "1",
                       "--port-name", cas1_port, "--cert", str(cert), "--key", str(key),
                       "--read", str(token), str(files.controller_key), str(files.switch_key))
        print("as nobody:", json.dumps(seen, indent=1))

        # neither port can be taken, no attempt got as far as a FEATURES_REQUEST, no secret read
        for name in ("squat_of", "squat_api"):
            assert not seen[name]["ok"] and "Address already in use" in seen[name]["error"], seen[name]
        for name in ("plain", "tls_no_cert", "tls_own_ca"):
            assert "claimed_dpid" not in seen[name] and 5 not in seen[name].get("received", []), (name, seen[name])
        for path in (token, files.controller_key, files.switch_key):
            assert not seen[f"read {path}"]["ok"] and "PermissionError" in seen[f"read {path}"]["error"]

        # root, with the switch's own certificate, gets through TLS but not in as a second dpid 1
        dup = attempt([], "--of-port", str(lab.controller_port), "--api-port", str(api_port), "--dpid", "1",
                      "--port-name", cas1_port, "--cert", str(files.switch_cert), "--key", str(files.switch_key))
        assert dup["tls_own_ca"]["claimed_dpid"] == 1, dup
        wait_until(lambda: nlb_events(tmp_path, NLB_SWITCH_REFUSED), 5, "the NLB to refuse the duplicate")

        # the NLB still has the real switch only, every member in service
        assert [e["dpid"] for e in nlb_events(tmp_path, NLB_SWITCH)] == [1]
        assert nlb_events(tmp_path, NLB_SWITCH_GONE) == []
        shown = nlb_cli(api_port, token, "show")
        assert all(m["in_service"] for m in shown["vips"][0]["members"]), shown
        assert not [e for e in nlb_events(tmp_path, LB_MEMBER) if e["member"] == "cas1"]

        # and fails over: cas1's cable pulled, cas2 serves every new connection
        lab.set_link("cas1", False)
        wait_until(lambda: any(e["member"] == "cas1" and e["reason"] == "port_down"
                               for e in nlb_events(tmp_path, LB_MEMBER)), 5, "the NLB to see cas1 go")
        assert {echo_from(lab, "cl1", vip).split(":")[0] for _ in range(6)} == {"cas2"}
    finally:
        lab.stop()
        api.close()
        shutil.rmtree(attacker, ignore_errors=True)


# ---- Open vSwitch's one SSL configuration ------------------------------------------------------------


def test_the_ssl_configuration_found_is_restored_exactly(tmp_path):
    files = ofchannel.make_channel_tls(tmp_path / "tls")
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.joinpath("tls").iterdir()} == {"0o600"}
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
    foreign = {"private_key": "/etc/x/key with space.pem", "certificate": "/etc/x/cert.pem", "ca_cert": "/etc/x/ca.pem",
               "bootstrap_ca_cert": True, "external_ids": {"owner": "someone \"else\""}}
    with LabLock(wait_s=300):
        before = ofchannel.current_ssl()
        try:
            for found in (None, foreign):
                if found is None:
                    ofchannel._vsctl("del-ssl")
                else:
                    ofchannel._set_ssl(found)
                ofchannel.install_ssl(files, owner="test-owner")
                ours = ofchannel.current_ssl()
                assert ours["private_key"] == str(files.switch_key) and ours["ca_cert"] == str(files.ca)
                assert ofchannel.restore_ssl(owner="another-run") is False  # not its row
                assert ofchannel.restore_ssl(owner="test-owner") is True
                assert ofchannel.current_ssl() == found
        finally:
            if before is None:
                ofchannel._vsctl("del-ssl")
            else:
                ofchannel._set_ssl(before)


def test_an_ssl_configuration_in_use_is_never_replaced(tmp_path):
    files = ofchannel.make_channel_tls(tmp_path / "tls")
    foreign = {"private_key": "/etc/x/key.pem", "certificate": "/etc/x/cert.pem", "ca_cert": "/etc/x/ca.pem",
               "bootstrap_ca_cert": False, "external_ids": {}}
    with LabLock(wait_s=300):
        before = ofchannel.current_ssl()
        try:
            ofchannel._set_ssl(foreign)
            # a bridge of someone else's whose controller speaks SSL (an address nothing listens on)
            ofchannel._vsctl("add-br", "clabsslusr", "--", "set", "bridge", "clabsslusr", "datapath_type=netdev",
                             "--", "set-controller", "clabsslusr", "ssl:127.0.0.1:9")
            with pytest.raises(ChannelError, match=r"in use by controller ssl:127\.0\.0\.1:9"):
                ofchannel.install_ssl(files, owner="test-owner")
            assert ofchannel.current_ssl() == foreign
        finally:
            ofchannel._vsctl("--if-exists", "del-br", "clabsslusr")
            if before is None:
                ofchannel._vsctl("del-ssl")
            else:
                ofchannel._set_ssl(before)
