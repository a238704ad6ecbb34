"""The service ports of the lab's emulated Exchange roles (one place; capture, roles,
load balancers and clients all read them here)."""

CAS_PORT = 6001           # RPC Client Access (the lab's MAPI stand-in), what the arrays balance
MAILBOX_PORT = 7001       # mailbox store and DAG replication
AUTODISCOVER_PORT = 7002  # per-site autodiscover
ADMIN_PORT = 7010         # every role's admin requests, on its host's loopback only
CAS_ADMIN_PORT = 7011     # the CAS's (hub transport's dumpster): a multi-role host runs a mailbox beside it
HTTPS_PORT = 443          # the CAS's HTTPS services (OWA, ActiveSync, Outlook Anywhere, autodiscover)
