"""The SDN NLB app's OpenFlow channels (issue 18 item 1): one live connection per datapath
id, and a datapath dropped when its channel dies. A second FEATURES_REPLY naming a
connected switch's datapath id (an impostor, or a reconnect racing the old channel's
death) is closed and ignored: it never replaces the live switch, and nothing it sends
(port status, packet-ins) changes the NLB or reaches its replies. OpenFlow 1.3 and 1.5."""

from __future__ import annotations

import pytest

from labcommon.catalogue import NLB_SWITCH, NLB_SWITCH_GONE, NLB_SWITCH_REFUSED
from tests.fakes import (
    FakeDatapath, all_ports, channel_dead, events, features, member_port, packet_in, port_desc, ready,
)
from tests.nlb_lab import VIP_IP, arp_frame, flow_mods, packet_outs


def test_a_second_connection_with_a_connected_dpid_is_closed_and_changes_nothing(make_app, version):
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    impostor = FakeDatapath(1, version)

    assert features(app, impostor) == []  # nothing programmed through it
    assert impostor.closed and not dp.closed
    assert app.core.datapaths[1] is dp
    assert [e["dpid"] for e in events(app, NLB_SWITCH_REFUSED)] == [1]

    # what the impostor says is not believed: its port list, a forged link down, packet-ins
    assert port_desc(app, impostor, all_ports(impostor)) == []
    assert member_port(app, impostor, "cas1", link_down=True) == []
    assert app.core.vips[0].pool.members["cas1"].in_service
    before = dict(app.core.stats)
    assert packet_in(app, impostor, arp_frame(1, VIP_IP)) == []
    assert app.core.stats == before and app.core.limiter.tokens > 0

    # the real switch is still the one the NLB programs and answers
    assert packet_outs(packet_in(app, dp, arp_frame(1, VIP_IP)))
    member_port(app, dp, "cas2", link_down=True)
    assert not app.core.vips[0].pool.members["cas2"].in_service
    assert impostor.take() == []


def test_the_refused_connection_dying_leaves_the_live_switch(make_app, version):
    app = make_app()
    dp = ready(app, version)
    impostor = FakeDatapath(1, version)
    features(app, impostor)
    channel_dead(app, impostor)
    assert app.core.datapaths[1] is dp
    assert events(app, NLB_SWITCH_GONE) == []


def test_a_dead_channel_drops_its_datapath_and_the_switch_may_connect_again(make_app, version):
    app = make_app()
    dp = ready(app, version)
    assert channel_dead(app, dp) == []
    assert 1 not in app.core.datapaths
    assert [e["dpid"] for e in events(app, NLB_SWITCH_GONE)] == [1]
    member_port(app, dp, "cas1", link_down=True)  # a late message of the dead channel
    assert app.core.vips[0].pool.members["cas1"].in_service

    again = FakeDatapath(1, version)
    assert flow_mods(features(app, again))  # programmed afresh
    assert app.core.datapaths[1] is again and not again.closed
    assert [e["dpid"] for e in events(app, NLB_SWITCH)] == [1, 1]


def test_a_switch_reconnecting_while_its_old_channel_can_no_longer_send_replaces_it(make_app, version):
    # Old behaviour: os-ken ends a channel's sending after a send timeout or error and waits
    # for the switch to hang up; that death did not arrive, every reconnection of the switch
    # was refused, and it stayed without a controller (a controller-dataplane run never
    # served its one client).
    app = make_app()
    old = ready(app, version)
    old.send_q = None  # os-ken's send loop has ended
    again = FakeDatapath(1, version)
    assert flow_mods(features(app, again))  # programmed afresh
    assert app.core.datapaths[1] is again and not again.closed and old.closed
    assert events(app, NLB_SWITCH_REFUSED) == [] and [e["dpid"] for e in events(app, NLB_SWITCH_GONE)] == [1]
    port_desc(app, again, all_ports(again))
    assert packet_outs(packet_in(app, again, arp_frame(1, VIP_IP)))  # the new channel is the one answered
    channel_dead(app, old)  # the old channel's death, late: changes nothing
    assert app.core.datapaths[1] is again and len(events(app, NLB_SWITCH_GONE)) == 1

    # a channel that can send is still never replaced
    impostor = FakeDatapath(1, version)
    assert features(app, impostor) == [] and impostor.closed and app.core.datapaths[1] is again


class PeerSocket:
    """The part of a channel's socket the NLB asks about: whom it is connected to."""

    def __init__(self, peer):
        self.peer = peer

    def getpeername(self):
        if isinstance(self.peer, OSError):
            raise self.peer
        return self.peer


@pytest.mark.parametrize("peer", [OSError(9, "Bad file descriptor"), OSError(107, "not connected"),
                                  ("127.0.0.1", 40002)])
def test_a_switch_reconnecting_while_its_old_socket_no_longer_reaches_it_replaces_it(make_app, version, peer):
    # Seen in a suite run: the first channel's socket was reset 3 ms after it connected (its
    # descriptor closed under it, then handed to a later connection); os-ken kept it as
    # active and every reconnection of the switch was refused until the lab gave up.
    app = make_app()
    old = ready(app, version)
    old.address, old.socket = ("127.0.0.1", 40001), PeerSocket(peer)
    again = FakeDatapath(1, version)
    assert flow_mods(features(app, again))
    assert app.core.datapaths[1] is again and old.closed and events(app, NLB_SWITCH_REFUSED) == []

    # a channel whose socket still reaches its switch is never replaced
    again.address, again.socket = ("127.0.0.1", 40003), PeerSocket(("127.0.0.1", 40003))
    impostor = FakeDatapath(1, version)
    assert features(app, impostor) == [] and impostor.closed and app.core.datapaths[1] is again


def test_a_channel_that_dies_before_its_features_reply_is_ignored(make_app, version):
    app = make_app()
    dp = ready(app, version)
    early = FakeDatapath(1, version)
    early.id = None  # os-ken learns the id from FEATURES_REPLY
    channel_dead(app, early)
    assert app.core.datapaths[1] is dp and events(app, NLB_SWITCH_GONE) == []
