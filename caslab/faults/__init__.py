"""Fault injection: one class per fault, one file per class, collected in ``FAULTS``.

A fault class declares everything the rest of the lab needs to know about it:

* ``kind``, ``summary``          its spec name and one line of documentation;
* ``fields``                     its own spec keys (beyond ``kind``, ``target``, ``at_s``);
* ``target_roles``               roles a target may have (``()``: it takes no target);
* ``requires``                   what the HA mode must offer (``load_balancer``, ``controller``);
* ``affects``                    ``on_elements`` (sessions on what it fails) or ``disrupted``
                                 (only those it actually disrupted: the controller is under
                                 every session, but a controller fault may disrupt none);
* ``check``                      consistency checks against the scenario (SpecError);
* ``elements``                   what it fails at injection: host names, ``db:<name>``;
* ``label``                      how tables name it;
* ``inject`` / ``undo``          what it does to the live lab, and how it is reverted;
* ``example``                    spec keys of a small demonstration (the tests run it), and
  ``example_topology``           the topology keys it needs beyond the tests' small one.

``caslab.spec.experiment`` validates faults from these declarations, the runner injects them and
metrics read the ``fault`` event they log. Adding a fault is one new file in this folder.
"""

from __future__ import annotations

import importlib
import pkgutil

from caslab.faults.base import BUSIEST, FAULTS, Fault, fault_for, inject, undo

__all__ = ["BUSIEST", "FAULTS", "Fault", "fault_for", "inject", "undo"]  # the registry's face


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_all()
