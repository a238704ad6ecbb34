"""The ``caslab`` commands that sit on top of the run: argument parsing and printing
(``cli``), the benchmarks, the comparison table, the soak, and the cluster (Dask) side.
"""
