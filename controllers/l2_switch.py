"""A plain L2 switch app: every switch forwards with OVS's NORMAL (MAC-learning) pipeline.

Used by the HA modes that do not need the SDN NLB (direct, DNS round robin, Windows NLB
emulation, HAProxy), so every mode runs on the same OpenFlow-controlled switches.
"""

from __future__ import annotations

from controllers.compat import CONFIG_DISPATCHER, BaseApp, ofp_event, ofproto_v1_3, set_ev_cls


class L2Switch(BaseApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        dp = ev.msg.datapath
        parser = dp.ofproto_parser
        actions = [parser.OFPActionOutput(dp.ofproto.OFPP_NORMAL)]
        inst = [parser.OFPInstructionActions(dp.ofproto.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(parser.OFPFlowMod(datapath=dp, priority=0, match=parser.OFPMatch(), instructions=inst))
