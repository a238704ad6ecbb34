"""An experiment spec loaded and checked as a whole (every mode's and fault's own keys
included, through their registries), its scenarios checked against their addressing
plan, and what a spec would build shown without building it. Loading a spec builds and
imports no network.
"""
