"""LabNetwork's choices made before anything is built (no root): which port type the
hosts' switch ports get."""

from __future__ import annotations

import pytest

from caslab.base import system
from caslab.network.netlab import AFXDP_PORT, LabNetwork
from topologies.plan import LabPlan

PLAN = LabPlan.build([{"name": "HQ", "cas": 2, "mailboxes": 1, "clients": 1}])


@pytest.mark.parametrize("datapath,types,expected,notice", [
    ("user", {"system", "afxdp", AFXDP_PORT}, AFXDP_PORT, None),
    ("user", {"system", "internal"}, "system", "this Open vSwitch has no afxdp-nonpmd ports"),
    ("kernel", {"system", AFXDP_PORT}, "system", "userspace datapath"),
])
def test_afxdp_ports_where_possible_else_system_ports_and_a_notice(monkeypatch, tmp_path, datapath, types, expected,
                                                                   notice):
    monkeypatch.setattr(system, "ovs_interface_types", lambda: types)
    lab = LabNetwork(PLAN, tmp_path, datapath=datapath, switch_ports="afxdp")
    assert lab._port_type() == expected
    assert [n for n in lab.port_notices if notice in n] if notice else not lab.port_notices, lab.port_notices


def test_system_ports_are_asked_of_nobody(monkeypatch, tmp_path):
    monkeypatch.setattr(system, "ovs_interface_types", lambda: pytest.fail("system ports need no question"))
    lab = LabNetwork(PLAN, tmp_path, datapath="user")
    assert lab._port_type() == "system" and not lab.port_notices
