"""The live network and what runs in it: Mininet hosts on Open vSwitch, the controller
channel, the lab's certificate authority, the run's typed context, the Exchange roles and
clients started from the program catalogue, what an admin does to the running lab, and
cleaning up after a dead run.
"""
