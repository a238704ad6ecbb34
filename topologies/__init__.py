"""Mininet topologies for the lab. A topology only builds a graph (no root needed)."""
