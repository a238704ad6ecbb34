"""Emulated Exchange 2010 roles: CAS (RPC Client Access), mailbox, autodiscover.

Each role is a small asyncio service run inside a Mininet host as its own process.
"""
