"""The lab's ground floor: what the engine and every in-host program share.

Nothing here imports the engine (``caslab``), the roles, the controllers or the traffic
generators; they all import from here:

* ``catalogue``  every event the lab writes, with its fields and units (docs/EVENTS.md)
* ``events``     the JSON-lines event log and the lab's one clock (CLOCK_MONOTONIC ns)
* ``protocol``   the lab's wire format (length-prefixed JSON frames) and ``peek``
* ``ports``      the service ports
* ``auth``       the lab directory's password rule
"""
