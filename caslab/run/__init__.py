"""Running experiments: one scenario run (build, start, measure, inject faults, tear
down), an experiment's repetitions into one result folder, a repetition in a process of
its own, the live lab and its control channel, and the lab's own CPU cost.
"""
