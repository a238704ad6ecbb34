"""caslab: an emulation lab for Exchange 2010 CAS array failover.

Data flows one way: spec -> network -> processes -> events -> metrics -> report.
"""

from pathlib import Path

__version__ = "0.1.0"

# The checkout the lab runs from (experiments/, results/, the git state a manifest records).
SOURCE_ROOT = Path(__file__).resolve().parent.parent
