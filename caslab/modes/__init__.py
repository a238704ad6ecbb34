"""HA modes: how clients find a CAS, and what stands between them. One class per mode,
one file per class, collected in ``MODES``.

A mode class declares:

* ``name``, ``description``    its spec name and one line for tables and docs;
* ``section``, ``settings``    the spec section it owns and that section's keys (``Field``s);
* ``capabilities``             what faults may ask of it: ``load_balancer`` (drain, rejoin),
                               ``controller`` (an SDN controller that can crash);
* ``controller_app``           the controller app run on the switches (plain L2 by default);
* ``multi_switch``             whether it works with CAS behind hypervisor switches;
* ``multi_role_refusal``       why it cannot run on multi-role servers (None: it can);
* ``admin_api``                whether its load balancer has the lab's NLB admin API
                               (``caslab nlb``, the live lab's ``nlb`` command);
* ``colour``, ``line``         how its curves look in every plot (Okabe & Ito's palette);

and implements ``controller_config``, ``array_addresses``, ``start``, ``target`` and,
with a load balancer, ``drain`` / ``rejoin``; ``prepare`` (before the roles start) and
``measure_start`` / ``measure_end`` (around the measurement window) when it needs them.
``caslab.spec.experiment`` reads the declarations; adding a mode is one new file in this folder.

``MODES`` holds the classes; each run gets its own instance (``mode_for``), kept in its
``RunContext``, so what a mode learns during a run (its agents, its counters) is the
instance's and dies with the run.
"""

from __future__ import annotations

import importlib
import pkgutil

from caslab.modes.base import MODES, Mode, VipMode, mode_for

__all__ = ["MODES", "Mode", "VipMode", "mode_for"]  # the registry's face


def _load_all() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}")


_load_all()
