"""caslab: an emulation lab for Exchange 2010 CAS array failover.

Data flows one way: spec -> network -> processes -> events -> metrics -> report.
"""

__version__ = "0.1.0"
