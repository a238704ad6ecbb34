"""One import surface for os-ken (the maintained Ryu fork) and upstream Ryu 4.34.

The apps import from here, so the same app file loads under either framework: os-ken is
preferred; ``CASLAB_FRAMEWORK=ryu`` forces upstream Ryu where both are installed.
"""

from __future__ import annotations

import os
import threading

_WANT = os.environ.get("CASLAB_FRAMEWORK", "os_ken")

if _WANT == "ryu":
    from ryu.base import app_manager  # type: ignore[no-redef]
    from ryu.controller import ofp_event  # type: ignore[no-redef]
    from ryu.controller.handler import (  # type: ignore[no-redef]
        CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls,
    )
    from ryu.lib import hub  # type: ignore[no-redef]
    from ryu.lib.packet import arp, ethernet, icmp, ipv4, packet, tcp  # type: ignore[no-redef]
    from ryu.ofproto import ofproto_v1_3, ofproto_v1_5  # type: ignore[no-redef]

    BaseApp = app_manager.RyuApp
    FRAMEWORK = "ryu"
else:
    from os_ken.base import app_manager
    from os_ken.controller import ofp_event
    from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
    from os_ken.lib import hub
    from os_ken.lib.packet import arp, ethernet, icmp, ipv4, packet, tcp
    from os_ken.ofproto import ofproto_v1_3, ofproto_v1_5

    BaseApp = app_manager.OSKenApp
    FRAMEWORK = "os_ken"



def timed_event():
    """An event whose ``wait(timeout)`` returns when the timeout passes. os-ken's native hub
    (its default) ignores the timeout: its ``Timeout`` never interrupts the wait of its
    ``Event``, which blocks until set (os-ken 4.2.2). There a native ``threading.Event``
    (the hub's threads are native ones); under eventlet (Ryu's hub), the hub's own."""
    if getattr(hub, "HUB_TYPE", "eventlet") == "native":
        return threading.Event()
    return hub.Event()


__all__ = [
    "BaseApp", "CONFIG_DISPATCHER", "DEAD_DISPATCHER", "FRAMEWORK", "MAIN_DISPATCHER", "app_manager", "arp", "ethernet",
    "hub", "icmp", "ipv4", "ofp_event", "ofproto_v1_3", "ofproto_v1_5", "packet", "set_ev_cls", "tcp",
    "timed_event",
]
