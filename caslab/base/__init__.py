"""The floor: what any part of the engine may use and that knows nothing of the lab:
waiting to a deadline, safe result-folder writes, signals held back while a process
starts, the kernel's CPU counters, and facts about this machine.
"""
